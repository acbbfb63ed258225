"""The EdgeNode actor: one per edge node, pinned there by label, serving that node's model.

A thin Ray wrapper around :class:`GenerationEngine` (dynamic batching, token streaming, live
stats, live model swap). It loads its model in the constructor, so an actor that Ray restarts
(``max_restarts``) comes back serving. Tokens leave through a Ray streaming generator:

    async for ref in actor.generate_stream.options(num_returns="streaming").remote(request):  # a GenRequest
        event = await ref  # an edgefleet.platform.events event
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.config import BatchingConfig, EdgeNodeConfig, FeedbackConfig, ModelSpec
from edgefleet.platform.events import EngineEvent, Failed
from edgefleet.platform.feedback import FEEDBACK_FILE, Answer, FeedbackStore, Rating, RecentAnswers, Tally
from edgefleet.platform.model_server import ModelServer
from edgefleet.platform.topology import node_selector

if TYPE_CHECKING:
    from edgefleet.platform.engine import GenRequest

ACTOR_NAMESPACE = "edgefleet"


def actor_name(node_id: str, app: str = "edgefleet") -> str:
    return f"edge-node/{node_id}" if app == "edgefleet" else f"{app}/edge-node/{node_id}"


@dataclass(frozen=True)
class NodeInfo:
    """Where an EdgeNode runs and what it serves (``EdgeNode.info``)."""

    node_id: str
    pid: int
    node_labels: dict[str, str]  # read from the raylet the actor runs on
    model: str
    model_version: str  # "...+adapter:<name>" when an adapter is merged (see convergence.served_version)
    quantization: str
    parameters: int
    load_seconds: float
    spec: ModelSpec  # what it was last told to load


@dataclass(frozen=True)
class NodeAnswer:
    """``EdgeNode.generate``'s whole completion of a plain prompt."""

    text: str
    node_id: str
    seconds: float  # in the engine
    finish_reason: str


def node_info(answer: Any) -> NodeInfo:
    """``EdgeNode.info()``'s answer as a NodeInfo, also from a detached actor an earlier release
    started (it answers a dict) and that a redeploy or a reconciler meets after an upgrade."""
    if isinstance(answer, NodeInfo):
        return answer
    fields = {k: answer[k] for k in NodeInfo.__dataclass_fields__ if k in answer}
    return NodeInfo(**{**fields, "spec": ModelSpec.model_validate(answer["spec"])})


