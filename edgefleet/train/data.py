"""Each edge node's private training text, and its tokenisation into causal-LM blocks.

The demo corpus is the Python documentation shipped in the standard library
(``pydoc_data.topics``: 79 topics, ~465 k characters). It is split *by topic*: every node gets
its own topics, so the clients are non-IID, and a held-out set of topics is kept for evaluation.
Each shard is written to its node's data directory (``fleet.edge_nodes[].data_dir``, default
``<cache>/data/<node id>``) and read back from there only; any folder of ``.txt`` / ``.jsonl``
files (a ``"text"`` field per line) can stand in for it.

Example:
    >>> split = split_topics(["edge-1", "edge-2"], seed=0)
    >>> set(split.shards["edge-1"]).isdisjoint(split.shards["edge-2"]) and len(split.held_out) > 0
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config import EdgefleetConfig, EdgeNodeConfig

HELD_OUT_FRACTION = 0.15
SHARD_FILE = "shard.jsonl"


def demo_topics() -> dict[str, str]:
    """The standard library's documentation topics: name → text."""
    from pydoc_data.topics import topics

    return dict(topics)


@dataclass(frozen=True)
class TopicSplit:
    shards: dict[str, list[str]]  # node id → its topic names
    held_out: list[str]


def split_topics(
    node_ids: Sequence[str],
    *,
    topics: Sequence[str] | None = None,
    seed: int = 0,
    held_out_fraction: float = HELD_OUT_FRACTION,
) -> TopicSplit:
    """Disjoint topic sets per node (dealt round-robin after a seeded shuffle), plus held-out topics."""
    if not node_ids:
        raise ValueError("need at least one node id")
    names = sorted(topics if topics is not None else demo_topics())
    random.Random(seed).shuffle(names)
    n_held = max(1, round(held_out_fraction * len(names)))
    held, rest = names[:n_held], names[n_held:]
    if len(rest) < len(node_ids):
        raise ValueError(f"{len(rest)} topics cannot give each of {len(node_ids)} nodes its own")
    shards = {node: rest[i :: len(node_ids)] for i, node in enumerate(node_ids)}
    return TopicSplit(shards, held)


def node_data_dir(cfg: EdgefleetConfig, node: EdgeNodeConfig) -> Path:
    from edgefleet.platform.edge_node import data_dir_of

    return data_dir_of(node, cfg.cache_dir)


def held_out_dir(cfg: EdgefleetConfig) -> Path:
    return cfg.cache_dir / "data" / "held-out"


def write_demo_shards(cfg: EdgefleetConfig, *, seed: int = 0) -> TopicSplit:
    """Write each node's topics to its own data directory, and the held-out topics apart.

    A node with a configured ``data_dir`` that already holds text keeps its own data.
    """
    texts = demo_topics()
    split = split_topics([n.id for n in cfg.fleet.edge_nodes], topics=list(texts), seed=seed)
    for node in cfg.fleet.edge_nodes:
        folder = node_data_dir(cfg, node)
        if node.data_dir is not None and _text_files(folder):
            continue
        _write_jsonl(folder / SHARD_FILE, [{"topic": t, "text": texts[t]} for t in split.shards[node.id]])
    _write_jsonl(held_out_dir(cfg) / SHARD_FILE, [{"topic": t, "text": texts[t]} for t in split.held_out])
    return split


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


CHAT_SUFFIX = ".chat.jsonl"  # {"question": ..., "answer": ...} per line: chat examples, not plain text


def _text_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in (".txt", ".jsonl") and not p.name.endswith(CHAT_SUFFIX) and p.is_file()
    )


def write_chat_examples(path: Path, examples: Sequence[Any]) -> None:
    """Chat examples (``train/chat.ChatExample``) as a ``.chat.jsonl`` file a node trains on."""
    if not path.name.endswith(CHAT_SUFFIX):
        raise ValueError(f"{path}: a chat examples file ends with {CHAT_SUFFIX}")
    _write_jsonl(path, [{"question": e.question, "answer": e.answer} for e in examples])


def read_chat_examples(folder: Path, *, feedback: bool = True) -> list[Any]:
    """The chat examples a node holds: its ``.chat.jsonl`` files (or the one file ``folder`` names),
    then (``feedback``) its users' feedback (answers rated good, and corrections).

    Raises ValueError naming the file and line of a bad row."""
    from edgefleet.platform.chat import ChatExample
    from edgefleet.platform.feedback import FEEDBACK_FILE, FeedbackStore

    out = []
    paths = [folder] if folder.is_file() else sorted(folder.rglob(f"*{CHAT_SUFFIX}")) if folder.is_dir() else []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("question", "answer")):
                raise ValueError(f'{path}:{n}: expected an object with string "question" and "answer" fields')
            out.append(ChatExample(row["question"], row["answer"]))
    if feedback and (folder / FEEDBACK_FILE).is_file():
        out.extend(ChatExample(q, a) for q, a in FeedbackStore(folder / FEEDBACK_FILE).examples())
    return out


def training_samples(folder: Path, tokenizer: Any, block_size: int) -> Any:
    """Everything a node trains on, as one tensor: its text documents cut into blocks, and its chat
    examples (documents as questions and answers, its users' feedback) rendered with the chat template,
    the loss on the answers only. Text alone: ``(N, block_size)``; with chat: ``(N, 2, block_size)``.

    Raises:
        FileNotFoundError: the folder holds neither text nor chat examples.
    """
    import torch

    from edgefleet.platform.chat import render_chat

    parts = []
    if _text_files(folder):
        parts.append(chunk_for_causal_lm(read_texts(folder), tokenizer, block_size))
    chats = read_chat_examples(folder)
    if chats:
        try:
            parts.append(render_chat(chats, tokenizer, block_size))
        except ValueError:  # none fits this block size: the text (if any) is still there to learn
            pass
    if not parts:
        raise FileNotFoundError(f"{folder}: nothing to train on (no text, chat examples or usable feedback)")
    if len(parts) == 1:
        return parts[0]
    text, chat = parts
    return torch.cat([torch.stack([text, text], dim=1), chat])  # text blocks learn every token


def read_texts(folder: Path) -> list[str]:
    """Every document in ``folder``: a ``.txt`` file is one; a ``.jsonl`` line's ``"text"`` is one.

    Raises:
        FileNotFoundError: no ``.txt`` or ``.jsonl`` file in ``folder``.
        ValueError: a JSONL line is not an object with a string ``"text"`` (file and line named).
    """
    files = _text_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no .txt or .jsonl files to train on")
    out = []
    for path in files:
        if path.suffix == ".txt":
            out.append(path.read_text(encoding="utf-8"))
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f'{path}:{n}: expected an object with a string "text" field')
            out.append(row["text"])
    return out


def chunk_for_causal_lm(texts: Sequence[str], tokenizer: Any, block_size: int) -> Any:
    """Token blocks of exactly ``block_size`` (a LongTensor ``(N, block_size)``) for next-token training.

    Documents are joined with the end-of-sequence token and cut into equal blocks, so no block is
    padded: every sample's loss is a mean over the same number of tokens, which per-sample gradient
    clipping relies on. The tail shorter than a block is dropped.
    """
    import torch

    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"{len(ids)} tokens make no block of {block_size}")
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)
