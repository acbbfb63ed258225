"""Scores that say whether a model got better for users, not only lower in perplexity.

- **Task score**: the mean log-likelihood per token of the reference answers to held-out questions
  of the sites' domains (``eval/sites.py``), under the chat template. Higher is better; it rises
  when the model answers the sites' questions more like their users expect.
- **Answer match**: the share of those questions whose greedy answer, from the model as the edge
  nodes serve it, a site's user would rate good (token F1 against the reference ≥ 0.5, the
  simulated users' own rule: ``eval/users.py``). Both, per site and overall.
- **Regression guard**: general chat the base model handles must survive an update.
  - *Divergence*: the mean KL(base ‖ candidate) per token over the base model's own greedy answers
    to general prompts (teacher-forced, so one forward pass each). 0 for the base itself.
  - *Facts*: of a few factual questions, those the base answers right (its answer holds the
    expected word) must still be answered right by the candidate, greedily, each question asked
  alone as a node answers it.

The base's answers are computed once per :class:`QualityJudge`; each candidate then costs a few
forward passes and short batched greedy generations (one per site, one for the facts) on the
served (e.g. int8) copy. No Ray, no MLflow: the coordinator calls it, tests
call it directly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from edgefleet.platform.chat import ChatExample, render_chat

GENERAL_PROMPTS = (
    "Write one sentence about the sea.",
    "How do I boil an egg?",
    "Give me a tip for a job interview.",
    "What is a good name for a cat?",
    "Explain what a rainbow is.",
    "Say hello to my friend Anna.",
)
# (question, the word a right answer holds: a regex, case-insensitive)
FACTS = (
    ("What is the capital of France?", r"\bParis\b"),
    ("What is the capital of Japan?", r"\bTokyo\b"),
    ("How many days are there in a week?", r"\b(7|seven)\b"),
    ("What is the opposite of hot?", r"\bcold\b"),
)
GUARD_ANSWER_TOKENS = 32
FACT_ANSWER_TOKENS = 24
TASK_ANSWER_TOKENS = 48  # what the simulated users ask for (eval/users.py)


@dataclass(frozen=True)
class SiteScore:
    """One site's held-out questions, scored."""

    site: str
    questions: int
    task_score: float  # mean log-likelihood per reference-answer token
    answer_match: float  # share of greedy answers a user would rate good

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SiteScore:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Quality:
    """One model's scores (see the module docstring)."""

    task_score: float  # mean log-likelihood per reference-answer token: higher is better
    divergence: float  # mean KL(base ‖ model) per token on the base's answers: 0 is the base
    facts_kept: int  # of the facts the base answers right
    facts_total: int
    facts_lost: tuple[str, ...] = field(default=())  # the questions it no longer answers right
    answer_match: float = math.nan  # share of held-out questions answered as users want, greedily
    per_site: tuple[SiteScore, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Quality:
        """Read back from a run's JSON state (lists where tuples were; fields this version does not
        know are left out, fields an older state lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(
            **{
                **{k: v for k, v in data.items() if k in known},
                "facts_lost": tuple(data.get("facts_lost", ())),
                "per_site": tuple(SiteScore.from_json(s) for s in data.get("per_site", ())),
            }
        )


@dataclass
class QualityJudge:
    """Scores adapters over one base model. ``held_out``: each site's held-out questions with their
    reference answers (:func:`edgefleet.eval.sites.held_out_by_site`); ``block_size``: the longest
    exchange scored."""

    base: Any
    tokenizer: Any
    held_out: Mapping[str, Sequence[ChatExample]]
    block_size: int = 128
    # The model as the edge nodes serve it (adapter merged, int8): facts are checked on that form,
    # since quantisation alone can flip an answer whose first token is a near tie.
    served: Callable[[Any], Any] | None = None
    _reference: Any = None  # (samples, base log-probs) of the guard prompts, computed once
    _facts: list[tuple[str, str]] | None = None  # the facts the base answers right

    def __post_init__(self) -> None:
        self.held_out = {site: list(qs) for site, qs in self.held_out.items() if qs}
        if not self.held_out:
            raise ValueError("a quality judge needs held-out questions to score")

    def score(self, model: Any) -> Quality:
        """The scores of ``model`` (the base with an adapter applied, or the base itself)."""
        import torch

        from edgefleet.eval.users import GOOD_F1, token_f1

        model.eval()
        with torch.no_grad():
            as_served = self.served(model) if self.served else model
            sites, weighted, rendered = [], 0.0, 0
            for site, questions in self.held_out.items():
                try:
                    samples = render_chat(questions, self.tokenizer, self.block_size)
                except ValueError:  # none of this site's questions fits a block: it cannot be scored
                    sites.append(SiteScore(site, len(questions), math.nan, math.nan))
                    continue
                task = -_mean_losses(model, samples)
                answers = self._answers(as_served, [q.question for q in questions], TASK_ANSWER_TOKENS)
                right = sum(token_f1(a, q.answer) >= GOOD_F1 for a, q in zip(answers, questions, strict=True))
                sites.append(SiteScore(site, len(questions), task, right / len(questions)))
                weighted, rendered = weighted + task * len(samples), rendered + len(samples)
            divergence = self._divergence(model)
            facts = self._base_facts()
            answers = self._lone_answers(as_served, [q for q, _ in facts])
            lost = tuple(q for (q, pattern), a in zip(facts, answers, strict=True) if not re.search(pattern, a, re.I))
        if not rendered:
            raise ValueError(f"none of the held-out questions fits in a block of {self.block_size} tokens")
        scored = [s for s in sites if math.isfinite(s.task_score)]
        asked = sum(s.questions for s in scored)
        return Quality(
            task_score=weighted / rendered,
            divergence=divergence,
            facts_kept=len(facts) - len(lost),
            facts_total=len(facts),
            facts_lost=lost,
            answer_match=sum(s.answer_match * s.questions for s in scored) / asked,
            per_site=tuple(sites),
        )

    def _base_facts(self) -> list[tuple[str, str]]:
        if self._facts is None:
            answers = self._lone_answers(self.served(self.base) if self.served else self.base, [q for q, _ in FACTS])
            self._facts = [(q, p) for (q, p), a in zip(FACTS, answers, strict=True) if re.search(p, a, re.I)]
        return self._facts

    def _divergence(self, model: Any) -> float:
        import torch.nn.functional as F  # noqa: N812

        if self._reference is None:
            answers = self._answers(self.base, list(GENERAL_PROMPTS), GUARD_ANSWER_TOKENS)
            samples = render_chat(
                [ChatExample(q, a) for q, a in zip(GENERAL_PROMPTS, answers, strict=True) if a.strip()],
                self.tokenizer,
                self.block_size,
            )
            self._reference = samples, F.log_softmax(self.base(input_ids=samples[:, 0]).logits.float(), dim=-1)
        samples, base_logp = self._reference
        logp = F.log_softmax(model(input_ids=samples[:, 0]).logits.float(), dim=-1)
        # the positions that predict an answer token: where the next token's label is set
        mask = (samples[:, 1, 1:] != -100).float()
        kl = (base_logp[:, :-1].exp() * (base_logp[:, :-1] - logp[:, :-1])).sum(-1)
        return float((kl * mask).sum() / mask.sum().clamp(min=1))

    def _lone_answers(self, model: Any, questions: list[str]) -> list[str]:
        """Greedy answers, each asked alone, as a node answers a lone request (the demo's question).
        Not batched: int8 dynamic quantisation scales activations over the whole batch, padding
        included, so a batched answer can differ from the served one (measured: a version kept
        "Paris" batched and lost it alone)."""
        return [self._answers(model, [q])[0] for q in questions]

    def _answers(self, model: Any, questions: list[str], max_new_tokens: int = FACT_ANSWER_TOKENS) -> list[str]:
        """Greedy answers, batched (left-padded)."""
        import torch

        from edgefleet.platform.chat import prompt_ids

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prompts = [prompt_ids(tok, q) for q in questions]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return [tok.decode(row[width:], skip_special_tokens=True) for row in out]


def _mean_losses(model: Any, samples: Any, batch: int = 16) -> float:
    from edgefleet.platform.chat import sample_losses

    total = 0.0
    for chunk in samples.split(batch):
        total += float(sample_losses(model, chunk).sum())
    return total / len(samples)


def served_form(quantization: str) -> Callable[[Any], Any]:
    """A scored model (the base, or a throwaway peft model over a copy of it) as an edge node serves
    it: the adapter merged into the weights, then quantised as ``quantization`` says."""

    def convert(model: Any) -> Any:
        import copy

        import torch

        from edgefleet.platform.models import quantize_int8

        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        if quantization == "int8":
            return quantize_int8(merged)  # a quantised copy: the base stays as it was
        if quantization == "bf16":
            return copy.deepcopy(merged).to(torch.bfloat16)
        return merged

    return convert
