"""The promotion gate, pure: whether a registered candidate becomes ``champion`` (no MLflow here;
:mod:`registry` calls it with the candidate's and the champion's scores)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgefleet.eval.scores import SiteScore


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class UserScores:
    """A version's scores for users (see ``eval/scores.py``), as the gate weighs them."""

    task_score: float
    divergence: float
    facts_lost: tuple[str, ...] = ()
    answer_match: float | None = None  # reported, not gated: greedy answers are noisier than the task score
    per_site: tuple[SiteScore, ...] = ()


def gate(
    candidate_loss: float,
    champion_loss: float | None,
    *,
    margin: float,
    within_budget: bool,
    scores: UserScores | None = None,
    to_beat: float | None = None,
    task_margin: float = 0.0,
    max_divergence: float = math.inf,
) -> GateDecision:
    """Whether a candidate becomes champion.

    With ``scores``: its task score must beat ``to_beat`` (the champion's, else the base model's) by
    ``task_margin``, and the regression guard must hold. Without: held-out loss, better by ``margin``.
    Nobody may be over budget either way.
    """
    if not within_budget:
        return GateDecision(False, "a client is over its privacy budget")
    if scores is not None:
        return _gate_on_users(scores, to_beat, task_margin, max_divergence)
    if not math.isfinite(candidate_loss):
        return GateDecision(False, f"held-out loss is {candidate_loss}")
    if champion_loss is None:
        return GateDecision(True, f"first version: held-out loss {candidate_loss:.4f}")
    if candidate_loss <= champion_loss - margin:
        return GateDecision(
            True, f"held-out loss {candidate_loss:.4f} beats champion {champion_loss:.4f} by ≥ {margin:g}"
        )
    return GateDecision(
        False, f"held-out loss {candidate_loss:.4f} does not beat champion {champion_loss:.4f} by {margin:g}"
    )


def _gate_on_users(s: UserScores, to_beat: float | None, task_margin: float, max_divergence: float) -> GateDecision:
    if not math.isfinite(s.task_score):
        return GateDecision(False, f"task score is {s.task_score}")
    if s.facts_lost:
        return GateDecision(False, f"regression: no longer answers {'; '.join(s.facts_lost)!r}")
    if not s.divergence <= max_divergence:
        return GateDecision(
            False, f"regression: divergence from the base on general chat {s.divergence:.4f} > {max_divergence:g}"
        )
    if to_beat is None:
        return GateDecision(True, f"first version: task score {s.task_score:.4f}")
    if s.task_score >= to_beat + task_margin:
        return GateDecision(True, f"task score {s.task_score:.4f} beats {to_beat:.4f} by ≥ {task_margin:g}; guard held")
    return GateDecision(False, f"task score {s.task_score:.4f} does not beat {to_beat:.4f} by {task_margin:g}")
