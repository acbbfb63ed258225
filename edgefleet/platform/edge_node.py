"""The EdgeNode actor: one per edge node, pinned there by label, holding that node's model.

It loads its model when it starts, so a restarted actor (``max_restarts``) comes back serving.
This is the foundation version: one request at a time, whole completions. Batching, streaming
and the Gateway in front of it belong to the request path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgefleet.config import EdgeNodeConfig, ModelSpec
from edgefleet.platform.topology import node_selector

ACTOR_NAMESPACE = "edgefleet"


def actor_name(node_id: str) -> str:
    return f"edge-node/{node_id}"


class EdgeNode:
    """Serves one edge node's model. Construct through :func:`spawn_edge_node`, not directly."""

    def __init__(self, node_id: str, spec: ModelSpec, cache_dir: str | None) -> None:
        from edgefleet.platform.models import load_model

        self.node_id = node_id
        self.loaded = load_model(spec, cache_dir=Path(cache_dir) if cache_dir else None)

    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it serves; the labels are read from the raylet itself."""
        import ray

        return {
            "node_id": self.node_id,
            "node_labels": dict(ray.get_runtime_context().get_node_labels()),
            "model": self.loaded.name,
            "model_version": self.loaded.version,
            "quantization": self.loaded.quantization,
            "parameters": self.loaded.num_parameters,
            "load_seconds": self.loaded.load_seconds,
        }

    def generate(self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0) -> dict[str, Any]:
        from edgefleet.platform.models import generate

        started = time.perf_counter()
        text = generate(self.loaded, prompt, max_new_tokens=max_new_tokens, temperature=temperature)
        return {"text": text, "node_id": self.node_id, "seconds": time.perf_counter() - started}


def spawn_edge_node(node: EdgeNodeConfig, *, cache_dir: Path | None = None, max_restarts: int = 3) -> Any:
    """Start the EdgeNode actor for ``node`` on the raylet labelled with its id; returns the handle.

    The call returns at once; ``ray.get(handle.info.remote())`` waits until the model is loaded.
    """
    import ray

    return (
        ray.remote(EdgeNode)
        .options(
            name=actor_name(node.id),
            namespace=ACTOR_NAMESPACE,
            label_selector=node_selector(node.id),
            num_cpus=node.actor_cpus,
            max_restarts=max_restarts,
            lifetime=None,  # owned by the driver: it goes when the fleet goes
        )
        .remote(node.id, node.model, str(cache_dir) if cache_dir else None)
    )
