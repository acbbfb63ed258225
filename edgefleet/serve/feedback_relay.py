"""Where a served answer waits for its user's feedback, and how a rating finds it.

An answer is handed to its home, the edge node of the caller's site (else the edge node that
served it), and kept there, never here. A rating goes to the node this replica remembers as the
answer's home; another replica (or this one after a restart) asks every edge node, and only the
one holding the answer stores it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import grpc
import ray

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.feedback import Answer, Rating
from edgefleet.serve.events import GenerateResult
from edgefleet.serve.targets import RETRYABLE, Targets
from edgefleet.serve.validation import RequestError, Validated, validate_feedback


class _Homes:
    """request id → the edge node that keeps its answer, the newest ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self._nodes = capacity, OrderedDict()

    def put(self, request_id: str, node: str) -> None:
        self._nodes[request_id] = node
        self._nodes.move_to_end(request_id)
        while len(self._nodes) > self.capacity:
            self._nodes.popitem(last=False)

    def get(self, request_id: str) -> str | None:
        return self._nodes.get(request_id)


class FeedbackRelay:
    def __init__(self, cfg: EdgefleetConfig, targets: Targets) -> None:
        self.cfg, self.targets = cfg, targets
        self.site_nodes: dict[str, str] = {}  # a site's edge node: where its users' answers and feedback are kept
        for n in cfg.fleet.edge_nodes:
            self.site_nodes.setdefault(n.site, n.id)
        self.homes = _Homes(capacity=cfg.feedback.max_answers)  # request id → node that keeps it

    def _home(self, v: Validated, result: GenerateResult) -> str | None:
        """The edge node of the caller's site, else the edge node that served it; a cloud answer
        with no site has no home."""
        return self.site_nodes.get(v.site) or (result.node_id if result.tier == "edge" else None)

    def remember(self, v: Validated, result: GenerateResult) -> None:
        """Hand the answer to its home node, to wait there for its user's feedback."""
        home = self._home(v, result)
        if home is None:
            return
        question = next((m["content"] for m in reversed(v.messages) if m["role"] == "user"), "")
        answer = Answer(
            v.request_id, v.site or home, question, result.text.strip(), result.model_version, time.time(), v.caller
        )
        self.homes.put(v.request_id, home)
        try:  # fire and forget: the answer is already the caller's, keeping it must not delay it
            self.targets.actor(home).remember.options(enable_task_events=False).remote(answer)
        except Exception:  # noqa: BLE001 - a home node that is down loses this answer's feedback only
            self.targets.forget(home)

    async def rate(self, request_id: str, good: bool | None, correction: str, caller: str) -> str:
        """Store a rating on the node that keeps the answer; returns that node's id.

        Raises:
            RequestError: INVALID_ARGUMENT, NOT_FOUND (no node keeps it), UNAVAILABLE (a node that
                may keep it did not answer).
        """
        rating = validate_feedback(request_id, good, correction, self.cfg)
        everyone = [n.id for n in self.cfg.fleet.edge_nodes]
        hinted = self.homes.get(request_id)
        nodes = [hinted] if hinted else everyone
        unreachable = []
        for attempt in range(2):
            calls = {n: self._store(n, request_id, rating, caller) for n in nodes}
            results = await asyncio.gather(*calls.values())
            for node, stored in zip(calls, results, strict=True):
                if stored is True:
                    return node
                if stored is None:
                    unreachable.append(node)
            if attempt == 0 and hinted:  # the hint was stale (a restarted node): ask everyone once
                nodes = [n for n in everyone if n != hinted]
                continue
            break
        if unreachable:  # it may be there: a retry can find it, a 404 would be a lie
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, f"edge node(s) {', '.join(unreachable)} did not answer; retry"
            )
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"request_id: no edge node keeps an answer {request_id!r} (unknown, older than "
            f"feedback.keep_answers_s={self.cfg.feedback.keep_answers_s:g}, or served by the cloud with no site)",
            "request_id",
        )

    async def _store(self, node: str, request_id: str, rating: Rating, caller: str) -> bool | None:
        """Whether ``node`` stored it; None: the node did not answer (down, restarting, slow)."""
        try:
            call = self.targets.actor(node).feedback.remote(request_id, rating, caller)
            return await asyncio.wait_for(call, timeout=10.0)
        except (*RETRYABLE, ray.exceptions.RayTaskError):
            self.targets.forget(node)
            return None
        except Exception:  # noqa: BLE001 - a timeout: the handle is still good
            return None
