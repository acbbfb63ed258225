"""The cloud fallback: a Ray Serve deployment on the cloud-labelled node(s).

Full precision (or any configured model), more replicas when busy, and real backpressure:
``max_queued_requests`` makes Serve refuse work beyond the queue instead of letting every caller
wait. Same :class:`GenerationEngine` as the edge, so edge and cloud stream the same events.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ray import serve

from edgefleet.config import BatchingConfig, CloudConfig, ModelSpec
from edgefleet.platform.topology import role_selector


class Cloud:
    """One cloud replica. Built by :func:`cloud_deployment`."""

    def __init__(self, node_id: str, spec: ModelSpec, cache_dir: str | None,
                 batching: BatchingConfig | None = None) -> None:  # fmt: skip
        from edgefleet.platform.engine import GenerationEngine
        from edgefleet.platform.models import load_model

        self.node_id = node_id
        self.cache_dir = Path(cache_dir) if cache_dir else None
        b = batching or BatchingConfig()
        self.engine = GenerationEngine(load=partial(load_model, spec, cache_dir=self.cache_dir),
                                       batch_window_ms=b.window_ms, batch_quiet_ms=b.quiet_ms,
                                       max_batch=b.max_batch)  # fmt: skip

    async def stream(self, request: dict[str, Any]):
        from edgefleet.platform.engine import GenRequest

        async for event in self.engine.stream(GenRequest(**request)):
            if event["type"] == "start":
                event = {**event, "node_id": self.node_id, "tier": "cloud"}
            yield event

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        from edgefleet.platform.engine import GenRequest

        result = await self.engine.complete(GenRequest(**request))
        return {**result, "node_id": self.node_id, "tier": "cloud"} if result["type"] == "end" else result

    def stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "node_id": self.node_id, "tier": "cloud"}

    async def swap_model(self, spec: ModelSpec) -> str:
        from edgefleet.platform.models import load_model

        return await self.engine.swap_with(partial(load_model, spec, cache_dir=self.cache_dir))


def cloud_deployment(cloud: CloudConfig, *, cache_dir: Path | None) -> Any:
    """The bound Cloud deployment for ``serve.run`` (as a Gateway argument)."""
    replicas = cloud.replicas
    return (
        serve.deployment(Cloud)
        .options(
            name="Cloud",
            ray_actor_options={"num_cpus": cloud.replica_cpus, "label_selector": role_selector("cloud")},
            autoscaling_config={
                "min_replicas": 1,
                "initial_replicas": replicas,
                "max_replicas": max(replicas, 1),
                "target_ongoing_requests": 8,
            },  # fmt: skip
            max_ongoing_requests=32,  # the engine batches 8 at a time; more would only queue inside it
            max_queued_requests=cloud.max_queued_requests,
            health_check_period_s=5,
        )
        .bind(cloud.id, cloud.model, str(cache_dir) if cache_dir else None, cloud.batching)
    )
