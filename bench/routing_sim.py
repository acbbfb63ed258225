"""The routing benchmark's pure half: request traces, the fleet's exact timing model, and the oracle.

No Ray and no clock: everything here is a function of a seed, so the same trace is replayed for
every policy and the oracle sees exactly the requests the policies saw.

- :func:`make_trace`: open-loop arrivals (Poisson, or gamma with a coefficient of variation of 3
  for bursts) of a seeded request mix with tight and loose deadlines.
- :func:`finish_times`: when each request on one target finishes, under the engine's batching
  (:mod:`edgefleet.serve.batch_model`, the same arithmetic the SLA router plans with, here with
  the exact speeds :class:`edgefleet.platform.synthetic.SyntheticModel` runs at).
- :func:`oracle`: a clairvoyant scheduler over the same trace. It knows every arrival and every
  exact service time in advance, admits a request only where it finishes in time without making
  any admitted request late, and refuses the rest so they cost nothing. It is the best of two such
  schedules (cheapest target first, or cloud first to keep the edge free). A heuristic, not a
  proof of optimality: a policy that beats it shows where the heuristic falls short.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from edgefleet.serve.batch_model import QUIET_GAP_MS, Timing, schedule

Arrivals = Literal["poisson", "bursty"]
BURSTY_CV = 3.0  # coefficient of variation of the bursty inter-arrival times


@dataclass(frozen=True)
class TargetModel:
    """One target's exact timing: the profile its synthetic engine runs, and its simulated RTT."""

    target_id: str
    tier: Literal["edge", "cloud"]
    prefill_ms_per_token: float
    decode_ms_per_step: float
    batch_slowdown: float
    max_batch: int
    rtt_ms: float

    @property
    def source(self) -> str:
        return f"synthetic:{self.prefill_ms_per_token}:{self.decode_ms_per_step}:{self.batch_slowdown}"

    def step_ms(self, batch: int) -> float:
        return self.decode_ms_per_step * (1 + self.batch_slowdown * (batch - 1))

    def idle_ms(self, prompt_tokens: int, new_tokens: int) -> float:
        """Alone on an idle target, from the Gateway's dispatch to the last token."""
        return self.rtt_ms + QUIET_GAP_MS + self.prefill_ms_per_token * prompt_tokens + new_tokens * self.step_ms(1)


