"""Chat-formatted training samples: a question and its answer, rendered with the model's own chat
template, the loss on the answer only.

A sample is a ``(2, block_size)`` pair of rows: token ids, and labels that are ``-100`` (ignored)
everywhere but on the assistant's turn. Samples are right-padded, so the causal mask alone keeps
padding from touching real tokens, and every sample is one unit of DP-SGD's per-sample clipping
whatever its length.

Example:
    >>> from edgefleet.platform.models import build_tiny_tokenizer
    >>> rows = render_chat([ChatExample("Hi?", "Hello.")], build_tiny_tokenizer(), block_size=64)
    >>> tuple(rows.shape), int((rows[0, 1] != IGNORE).sum()) > len("Hello.")
    ((1, 2, 64), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass(frozen=True)
class ChatExample:
    """One exchange to learn from: what a user asked and the answer the model should have given."""

    question: str
    answer: str


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The ids the model sees before it answers ``question``: the template up to the assistant's turn."""
    return _ids(tokenizer.apply_chat_template([_user(question)], add_generation_prompt=True, tokenize=True))


def answer_ids(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the whole exchange as the template renders it, split where the answer
    starts. The answer's ids include the template's end-of-turn, so the model learns to stop."""
    prompt = prompt_ids(tokenizer, question)
    whole = _ids(tokenizer.apply_chat_template([_user(question), {"role": "assistant", "content": answer}]))
    if whole[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently inside a whole exchange")
    return prompt, whole[len(prompt) :]


def render_chat(examples: Sequence[ChatExample], tokenizer: Any, block_size: int) -> Any:
    """Samples ``(N, 2, block_size)`` (ids, labels) for ``examples``.

    An answer too long for the block is cut (its tail is not learnt); an example whose prompt alone
    leaves fewer than 4 answer tokens, or that the template cannot split into prompt and answer
    (e.g. an answer that starts with blank lines some templates fold into the prompt), is skipped.

    Raises:
        ValueError: no example fits in ``block_size``.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for ex in examples:
        try:
            prompt, answer = answer_ids(tokenizer, ex.question, ex.answer)
        except ValueError:
            continue
        room = block_size - len(prompt)
        if room < 4:
            continue
        answer = answer[:room]
        ids = prompt + answer
        fill = block_size - len(ids)
        rows.append(
            (
                ids + [pad] * fill,
                [IGNORE] * len(prompt) + answer + [IGNORE] * fill,
            )
        )
    if not rows:
        raise ValueError(f"none of {len(examples)} examples fits in a block of {block_size} tokens")
    return torch.tensor(rows, dtype=torch.long)


def ids_and_labels(batch: Any) -> tuple[Any, Any]:
    """(ids, labels) of a batch of samples: chat samples carry their labels; plain text blocks
    ``(N, T)`` learn every token."""
    if batch.dim() == 3:
        return batch[:, 0], batch[:, 1]
    return batch, batch


def sample_losses(model: Any, batch: Any) -> Any:
    """Each sample's mean next-token loss over its labelled tokens (a tensor of N)."""
    import torch.nn.functional as F  # noqa: N812

    ids, labels = ids_and_labels(batch)
    logits = model(input_ids=ids).logits[:, :-1]
    target = labels[:, 1:]
    per_token = F.cross_entropy(logits.transpose(1, 2).float(), target, ignore_index=IGNORE, reduction="none")
    counted = (target != IGNORE).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / counted


def _user(question: str) -> dict[str, str]:
    return {"role": "user", "content": question}


def _ids(rendered: Any) -> list[int]:
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
