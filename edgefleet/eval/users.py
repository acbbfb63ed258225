"""A simulated user population: each site's users ask about their own domain through the SDK, judge
the answers against the answers they expect, and say so through the feedback API.

A user rates an answer good when it covers the reference answer well enough (token F1 against it,
as SQuAD scores answers), and otherwise rates it bad and types the reference answer as the
correction. Everything goes through the real API (gRPC, the Gateway, the site's edge node), so
what trains the next model is exactly what a real user's feedback would be.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgefleet.eval.sites import QA, SiteDomain

GOOD_F1 = 0.5


@dataclass(frozen=True)
class SiteFeedback:
    """What one site's users said."""

    site: str
    asked: int
    good: int
    corrected: int
    kept_on: frozenset[str]  # the nodes that acknowledged keeping it (the site's own node)


def token_f1(answer: str, reference: str) -> float:
    """Word-overlap F1 of ``answer`` against ``reference`` (lower-cased, punctuation dropped)."""
    a, r = _words(answer), _words(reference)
    common = sum((Counter(a) & Counter(r)).values())
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def ask_and_rate(
    client: object,
    domains: dict[str, SiteDomain],
    sites: dict[str, str],
    *,
    max_new_tokens: int = 48,
    workers: int = 6,
    on_answer: Callable[[], None] | None = None,
) -> list[SiteFeedback]:
    """Every site's users ask their questions (``domains[node].asked``) with their site hint
    (``sites[node]``), then rate each answer through ``client.feedback``."""

    def one(node: str, qa: QA) -> tuple[str, bool, str]:
        done = client.generate(qa.question, site=sites[node], max_new_tokens=max_new_tokens, timeout=120)
        good = token_f1(done.text, qa.reference) >= GOOD_F1
        kept_on = client.feedback(done, good=good, correction=None if good else qa.reference, timeout=30)
        if on_answer is not None:
            on_answer()
        return node, good, kept_on

    jobs = [(node, qa) for node, d in domains.items() for qa in d.asked]
    with ThreadPoolExecutor(workers) as pool:  # concurrent users: the nodes batch their answers
        results = list(pool.map(lambda job: one(*job), jobs))
    out = []
    for node in domains:
        mine = [r for r in results if r[0] == node]
        good = sum(1 for _, g, _ in mine if g)
        out.append(SiteFeedback(sites[node], len(mine), good, len(mine) - good, frozenset(k for *_, k in mine)))
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())
