"""Who may take part in a round, how many must finish, and who is charged for what. Pure: no Ray, no I/O.

The coordinator asks these functions and does what they say; the privacy budget is consulted
through one predicate, ``fits(client, release)`` (the ledger's :meth:`~PrivacyLedger.can_take_part`),
and nowhere else in a round.

- :func:`draw`: the clients whose planned release fits their budget, K of them drawn with a seed
  per (round, attempt); or why no round can start, and whether a retry could ever help.
- :func:`quorum` and :func:`threshold`: finished clients a round of K needs; Shamir's t.
- :func:`over_budget`: clients whose *actual* release would pass their budget. Under secure
  aggregation they are dropped before the reveal (their update stays masked for good).
- :func:`left_out_of_the_sum`: updates that arrived but do not enter the sum: those two, and a
  malformed one (which also leaves its sender out of the round's later attempts).
- :func:`charges_on_arrival` and :func:`charges_at_reveal`: which releases the ledger records, and
  when. In the clear an update is seen as it arrives; under secure aggregation only the sum is,
  at the reveal.

Example:
    >>> rules = QuorumRules(min_clients=2, min_fraction=0.6, secure=True)
    >>> quorum(3, rules), threshold(3)
    (2, 2)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edgefleet.train.accounting import Release

Fits = Callable[[str, Release], bool]  # whether a client stays within its budget after one more release


@dataclass(frozen=True)
class QuorumRules:
    min_clients: int
    min_fraction: float
    secure: bool  # secure aggregation: the Shamir threshold must be met too


def threshold(k: int) -> int:
    """Shamir threshold t for ``k`` sampled clients: a majority, at least 2."""
    return max(2, k // 2 + 1)


def quorum(k: int, rules: QuorumRules) -> int:
    """Finished clients a round of ``k`` sampled needs."""
    need = max(rules.min_clients, math.ceil(rules.min_fraction * k - 1e-9))
    return min(k, max(need, threshold(k))) if rules.secure else min(k, need)


def over_budget(releases: Mapping[str, Release], fits: Fits) -> list[str]:
    """The clients whose ``releases`` would take them past their budget, sorted."""
    return sorted(c for c, r in releases.items() if not fits(c, r))


def left_out_of_the_sum(
    arrived: Mapping[str, Release], refused: Mapping[str, str], fits: Fits, *, secure: bool
) -> dict[str, str]:
    """Clients whose update arrived but does not enter the sum, and why: a malformed update
    (``refused``: client → why, in either mode) and, under secure aggregation, an update whose
    actual release would take its client past budget. Dropped before the reveal, neither is
    unmasked, so the round's attempt goes on with the rest if the quorum holds."""
    left_out = dict(refused)
    if secure:
        fine = {c: r for c, r in arrived.items() if c not in refused}
        left_out.update(dict.fromkeys(over_budget(fine, fits), "its release would exceed its privacy budget"))
    return left_out


@dataclass(frozen=True)
class Draw:
    """What the plan step decided: who trains, or why nobody does."""

    sampled: list[str]  # empty when the round cannot start: too few clients available within budget
    over_budget: list[str]
    available: int  # clients that answered and are within budget
    final: bool = False  # the budget rules the round out for good: no retry can help


def draw(
    plans: Mapping[str, Release],
    fits: Fits,
    *,
    nodes: int,
    clients_per_round: int,
    rules: QuorumRules,
    seed: str,
) -> Draw:
    """Sample K = ``clients_per_round`` among the clients that answered with a ``plan`` and can afford it.

    ``nodes`` is the fleet's size: when fewer than a quorum are within budget at all, the round can
    never run. ``seed`` makes the draw reproducible (``"<seed>/<round>/<attempt>"``).
    """
    refused = over_budget(plans, fits)
    eligible = sorted(c for c in plans if c not in refused)
    k = min(clients_per_round, len(eligible))
    need = quorum(clients_per_round, rules)
    if k == 0 or k < need or (rules.secure and k < 2):
        return Draw([], refused, len(eligible), final=nodes - len(refused) < need)
    return Draw(sorted(random.Random(seed).sample(eligible, k)), refused, len(eligible))


def charges_on_arrival(
    sampled: Sequence[str], planned: Mapping[str, Release], arrived: Mapping[str, Release], *, secure: bool
) -> dict[str, Release]:
    """Releases to record as the training step ends. In the clear every sampled client is charged
    now: what it reports, or for a straggler what it planned (its update may still come in, and the
    ledger must never under-count). Under secure aggregation nobody yet."""
    if secure:
        return {}
    return {c: arrived[c] if c in arrived else planned[c] for c in sampled}


def charges_at_reveal(finished: Sequence[str], arrived: Mapping[str, Release]) -> dict[str, Release]:
    """Releases to record when the sum is revealed: every finisher's, since its update is in that sum."""
    return {c: arrived[c] for c in finished}
