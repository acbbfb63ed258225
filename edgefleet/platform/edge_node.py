"""The EdgeNode actor: one per edge node, pinned there by label, serving that node's model.

A thin Ray wrapper around :class:`GenerationEngine` (dynamic batching, token streaming, live
stats, live model swap). It loads its model in the constructor, so an actor that Ray restarts
(``max_restarts``) comes back serving. Tokens leave through a Ray streaming generator:

    async for ref in actor.generate_stream.options(num_returns="streaming").remote(request):
        event = await ref
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from edgefleet.config import BatchingConfig, EdgeNodeConfig, ModelSpec
from edgefleet.platform.topology import node_selector

ACTOR_NAMESPACE = "edgefleet"


def actor_name(node_id: str) -> str:
    return f"edge-node/{node_id}"


class EdgeNode:
    """Serves one edge node's model. Construct through :func:`spawn_edge_node`, not directly."""

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

    async def generate_stream(self, request: dict[str, Any]):
        """Events of one request (see :mod:`engine`); the start event names this node."""
        from edgefleet.platform.engine import GenRequest

        async for event in self.engine.stream(GenRequest(**request)):
            if event["type"] == "start":
                event = {**event, "node_id": self.node_id, "tier": "edge"}
            yield event

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request, one result (no per-token messages): what the Gateway uses for unary calls."""
        from edgefleet.platform.engine import GenRequest

        result = await self.engine.complete(GenRequest(**request))
        return {**result, "node_id": self.node_id, "tier": "edge"} if result["type"] == "end" else result

    async def generate(self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0) -> dict[str, Any]:
        """Whole completion for a plain prompt: a convenience for scripts and the demo."""
        import time
        import uuid

        started = time.perf_counter()
        request = {"request_id": uuid.uuid4().hex, "messages": [{"role": "user", "content": prompt}],
                   "max_new_tokens": max_new_tokens, "temperature": temperature}  # fmt: skip
        last: dict[str, Any] = {}
        async for event in self.generate_stream(request):
            last = event
        if last.get("type") == "error":
            raise ValueError(last["message"])
        return {"text": last["text"], "node_id": self.node_id, "seconds": time.perf_counter() - started,
                "finish_reason": last["finish_reason"]}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "node_id": self.node_id, "tier": "edge"}

    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it serves; the labels are read from the raylet itself."""
        import ray

        loaded = self.engine.loaded
        return {
            "node_id": self.node_id,
            "node_labels": dict(ray.get_runtime_context().get_node_labels()),
            "model": loaded.name,
            "model_version": loaded.version,
            "quantization": loaded.quantization,
            "parameters": loaded.num_parameters,
            "load_seconds": loaded.load_seconds,
        }

    async def swap_model(self, spec: ModelSpec) -> str:
        """Load ``spec`` beside the current model, then switch; running requests finish on the old one."""
        from edgefleet.platform.models import load_model

        return await self.engine.swap_with(partial(load_model, spec, cache_dir=self.cache_dir))

    def drain(self, draining: bool = True) -> None:
        """Refuse new requests (UNAVAILABLE) while the running ones finish; ``False`` undoes it."""
        self.engine.draining = draining


def spawn_edge_node(node: EdgeNodeConfig, *, cache_dir: Path | None = None, max_restarts: int = 3,
                    name: str | None = None) -> Any:  # fmt: skip
    """Start the EdgeNode actor for ``node`` on the raylet labelled with its id; returns the handle.

    The call returns at once; ``ray.get(handle.info.remote())`` waits until the model is loaded.
    """
    import ray

    return (
        ray.remote(EdgeNode)
        .options(
            name=name or actor_name(node.id),  # the Gateway finds edge nodes by this name
            namespace=ACTOR_NAMESPACE,
            label_selector=node_selector(node.id),
            num_cpus=node.actor_cpus,
            max_restarts=max_restarts,
            max_concurrency=256,  # an async actor: requests wait in the engine's batcher, not in Ray
        )
        .remote(node.id, node.model, str(cache_dir) if cache_dir else None, node.batching)
    )
