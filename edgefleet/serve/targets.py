"""How the Gateway reaches its targets: EdgeNode actors by name, the Cloud deployment by handle.

One place for the transport: a request's events from either tier (streamed, or one unary call
turned into the same events), stats polls into the :class:`FleetTracker`, and the actor handle
cache, dropped when an actor looks gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import ray
from ray.serve.exceptions import BackPressureError

from edgefleet.config import EdgefleetConfig
from edgefleet.errors import EdgefleetError
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name
from edgefleet.platform.engine import GenRequest
from edgefleet.platform.events import EngineEvent, Failed, FirstToken
from edgefleet.serve.fleet_tracker import FleetTracker


class LookupGone(EdgefleetError):
    """An EdgeNode actor name that no longer resolves (the actor is gone for good)."""


# Failures of a target (not of the request) that another target may not share: fail over.
RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, BackPressureError, LookupGone)


class Targets:
    def __init__(self, cfg: EdgefleetConfig, cloud: Any, fleet: FleetTracker) -> None:
        self.cfg, self.cloud, self.fleet = cfg, cloud, fleet
        self.handles: dict[str, Any] = {}  # EdgeNode actor handles by node id

    def actor(self, node_id: str) -> Any:
        # A name lookup is a GCS round trip: cache the handle, drop it when the actor looks gone.
        if node_id not in self.handles:
            try:
                self.handles[node_id] = ray.get_actor(actor_name(node_id, self.cfg.app), namespace=ACTOR_NAMESPACE)
            except ValueError as exc:
                raise LookupGone(str(exc)) from None
        return self.handles[node_id]

    def forget(self, node_id: str) -> None:
        """The actor looks gone (or restarted): look it up again next time."""
        self.handles.pop(node_id, None)

    async def events(self, target: str, request: GenRequest) -> AsyncIterator[EngineEvent]:
        """The events of ``request`` on ``target``; a unary request's come from one call."""
        if not request.stream:
            async for event in self._completed_on(target, request):
                yield event
            return
        if target == self.cfg.fleet.cloud.id:
            response = self.cloud.options(stream=True).stream.remote(request)
            try:
                async for event in response:
                    yield event
            finally:  # the caller left (hedge lost, client gone): stop the generation, not just the reading
                response.cancel()
            return
        refs = self.actor(target).generate_stream.options(num_returns="streaming").remote(request)
        try:
            async for ref in refs:
                yield await ref
        finally:
            ray.cancel(refs)

    async def _completed_on(self, target: str, request: GenRequest) -> AsyncIterator[EngineEvent]:
        """Unary: one call, no per-token traffic. Yields the same Started / FirstToken / Finished events."""
        sent = time.perf_counter()
        # Cancelling this coroutine does not reach the actor or replica by itself: without the
        # explicit cancel, a dropped call (a failed sibling in a list prompt, a client gone) would
        # keep generating there while the fleet view already counts the target free.
        if target == self.cfg.fleet.cloud.id:
            response = self.cloud.complete.remote(request)
            cancel = response.cancel
        else:
            response = self.actor(target).complete.remote(request)
            cancel = partial(ray.cancel, response)
        try:
            result = await response
        except asyncio.CancelledError:
            cancel()
            raise
        if isinstance(result, Failed):
            yield result
            return
        back = time.perf_counter()
        # The first token left the engine at first_token_ms after it got the request; the one-way
        # transfer is taken as half of the round trip not spent in the engine.
        one_way_s = max(0.0, (back - sent) * 1000 - result.engine_ms) / 2000
        yield result.started
        yield FirstToken(at=sent + one_way_s + result.first_token_ms / 1000)
        yield result.finished

    async def refresh_all(self) -> None:
        """Every target's stats into the fleet view (the poller's schedule: ``serve/stats_poller.py``)."""
        await asyncio.gather(*(self._refresh(t) for t in self.fleet.target_ids), return_exceptions=True)

    async def _refresh(self, target_id: str) -> None:
        try:
            # 10 polls a second per node: kept out of Ray's task-event store (the GCS keeps up to 100k
            # task records, ~13 MB/min of GCS growth in the soak) and out of the dashboard's task list.
            call = (
                self.cloud.stats.remote()
                if target_id == self.fleet.cloud_id
                else self.actor(target_id).stats.options(enable_task_events=False).remote()
            )
            self.fleet.heartbeat(target_id, await asyncio.wait_for(call, timeout=1.0))
        except Exception:  # dead, restarting or slow: route around it until it answers again
            self.fleet.heartbeat(target_id, None)
            self.forget(target_id)