class EdgeNode(ModelServer):
    """Serves one edge node's model. Construct through :func:`spawn_edge_node`, not directly."""

    tier = "edge"

    def __init__(
        self,
        node_id: str,
        spec: ModelSpec,
        cache_dir: str | None,
        batching: BatchingConfig | None = None,
        data_dir: str | None = None,
        feedback: FeedbackConfig | None = None,
    ) -> None:
        super().__init__(node_id, spec, cache_dir, batching)
        fb = feedback or FeedbackConfig()
        self.recent = RecentAnswers(fb.keep_answers_s, fb.max_answers, fb.max_answer_bytes)
        # Feedback lives on this node's disk, beside its training data; a restarted actor keeps it.
        self.feedback_store = None
        if data_dir:
            try:
                self.feedback_store = FeedbackStore(
                    Path(data_dir) / FEEDBACK_FILE, retention_days=fb.retention_days, max_rows=fb.max_rows
                )
            except Exception as exc:  # noqa: BLE001 - e.g. a read-only data_dir: serve anyway, without feedback
                import logging

                logging.getLogger(__name__).warning("%s: no feedback store (%s)", node_id, exc)

    def remember(self, answer: Answer) -> None:
        """Keep an answer this node is home to (it served it, or it serves the request's site) so
        that its user's feedback can be joined to it later."""
        if self.feedback_store is not None:
            self.recent.add(answer)

    async def feedback(self, request_id: str, rating: Rating, caller: str = "anonymous") -> bool:
        """Store ``rating`` of the answer ``request_id`` on this node's disk; False: this node does
        not hold that answer for ``caller`` (not its own, someone else's, or expired)."""
        import asyncio
        import time

        answer = self.recent.get(request_id, time.time(), caller)
        if answer is None or self.feedback_store is None:
            return False
        # fsync and pruning off the event loop: this actor's token streams must not wait for the disk
        await asyncio.to_thread(self.feedback_store.add, answer, rating)
        return True

    async def feedback_tally(self, since: float) -> dict[str, Tally]:
        """Counts only, by the model version that served the rated answer: no text leaves the node."""
        import asyncio
        import sqlite3

        if self.feedback_store is None:
            return {}
        try:
            return await asyncio.to_thread(self.feedback_store.tally, since)
        except sqlite3.Error:  # a damaged or removed store: no counts, serving goes on
            return {}

    async def generate_stream(self, request: GenRequest) -> AsyncIterator[EngineEvent]:
        """Events of one request, streamed through Ray's streaming generator."""
        async for event in self.stream(request):
            yield event

    async def generate(self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0) -> NodeAnswer:
        """Whole completion for a plain prompt: a convenience for scripts and checks."""
        import uuid

        from edgefleet.platform.engine import GenRequest

        chat = [{"role": "user", "content": prompt}]
        result = await self.complete(GenRequest(uuid.uuid4().hex, chat, max_new_tokens, temperature, stream=False))
        if isinstance(result, Failed):
            raise ValueError(result.message)
        return NodeAnswer(result.finished.text, self.node_id, result.engine_ms / 1000, result.finished.finish_reason)

    def info(self) -> NodeInfo:
        """Where this actor runs and what it serves; the labels are read from the raylet itself."""
        import os

        import ray

        loaded = self.engine.loaded
        return NodeInfo(
            node_id=self.node_id,
            pid=os.getpid(),
            node_labels=dict(ray.get_runtime_context().get_node_labels()),
            model=loaded.name,
            model_version=loaded.version,
            quantization=loaded.quantization,
            parameters=loaded.num_parameters,
            load_seconds=loaded.load_seconds,
            spec=self.spec,
        )


def data_dir_of(node: EdgeNodeConfig, cache_dir: Path | None) -> Path:
    """The node's private data directory: its training data and its users' feedback."""
    if node.data_dir is not None:
        return node.data_dir
    if cache_dir is None:
        raise ValueError(f"node {node.id} has no data_dir and there is no cache dir to put one in")
    return Path(cache_dir) / "data" / node.id


def spawn_edge_node(
    node: EdgeNodeConfig,
    *,
    cache_dir: Path | None = None,
    max_restarts: int = 3,
    name: str | None = None,
    app: str = "edgefleet",
    detached: bool = False,
    feedback: FeedbackConfig | None = None,
) -> Any:
    """Start the EdgeNode actor for ``node`` on the raylet labelled with its id; returns the handle.

    The call returns at once; ``ray.get(handle.info.remote())`` waits until the model is loaded.
    ``detached``: the actor outlives the process that made it (a Serve config deploys the app with
    no driver of ours to own it); an existing actor of that name is reused.
    """
    import ray

    return (
        ray.remote(EdgeNode)
        .options(
            name=name or actor_name(node.id, app),  # the Gateway finds edge nodes by this name
            namespace=ACTOR_NAMESPACE,
            label_selector=node_selector(node.id),
            num_cpus=node.actor_cpus,
            max_restarts=max_restarts,
            max_concurrency=256,  # an async actor: requests wait in the engine's batcher, not in Ray
            **({"lifetime": "detached", "get_if_exists": True} if detached else {}),
        )
        .remote(
            node.id,
            node.model,
            str(cache_dir) if cache_dir else None,
            node.batching,
            str(data_dir_of(node, cache_dir)) if cache_dir or node.data_dir else None,
            feedback,
        )
    )
