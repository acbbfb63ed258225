"""When to hedge a slow edge request to the cloud, and how often. Pure: no Ray, no clock.

A hedge is a second copy of the request sent to the cloud when the chosen edge target has not
sent its first token by its predicted p95 time to first token, and the cloud can still meet the
deadline. The first token wins; the loser is cancelled. A token bucket caps hedges at a fixed
share of requests (5% by default), so a slow fleet cannot double the cloud's load.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.serve.router import DEFAULTS, FleetView, ResidualTracker, RouteRequest, ServiceDefaults, predict_ms


class HedgeBudget:
    """Token bucket: every request earns ``share`` of a hedge, a hedge spends one, at most ``burst`` saved."""

    def __init__(self, *, share: float = 0.05, burst: float = 2.0) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.share, self.burst = share, burst
        self.tokens = 0.0
        self.requests = 0
        self.hedges = 0

    def on_request(self) -> None:
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.share)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.hedges += 1
            return True
        return False

    @property
    def rate(self) -> float:
        return self.hedges / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class HedgePlan:
    cloud_id: str
    after_ms: float  # hedge if no first token by then (from dispatch), ms


def predict_ttft_ms(target, request: RouteRequest, defaults: ServiceDefaults = DEFAULTS) -> float:
    """Time to first token: the completion prediction with one new token."""
    one = RouteRequest(route=request.route, site=request.site, prompt_tokens=request.prompt_tokens, max_new_tokens=1)
    return predict_ms(target, one, defaults)


def plan_hedge(
    chosen_id: str,
    request: RouteRequest,
    view: FleetView,
    margins: ResidualTracker,
    defaults: ServiceDefaults = DEFAULTS,
) -> HedgePlan | None:
    """A hedge plan when the request went to an edge node and a healthy cloud target would still
    meet the deadline if sent at the edge's p95 first-token time; else None."""
    if request.route != "auto" or request.deadline_ms <= 0:
        return None
    targets = {t.target_id: t for t in view.targets}
    chosen = targets.get(chosen_id)
    if chosen is None or chosen.tier != "edge":
        return None
    base_ttft = predict_ttft_ms(chosen, request, defaults)
    after = base_ttft + margins.margin(chosen_id, base_ttft)
    for cloud in (t for t in view.targets if t.tier == "cloud" and t.available):
        base = predict_ms(cloud, request, defaults)
        if after + base + margins.margin(cloud.target_id, base) <= request.deadline_ms:
            return HedgePlan(cloud.target_id, after)
    return None
