"""Routing policies: given a request and the live fleet view, pick a target. Pure: no Ray, no clock.

``Router.choose(request, view) -> Decision`` is the whole interface; the Gateway owns dispatch,
failover and timing. Policies, chosen by name with :func:`make_router`:

- ``sla`` (:class:`SlaRouter`): predict each target's completion time, add a safety margin learnt
  from its own past errors (p95 of residuals), and among the targets that meet the deadline take
  the cheapest (caller's site, then other edge nodes, then the cloud; configurable).
- ``least_loaded``: the least-loaded healthy edge node, the cloud when every edge queue is full.
- ``p2c`` (power of two choices on queue length, as Ray Serve routes), ``round_robin``,
  ``edge_only`` and ``cloud_only``: baselines for the routing benchmark.

Example:
    >>> view = FleetView((TargetState("edge-1", "edge", site="a", queue_depth=2),
    ...                   TargetState("edge-2", "edge", site="b"), TargetState("cloud", "cloud")))
    >>> LeastLoadedRouter().choose(RouteRequest(), view).target_id
    'edge-2'
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from edgefleet.errors import EdgefleetError
from edgefleet.serve.batch_model import Timing, schedule

TierName = Literal["edge", "cloud"]
RoutePreference = Literal["auto", "edge", "cloud"]
CostTier = Literal["site", "edge", "cloud"]


class NoTargetError(EdgefleetError):
    """No healthy target can take the request; the message says why."""


class DeadlineInfeasible(NoTargetError):
    """A strict request whose deadline no target is predicted to meet: refuse it now, not late."""


@dataclass(frozen=True)
class Job:
    """A request this Gateway sent to a target that has not finished yet."""

    age_ms: float  # since dispatch
    prompt_tokens: int
    max_new_tokens: int


@dataclass(frozen=True)
class TargetState:
    """What the Gateway currently knows about one target."""

    target_id: str
    tier: TierName
    site: str = ""
    queue_depth: int = 0  # waiting in the target's batcher
    in_flight: int = 0  # dispatched by this Gateway and not finished
    healthy: bool = True
    draining: bool = False
    circuit_open: bool = False
    max_queue: int = 16  # above this the target counts as overloaded
    max_batch: int = 8
    rtt_ms: float = 0.0  # Gateway ↔ target round trip
    prefill_ms_per_token: float | None = None  # EWMA from the target; None = not measured yet
    decode_ms_per_step: tuple[tuple[int, float], ...] = ()  # (batch size, EWMA ms per step)
    model_version: str = ""
    # This Gateway's unfinished requests on the target, oldest first. With them the prediction
    # replays the target's batching; requests counted in queue_depth / in_flight beyond these
    # (another Gateway replica's) are assumed to be the size of the request being routed.
    jobs: tuple[Job, ...] = ()
    servers: int = 1  # replicas running batches side by side (the cloud)

    @property
    def load(self) -> int:
        return self.queue_depth + self.in_flight

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining and not self.circuit_open


@dataclass(frozen=True)
class FleetView:
    targets: tuple[TargetState, ...]


@dataclass(frozen=True)
class RouteRequest:
    """The routing-relevant part of a request."""

    route: RoutePreference = "auto"
    site: str = ""
    deadline_ms: float = 0.0  # 0 = none
    prompt_tokens: int = 0
    max_new_tokens: int = 0
    mode: Literal["best_effort", "strict"] = "best_effort"


@dataclass(frozen=True)
class Decision:
    target_id: str
    tier: TierName
    reason: str
    fallbacks: tuple[str, ...] = field(default=())  # next targets to try if this one fails before a token
    predicted_ms: float | None = None  # the chosen target's prediction, margin included
    base_ms: float | None = None  # the same without the margin: what residuals are measured against


class Router(Protocol):
    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        """Return the target for ``request``, or raise :class:`NoTargetError`."""
        ...


# ---------------------------------------------------------------- prediction


@dataclass(frozen=True)
class ServiceDefaults:
    """What to assume before a target has reported measurements (ms, on this class of CPU)."""

    prefill_ms_per_token: float = 2.0
    decode_ms_per_step: float = 25.0


DEFAULTS = ServiceDefaults()


def step_ms(target: TargetState, batch: int, defaults: ServiceDefaults) -> float:
    """Decode ms per step at ``batch``: the measured size nearest to it, else the default."""
    if not target.decode_ms_per_step:
        return defaults.decode_ms_per_step
    return min(target.decode_ms_per_step, key=lambda kv: (abs(kv[0] - batch), kv[0]))[1]


def predict_ms(target: TargetState, request: RouteRequest, defaults: ServiceDefaults = DEFAULTS) -> float:
    """Completion time if sent now: RTT + queue wait + prefill(prompt) + decode(max_new_tokens).

    The wait comes from replaying the target's batching (:mod:`edgefleet.serve.batch_model`) over
    the work already sent to it: a request that finds a long batch running waits for all of it.
    """
    timing = Timing(
        prefill_ms_per_token=target.prefill_ms_per_token or defaults.prefill_ms_per_token,
        step_ms=lambda batch: step_ms(target, batch, defaults),
        max_batch=target.max_batch,
        servers=target.servers,
    )
    # Each job reached the target one RTT after its dispatch; the new request will, one RTT from now.
    work = [(target.rtt_ms - j.age_ms, j.prompt_tokens, j.max_new_tokens) for j in target.jobs]
    unknown = max(0, target.queue_depth - len(work)) + max(0, target.in_flight - len(work))
    work += [(target.rtt_ms, request.prompt_tokens, request.max_new_tokens)] * unknown
    work.append((target.rtt_ms, max(1, request.prompt_tokens), max(1, request.max_new_tokens)))
    return schedule(work, timing)[-1]


class ResidualTracker:
    """Per-target safety margin: the p95 of (actual - predicted) over a sliding window, ms.

    Until ``min_samples`` are seen the margin is ``initial_fraction`` of the prediction.
    """

    def __init__(
        self, *, window: int = 200, min_samples: int = 10, quantile: float = 0.95, initial_fraction: float = 0.2
    ) -> None:
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.window, self.min_samples, self.quantile = window, min_samples, quantile
        self.initial_fraction = initial_fraction
        self._residuals: dict[str, deque[float]] = {}

    def observe(self, target_id: str, predicted_ms: float, actual_ms: float) -> None:
        self._residuals.setdefault(target_id, deque(maxlen=self.window)).append(actual_ms - predicted_ms)

    def margin(self, target_id: str, predicted_ms: float) -> float:
        seen = self._residuals.get(target_id)
        if not seen or len(seen) < self.min_samples:
            return self.initial_fraction * predicted_ms
        ordered = sorted(seen)
        return max(0.0, ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)])

    def state_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self._residuals.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self._residuals = {k: deque(v, maxlen=self.window) for k, v in state.items()}


# ---------------------------------------------------------------- policies


def _candidates(request: RouteRequest, view: FleetView) -> list[TargetState]:
    tiers = {"auto": ("edge", "cloud"), "edge": ("edge",), "cloud": ("cloud",)}[request.route]
    found = [t for t in view.targets if t.tier in tiers and t.available]
    if not found:
        what = request.route if request.route != "auto" else "edge or cloud"
        raise NoTargetError(f"no healthy {what} target")
    return found


def _decision(
    ranked: Sequence[TargetState], reason: str, predicted: float | None = None, base: float | None = None
) -> Decision:
    first = ranked[0]
    return Decision(first.target_id, first.tier, reason, tuple(t.target_id for t in ranked[1:]), predicted, base)


class SlaRouter:
    """Cheapest target predicted to meet the deadline; see the module docstring."""

    def __init__(
        self,
        *,
        cost_order: Sequence[CostTier] = ("site", "edge", "cloud"),
        margins: ResidualTracker | None = None,
        defaults: ServiceDefaults = DEFAULTS,
    ) -> None:
        self.cost_order = list(cost_order)
        self.margins = margins or ResidualTracker()
        self.defaults = defaults

    def cost_rank(self, target: TargetState, request: RouteRequest) -> int:
        tier = "site" if target.tier == "edge" and request.site and target.site == request.site else target.tier
        if tier in self.cost_order:
            return self.cost_order.index(tier)
        return self.cost_order.index("edge") if tier == "site" and "edge" in self.cost_order else len(self.cost_order)

    def predictions(self, request: RouteRequest, view: FleetView) -> list[tuple[TargetState, float, float]]:
        """(target, predicted ms with margin, predicted ms without) for every candidate."""
        out = []
        for t in _candidates(request, view):
            base = predict_ms(t, request, self.defaults)
            out.append((t, base + self.margins.margin(t.target_id, base), base))
        return out

    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        preds = self.predictions(request, view)
        deadline = request.deadline_ms

        def fits(p: float) -> bool:
            return deadline <= 0 or p <= deadline

        ranked = sorted(preds, key=lambda tp: (not fits(tp[1]), self.cost_rank(tp[0], request), tp[1]))
        best, predicted, best_base = ranked[0]
        if fits(predicted):
            tier = "own site" if best.tier == "edge" and request.site and best.site == request.site else best.tier
            reason = (
                f"predicted {predicted:.0f} ms meets deadline_ms={deadline:.0f} at the lowest cost ({tier})"
                if deadline > 0
                else f"no deadline: lowest cost ({tier})"
            )
            return _decision([t for t, _, _ in ranked], reason, predicted, best_base)
        fastest, fastest_ms, fastest_base = min(preds, key=lambda tp: tp[1])
        if request.mode == "strict":
            raise DeadlineInfeasible(
                f"cannot meet deadline_ms={deadline:.0f}: the fastest target, "
                f"{fastest.target_id}, is predicted at {fastest_ms:.0f} ms"
            )
        rest = [t for t, _, _ in sorted(preds, key=lambda tp: tp[1]) if t is not fastest]
        reason = f"best effort: no target meets deadline_ms={deadline:.0f}; fastest predicted {fastest_ms:.0f} ms"
        return _decision([fastest, *rest], reason, fastest_ms, fastest_base)


class LeastLoadedRouter:
    """Least-loaded healthy edge node; the cloud when every edge is over its queue limit."""

    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        found = _candidates(request, view)
        edges = sorted(
            (t for t in found if t.tier == "edge"), key=lambda t: (t.load, t.site != request.site, t.target_id)
        )
        clouds = sorted((t for t in found if t.tier == "cloud"), key=lambda t: (t.load, t.target_id))
        open_edges = [t for t in edges if t.load < t.max_queue]
        if request.route == "cloud" or not open_edges:
            reason = "route=cloud" if request.route == "cloud" else "every edge queue over its limit"
            return _decision(clouds + edges if clouds else edges, reason)
        return _decision(open_edges + clouds, "least-loaded edge")


class PowerOfTwoRouter:
    """Two random candidates, the shorter queue wins (Ray Serve's default policy)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random(0)

    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        found = _candidates(request, view)
        pair = self.rng.sample(found, k=min(2, len(found)))
        ranked = sorted(pair, key=lambda t: t.load) + [t for t in found if t not in pair]
        return _decision(ranked, "power of two choices")


class RoundRobinRouter:
    def __init__(self) -> None:
        self.turn = 0

    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        found = sorted(_candidates(request, view), key=lambda t: t.target_id)
        start = self.turn % len(found)
        self.turn += 1
        return _decision(found[start:] + found[:start], "round robin")


class TierOnlyRouter:
    """``edge_only`` / ``cloud_only`` baselines: least-loaded target of one tier."""

    def __init__(self, tier: TierName) -> None:
        self.tier = tier

    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        found = sorted(
            (t for t in _candidates(request, view) if t.tier == self.tier), key=lambda t: (t.load, t.target_id)
        )
        if not found:
            raise NoTargetError(f"no healthy {self.tier} target")
        return _decision(found, f"{self.tier}_only")


def make_router(
    name: str,
    *,
    cost_order: Sequence[CostTier] = ("site", "edge", "cloud"),
    rng: random.Random | None = None,
    margins: ResidualTracker | None = None,
) -> Router:
    """A policy by its config name."""
    factories = {
        "sla": lambda: SlaRouter(cost_order=cost_order, margins=margins),
        "least_loaded": LeastLoadedRouter,
        "p2c": lambda: PowerOfTwoRouter(rng),
        "round_robin": RoundRobinRouter,
        "edge_only": lambda: TierOnlyRouter("edge"),
        "cloud_only": lambda: TierOnlyRouter("cloud"),
    }
    if name not in factories:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(factories)}")
    return factories[name]()