@dataclass(frozen=True)
class TraceRequest:
    index: int
    at_s: float  # send time, from the start of the trace
    prompt_tokens: int  # as the synthetic engine counts them: characters // 4 + 8
    new_tokens: int
    deadline_ms: float
    kind: Literal["interactive", "long"]

    @property
    def mode(self) -> str:
        # An interactive caller would rather hear "no" at once than wait for a certain miss.
        return "strict" if self.kind == "interactive" else "best_effort"

    @property
    def prompt(self) -> str:
        """Text the Gateway and the synthetic engine both count as ``prompt_tokens`` tokens."""
        body = "edge fleet " * ((self.prompt_tokens - 8) * 4 // 11 + 1)
        return body[: (self.prompt_tokens - 8) * 4]


def _request_shape(rng: random.Random, reference: TargetModel, index: int, at_s: float) -> TraceRequest:
    """60% interactive (4-16 tokens, deadline 1.3-2.5× the reference edge alone),
    40% long (32-96 tokens, deadline 1.5-4× the reference edge alone)."""
    if rng.random() < 0.6:
        kind, prompt, tokens, slack = "interactive", rng.randint(16, 64), rng.randint(4, 16), rng.uniform(1.3, 2.5)
    else:
        kind, prompt, tokens, slack = "long", rng.randint(48, 192), rng.randint(32, 96), rng.uniform(1.5, 4.0)
    deadline = round(slack * reference.idle_ms(prompt, tokens))
    return TraceRequest(index, at_s, prompt, tokens, float(deadline), kind)  # type: ignore[arg-type]


def make_trace(
    arrivals: Arrivals, rate_per_s: float, duration_s: float, reference: TargetModel, seed: int = 0
) -> list[TraceRequest]:
    """Open-loop requests over ``duration_s`` at ``rate_per_s``; the same seed, the same trace.

    Deadlines scale with each request's own size on ``reference`` (a typical edge node), so a tight
    deadline is tight whatever the length.
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate_per_s and duration_s must be positive")
    gaps, shapes = random.Random(seed), random.Random(seed + 1)  # same shapes whatever the arrivals
    count = max(1, round(rate_per_s * duration_s))
    if arrivals == "poisson":
        steps = [gaps.expovariate(1.0) for _ in range(count)]
    elif arrivals == "bursty":
        shape = 1 / BURSTY_CV**2  # gamma: CV = 1/sqrt(shape)
        steps = [gaps.gammavariate(shape, 1 / shape) for _ in range(count)]
    else:
        raise ValueError(f"unknown arrival process {arrivals!r}")
    # Exactly rate × duration requests, spread over the duration: a 20 s bursty trace drawn
    # freely can carry half or twice its nominal load, and then "1.2×" would mean nothing.
    scale = duration_s / sum(steps)
    out, t = [], 0.0
    for i, gap in enumerate(steps):
        out.append(_request_shape(shapes, reference, i, t))
        t += gap * scale
    return out


def edge_capacity_per_s(edges: Sequence[TargetModel], sample: Sequence[TraceRequest], seed: int = 0) -> float:
    """Requests/s the edge nodes complete when every batch is full of requests like ``sample``."""
    rng = random.Random(seed)
    total = 0.0
    for t in edges:
        batch_ms = []
        for _ in range(400):
            rows = rng.sample(list(sample), k=min(t.max_batch, len(sample)))
            longest = max(r.new_tokens for r in rows)
            batch_ms.append(
                QUIET_GAP_MS
                + t.prefill_ms_per_token * max(r.prompt_tokens for r in rows) * len(rows)
                + (longest + 1) * t.step_ms(len(rows))
            )
        total += len(rows) / (sum(batch_ms) / len(batch_ms) / 1000)
    return total


# ---------------------------------------------------------------- the engine's schedule


def finish_times(target: TargetModel, requests: Iterable[TraceRequest], path_ms: float = 0.0) -> dict[int, float]:
    """Latency (ms, from the request's send time) of each request sent to ``target``.

    ``path_ms`` is what the serving path adds outside the target (client, proxy, Gateway hops).
    """
    requests = list(requests)
    timing = Timing(target.prefill_ms_per_token, target.step_ms, target.max_batch)
    done = schedule(
        [(r.at_s * 1000 + target.rtt_ms + path_ms, r.prompt_tokens, r.new_tokens) for r in requests], timing
    )
    return {r.index: end - r.at_s * 1000 for r, end in zip(requests, done, strict=True)}


def feasible(request: TraceRequest, targets: Sequence[TargetModel], path_ms: float = 0.0) -> bool:
    """Could some target meet the deadline if it had nothing else to do?"""
    return any(finish_times(t, [request], path_ms)[request.index] <= request.deadline_ms for t in targets)


@dataclass(frozen=True)
class OracleResult:
    met: int
    cloud: int  # of the met, how many ran in the cloud
    order: str  # which greedy order won
    latencies_ms: tuple[float, ...]  # of the met requests


def _greedy(
    trace: Sequence[TraceRequest], targets: Sequence[TargetModel], path_ms: float, cloud_first: bool
) -> OracleResult:
    assigned: dict[str, list[TraceRequest]] = {t.target_id: [] for t in targets}
    placed: dict[int, tuple[str, float]] = {}
    for r in sorted(trace, key=lambda r: r.at_s):
        best = None
        for t in targets:
            trial = [*assigned[t.target_id], r]
            fin = finish_times(t, trial, path_ms)
            if any(fin[x.index] > x.deadline_ms for x in trial):
                continue
            cost = (t.tier == "edge") if cloud_first else (t.tier == "cloud")
            key = (cost, fin[r.index])
            if best is None or key < best[0]:
                best = (key, t, fin[r.index])
        if best is not None:
            assigned[best[1].target_id].append(r)
            placed[r.index] = (best[1].tier, best[2])
    tiers = [tier for tier, _ in placed.values()]
    return OracleResult(
        len(placed),
        tiers.count("cloud"),
        "cloud first" if cloud_first else "cheapest first",
        tuple(ms for _, ms in placed.values()),
    )


def oracle(trace: Sequence[TraceRequest], targets: Sequence[TargetModel], path_ms: float = 0.0) -> OracleResult:
    """The best of the two clairvoyant schedules (most requests met; fewer in the cloud on a tie)."""
    runs = [_greedy(trace, targets, path_ms, cloud_first) for cloud_first in (False, True)]
    return max(runs, key=lambda o: (o.met, -o.cloud))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
