"""Routing policy: given a request and the live fleet view, pick a target. Pure: no Ray, no clock.

``Router.choose(request, view) -> Decision`` is the whole interface. The Gateway owns dispatch,
failover and timing; a policy only ranks targets. :class:`LeastLoadedRouter` is the first policy:
the least-loaded healthy edge node (the client's own site wins ties), and the cloud once every
edge queue is over its limit. The SLA router replaces it behind the same interface.

Example:
    >>> view = FleetView((TargetState("edge-1", "edge", site="a", queue_depth=2),
    ...                   TargetState("edge-2", "edge", site="b"), TargetState("cloud", "cloud")))
    >>> LeastLoadedRouter().choose(RouteRequest(), view).target_id
    'edge-2'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

TierName = Literal["edge", "cloud"]
RoutePreference = Literal["auto", "edge", "cloud"]


class NoTargetError(Exception):
    """No healthy target can take the request; ``reason`` says why."""


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
    max_queue: int = 16  # above this the target counts as overloaded

    @property
    def load(self) -> int:
        return self.queue_depth + self.in_flight

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining


@dataclass(frozen=True)
class FleetView:
    targets: tuple[TargetState, ...]

    def of_tier(self, tier: TierName) -> list[TargetState]:
        return [t for t in self.targets if t.tier == tier]


@dataclass(frozen=True)
class RouteRequest:
    """The routing-relevant part of a request."""

    route: RoutePreference = "auto"
    site: str = ""
    deadline_ms: float = 0.0  # 0 = none
    prompt_tokens: int = 0
    max_new_tokens: int = 0


@dataclass(frozen=True)
class Decision:
    target_id: str
    tier: TierName
    reason: str
    fallbacks: tuple[str, ...] = field(default=())  # next targets to try if this one fails before a token


class Router(Protocol):
    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        """Return the target for ``request``, or raise :class:`NoTargetError`."""
        ...


class LeastLoadedRouter:
    """Least-loaded healthy edge node; the cloud when every edge is over its queue limit."""

    def choose(self, request: RouteRequest, view: FleetView) -> Decision:
        edges = [t for t in view.of_tier("edge") if t.available]
        clouds = [t for t in view.of_tier("cloud") if t.available]
        # Least load first; on equal load the caller's own site, then the id for a stable order.
        edges.sort(key=lambda t: (t.load, t.site != request.site, t.target_id))
        clouds.sort(key=lambda t: (t.load, t.target_id))
        if request.route == "edge":
            ranked, reason = edges, "route=edge"
        elif request.route == "cloud":
            ranked, reason = clouds, "route=cloud"
        else:
            open_edges = [t for t in edges if t.load < t.max_queue]
            if open_edges:
                ranked, reason = open_edges + clouds, "least-loaded edge"
            else:
                ranked = clouds + edges
                reason = "every edge queue over its limit" if edges else "no healthy edge node"
        if not ranked:
            raise NoTargetError(f"no healthy {request.route if request.route != 'auto' else 'edge or cloud'} target")
        first = ranked[0]
        return Decision(first.target_id, first.tier, reason, tuple(t.target_id for t in ranked[1:]))
