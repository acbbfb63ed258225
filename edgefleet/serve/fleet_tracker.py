"""The Gateway's live picture of its targets, turned into the Router's FleetView. Pure: no Ray.

The Gateway feeds it stats heartbeats (every 100 ms; every 1 s once idle), dispatches and outcomes. It records its own
dispatches at once, with their sizes, so two requests arriving together don't both pick the same
"empty" node and the router can replay each target's batching over the work already sent; it
opens a circuit breaker on a target after consecutive failures until a heartbeat succeeds.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.stats import EngineStats
from edgefleet.serve.router import FleetView, Job, TargetState

log = logging.getLogger(__name__)

BREAKER_FAILURES = 3  # consecutive failed calls that open a target's circuit
NOT_HEARD = EngineStats()  # a target that has not answered a stats poll yet


@dataclass(frozen=True)
class RecentSummary:
    """One target's answers over the last window (``edgefleet status``'s tokens/s and SLA columns)."""

    requests: int
    tokens_per_s: float
    sla_met: int
    sla_judged: int  # answers to requests with a deadline
    sla_attainment: float | None  # None: no answer had a deadline


@dataclass(frozen=True)
class TargetStatus:
    """One target as the Gateway sees it: what ``edgefleet status`` shows per node (it crosses a Serve handle)."""

    target_id: str
    tier: str
    healthy: bool
    circuit_open: bool
    draining: bool
    queue_depth: int
    in_flight: int
    model: str
    model_version: str
    recent: RecentSummary


class FleetTracker:
    def __init__(self, cfg: EdgefleetConfig, rtt_ms: dict[str, float]) -> None:
        self.cfg = cfg
        self.rtt_ms = rtt_ms
        self.edges = {n.id: n for n in cfg.fleet.edge_nodes}
        self.cloud_id = cfg.fleet.cloud.id
        self.stats: dict[str, EngineStats] = {}
        self.healthy: dict[str, bool] = {}
        self.failures: dict[str, int] = {}
        # Unfinished dispatches per target: job id → (monotonic s at dispatch, prompt tokens, new tokens).
        self.jobs: dict[str, dict[int, tuple[float, int, int]]] = {}
        self._ids = itertools.count()

    @property
    def target_ids(self) -> list[str]:
        return [*self.edges, self.cloud_id]

    def heartbeat(self, target_id: str, stats: EngineStats | None) -> None:
        """A stats answer (or ``None`` for no answer). An answer closes the circuit breaker. An
        answer of another shape (a node of an older release, mid-upgrade) counts as no answer:
        routing must not read fields it lacks."""
        if stats is not None and not isinstance(stats, EngineStats):
            log.warning("%s answered stats of type %s, not EngineStats: marked unhealthy", target_id, type(stats))
            stats = None
        self.healthy[target_id] = stats is not None
        if stats is not None:
            self.stats[target_id] = stats
            self.failures[target_id] = 0

    def dispatch(
        self, target_id: str, prompt_tokens: int = 0, max_new_tokens: int = 0, now: float | None = None
    ) -> int:
        """Count a request sent to ``target_id``; returns the job id :meth:`finish` takes."""
        job = next(self._ids)
        at = time.monotonic() if now is None else now
        self.jobs.setdefault(target_id, {})[job] = (at, prompt_tokens, max_new_tokens)
        return job

    def finish(self, target_id: str, *, failed: bool, job: int | None = None) -> None:
        """The request left ``target_id`` (``job`` None: its oldest one)."""
        mine = self.jobs.get(target_id, {})
        mine.pop(job if job is not None else next(iter(mine), -1), None)
        self.failures[target_id] = self.failures.get(target_id, 0) + 1 if failed else 0

    def circuit_open(self, target_id: str) -> bool:
        return self.failures.get(target_id, 0) >= BREAKER_FAILURES

    def view(self, now: float | None = None) -> FleetView:
        now = time.monotonic() if now is None else now
        targets = [
            self._state(node_id, "edge", node.site, node.batching.max_batch, 16, 1, now)
            for node_id, node in self.edges.items()
        ]
        cloud = self.cfg.fleet.cloud
        targets.append(
            self._state(
                self.cloud_id, "cloud", "", cloud.batching.max_batch, cloud.max_queued_requests, cloud.replicas, now
            )
        )
        return FleetView(tuple(targets))

    def status(self, recent: RecentOutcomes) -> tuple[TargetStatus, ...]:
        """Every target's health, load, model and recent outcomes (what ``edgefleet status`` shows)."""
        return tuple(
            TargetStatus(
                target_id=t.target_id,
                tier=t.tier,
                healthy=t.healthy,
                circuit_open=t.circuit_open,
                draining=t.draining,
                queue_depth=t.queue_depth,
                in_flight=t.in_flight,
                model=self.stats.get(t.target_id, NOT_HEARD).model,
                model_version=t.model_version,
                recent=recent.summary(t.target_id),
            )
            for t in self.view().targets
        )

    def _state(
        self, target_id: str, tier: str, site: str, max_batch: int, max_queue: int, servers: int, now: float
    ) -> TargetState:
        s = self.stats.get(target_id, NOT_HEARD)
        jobs = tuple(Job((now - at) * 1000, prompt, new) for at, prompt, new in self.jobs.get(target_id, {}).values())
        return TargetState(
            target_id,
            tier,
            site=site,
            queue_depth=s.queue_depth,
            in_flight=len(jobs),
            healthy=self.healthy.get(target_id, True),
            draining=s.draining,
            circuit_open=self.circuit_open(target_id),
            max_queue=max_queue,
            max_batch=max_batch,
            rtt_ms=self.rtt_ms.get(target_id, 0.0),
            prefill_ms_per_token=s.prefill_ms_per_token,
            decode_ms_per_step=tuple(sorted(s.decode_ms_per_step.items())),
            model_version=s.model_version,
            jobs=jobs,
            servers=servers,
        )


class RecentOutcomes:
    """Each target's answers over the last ``window_s``: tokens/s and SLA attainment (``edgefleet status``)."""

    def __init__(self, window_s: float = 60.0, now: float | None = None) -> None:
        self.window_s = window_s
        self.started = time.monotonic() if now is None else now
        self.events: dict[str, deque[tuple[float, int, bool | None]]] = {}

    def record(self, target_id: str, tokens: int, sla_met: bool | None, now: float | None = None) -> None:
        """An answer from ``target_id``; ``sla_met`` None for a request without a deadline."""
        at = time.monotonic() if now is None else now
        self.events.setdefault(target_id, deque()).append((at, tokens, sla_met))
        self._trim(target_id, at)

    def summary(self, target_id: str, now: float | None = None) -> RecentSummary:
        at = time.monotonic() if now is None else now
        self._trim(target_id, at)
        events = self.events.get(target_id, ())
        judged = [met for _, _, met in events if met is not None]
        span = max(min(self.window_s, at - self.started), 1e-9)  # a young Gateway has seen less than a window
        return RecentSummary(
            requests=len(events),
            tokens_per_s=sum(t for _, t, _ in events) / span,
            sla_met=sum(judged),
            sla_judged=len(judged),
            sla_attainment=sum(judged) / len(judged) if judged else None,
        )

    def _trim(self, target_id: str, now: float) -> None:
        events = self.events.get(target_id)
        while events and events[0][0] < now - self.window_s:
            events.popleft()
