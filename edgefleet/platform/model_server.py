"""What an edge actor and a cloud replica have in common: a GenerationEngine behind Ray calls.

Subclassed by :class:`EdgeNode` (a plain Ray actor) and :class:`Cloud` (a Serve deployment), so
both tiers answer the same calls with the same events, their start tagged with node id and tier.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet import metrics
from edgefleet.config import BatchingConfig, ModelSpec, use_mlflow_uris
from edgefleet.platform.events import Completed, EngineEvent, Failed, Started
from edgefleet.platform.stats import EngineStats

if TYPE_CHECKING:
    from edgefleet.platform.chat import ChatExample
    from edgefleet.platform.engine import GenRequest


class ModelServer:
    tier = ""  # "edge" or "cloud", set by the subclass

    def __init__(
        self, node_id: str, spec: ModelSpec, cache_dir: str | None, batching: BatchingConfig | None = None
    ) -> None:
        from edgefleet.platform.engine import GenerationEngine

        self.node_id = node_id
        self.spec = spec  # what this node serves now; swap_model replaces it
        self._delay_s = 0.0  # see inject_delay
        self._reported_model: tuple[str, str] | None = None  # last (model, version) put in the metrics
        self.cache_dir = Path(cache_dir) if cache_dir else None
        b = batching or BatchingConfig()
        # load= builds the model on the engine's torch thread (see GenerationEngine).
        self.engine = GenerationEngine(
            load=self._loader(spec), batch_window_ms=b.window_ms, batch_quiet_ms=b.quiet_ms, max_batch=b.max_batch
        )

    def _loader(self, spec: ModelSpec):
        from edgefleet.platform.models import load_model
        from edgefleet.platform.synthetic import load_synthetic

        if _is_synthetic(spec):  # a timing profile instead of a model
            return partial(load_synthetic, spec.source)
        return partial(load_model, spec, cache_dir=self.cache_dir)

    def _tag(self, started: Started) -> Started:
        return dataclasses.replace(started, node_id=self.node_id, tier=self.tier)

    @staticmethod
    def _arrived(request: GenRequest) -> GenRequest:
        # The caller's perf_counter means nothing in this process: the request arrives now.
        return dataclasses.replace(request, arrived=time.perf_counter())

    async def stream(self, request: GenRequest) -> AsyncIterator[EngineEvent]:
        """Events of one request (see :mod:`events`); the start event names this node."""
        await self._injected_delay()
        async for event in self.engine.stream(self._arrived(request)):
            yield self._tag(event) if isinstance(event, Started) else event

    async def complete(self, request: GenRequest) -> Completed | Failed:
        """One request, one result (no per-token messages): what the Gateway uses for unary calls."""
        await self._injected_delay()
        result = await self.engine.complete(self._arrived(request))
        if isinstance(result, Failed):
            return result
        return dataclasses.replace(result, started=self._tag(result.started))

    def stats(self) -> EngineStats:
        """Live state; polled by the Gateway every 100 ms, so it also refreshes this node's gauges."""
        s = dataclasses.replace(self.engine.stats(), node_id=self.node_id, tier=self.tier)
        metrics.node_state(self.tier, self.node_id, s.queue_depth)
        serving = (s.model, s.model_version)
        if serving != self._reported_model:
            metrics.model_serving(self.tier, self.node_id, *serving, previous=self._reported_model)
            self._reported_model = serving
        return s

    async def swap_model(self, spec: ModelSpec) -> str:
        """Load ``spec`` beside the current model, then switch; running requests finish on the old one."""
        if _is_synthetic(spec) != (self.engine.loaded.name == "synthetic"):
            raise ValueError("a synthetic node swaps only to another synthetic profile, a real one to a real model")
        version = await self.engine.swap_with(self._loader(spec))
        self.spec = spec
        return version

    async def swap_to_registry(
        self, base: ModelSpec, model_uri: str, tracking_uri: str, registry_uri: str | None = None
    ) -> str:
        """Fetch a registered version's adapter (``models:/name/version``) onto this node, then swap to
        ``base`` + that adapter: the node pulls its model, so the same call works on a real cluster.
        ``registry_uri``: where versions live, when not in the tracking store."""
        import tempfile

        import mlflow
        import mlflow.artifacts

        use_mlflow_uris(tracking_uri, registry_uri or tracking_uri)  # models:/ URIs resolve through the registry
        folder = Path(tempfile.mkdtemp(prefix="edgefleet-adapter-", dir=self.cache_dir))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
        found = next((p.parent for p in local.rglob("adapter_config.json")), None)
        if found is None:
            raise ValueError(f"{model_uri} holds no peft adapter (adapter_config.json)")
        # named after the version, so the served model_version says which one it is
        adapter = found.rename(folder / model_uri.removeprefix("models:/").replace("/", "-v"))
        return await self.swap_model(base.model_copy(update={"adapter": adapter}))

    async def probe_loss(self, probe: list[str] | list[ChatExample]) -> float:
        return await self.engine.probe_loss(probe)

    def inject_delay(self, seconds: float) -> None:
        """Fault drill: hold every new request ``seconds`` before it reaches the engine, as a slow or
        overloaded site would (hedging, failover and the dashboards react); 0 ends the drill."""
        if not 0 <= seconds <= 600:
            raise ValueError(f"delay must be within [0, 600] s, got {seconds}")
        self._delay_s = seconds

    async def _injected_delay(self) -> None:
        if self._delay_s:
            import asyncio

            await asyncio.sleep(self._delay_s)

    def drain(self, draining: bool = True) -> None:
        """Refuse new requests (UNAVAILABLE) while the running ones finish; ``False`` undoes it."""
        self.engine.draining = draining


def _is_synthetic(spec: ModelSpec) -> bool:
    return spec.source == "synthetic" or spec.source.startswith("synthetic:")
