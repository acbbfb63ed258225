"""The Gateway: Serve ingress for gRPC ``InferenceService`` and OpenAI-compatible HTTP.

It authenticates the caller, charges the rate limit, validates the request, and hands it to the
Dispatcher (``serve/dispatch.py``: route, hedge, fail over), then answers with the typed result
(``serve/events.py``) as a proto or as OpenAI JSON / SSE. A failed request leaves with one status,
counted once (``serve/failures.py``). Answers wait for feedback on their home edge node
(``serve/feedback_relay.py``).
"""

# No `from __future__ import annotations`: Serve pickles this class by value, and FastAPI must
# still resolve the request-body annotations in the replica, so they stay real objects.

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from edgefleet import metrics
from edgefleet._proto import inference_pb2 as pb
from edgefleet.config import EdgefleetConfig
from edgefleet.platform.events import Delta
from edgefleet.platform.network import SimulatedWan
from edgefleet.security import digest, matches
from edgefleet.serve import openai_http
from edgefleet.serve.dispatch import Dispatcher
from edgefleet.serve.events import GenerateResult
from edgefleet.serve.failures import as_request_error, counted_failure, for_item
from edgefleet.serve.feedback_relay import FeedbackRelay
from edgefleet.serve.fleet_tracker import FleetTracker, RecentOutcomes, TargetStatus
from edgefleet.serve.openai_http import (
    DOCUMENTED_RESPONSES,
    FEEDBACK_RESPONSES,
    ChatBody,
    CompletionBody,
    FeedbackBody,
    ModelCard,
    ModelList,
    chat_messages,
    error_response,
    full_response,
    prompts,
    sse_stream,
)
from edgefleet.serve.quotas import RateLimiter
from edgefleet.serve.router import ResidualTracker, Router, make_router
from edgefleet.serve.stats_poller import StatsPoller
from edgefleet.serve.targets import Targets
from edgefleet.serve.validation import (
    REQUEST_ID,
    RateLimited,
    RequestError,
    Validated,
    invalid,
    validate,
    validate_proto,
)
from edgefleet.serve.wire import bearer_from_grpc, bearer_from_http, set_grpc_status

app = FastAPI(title="edgefleet", description="OpenAI-compatible API of the edgefleet Gateway")
openai_http.install(app)


# Helpers come before the class: @serve.deployment pickles the class at import, with the globals
# that exist at that moment.


async def _result_of(events: AsyncIterator[Delta | GenerateResult]) -> GenerateResult:
    # Drained to the end, not left at the result: the dispatcher's accounting (finish, the breaker
    # count) runs after its last event, and must run before the reply, not at garbage collection.
    result = None
    async for event in events:
        if isinstance(event, GenerateResult):
            result = event
    if result is not None:
        return result
    raise RequestError(grpc.StatusCode.INTERNAL, "the target closed the stream without a final event")


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(app)
class Gateway:
    def __init__(self, config: dict[str, Any], cloud: Any, router: Router | None = None) -> None:
        self.cfg = EdgefleetConfig.model_validate(config)
        self.token_hashes = frozenset(self.cfg.auth.tokens)  # digests only: see edgefleet.security
        limit = self.cfg.auth.rate_limit
        self.limiter = RateLimiter(rate=limit.requests_per_s, burst=limit.burst) if limit else None
        margins = ResidualTracker()
        router = router or make_router(self.cfg.routing.policy, cost_order=self.cfg.routing.cost_order, margins=margins)
        profiles = {n.id: n.network for n in self.cfg.fleet.edge_nodes}
        profiles[self.cfg.fleet.cloud.id] = self.cfg.fleet.cloud.network
        # One machine (no ray.address): no real WAN, so inject the configured one; a real cluster: none.
        wan = SimulatedWan(profiles, enabled=self.cfg.ray.address is None)
        self.fleet = FleetTracker(self.cfg, {t: wan.rtt_ms(t) for t in profiles})
        self.targets = Targets(self.cfg, cloud, self.fleet)
        self.poller = StatsPoller(self.targets.refresh_all)
        self.dispatcher = Dispatcher(
            self.cfg, targets=self.targets, router=router, margins=margins, wan=wan, poller=self.poller
        )
        self.feedback_relay = FeedbackRelay(self.cfg, self.targets)
        self.recent = RecentOutcomes(window_s=60.0)
        self.started = int(time.time())  # /v1/models' `created`

    # ------------------------------------------------------------------ gRPC

    async def Generate(self, request: pb.GenerateRequest, grpc_context=None) -> pb.GenerateResponse:  # noqa: N802
        try:
            caller = self._caller(bearer_from_grpc(grpc_context))
            v = dataclasses.replace(validate_proto(request, self.cfg), caller=caller)
            result = await _result_of(self.run(v, arrived=time.perf_counter(), stream=False))
            return result.to_proto()
        except Exception as exc:  # noqa: BLE001 - every failure leaves with a status, never UNKNOWN
            set_grpc_status(grpc_context, counted_failure(exc))  # a unary call can end quietly with the code set
            return pb.GenerateResponse()

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context=None):  # noqa: N802
        try:
            caller = self._caller(bearer_from_grpc(grpc_context))
            index = 0
            v = dataclasses.replace(validate_proto(request, self.cfg), caller=caller)
            async for event in self.run(v, arrived=time.perf_counter()):
                if isinstance(event, Delta):
                    yield pb.GenerateChunk(request_id=v.request_id, text=event.text, index=index)
                    index += 1
                else:
                    yield pb.GenerateChunk(request_id=v.request_id, index=index, final=True, summary=event.to_proto())
        except Exception as exc:  # noqa: BLE001
            err = counted_failure(exc)
            set_grpc_status(grpc_context, err)
            raise err from None  # a stream that just ends reports OK; raising makes Serve send the code

    async def Feedback(self, request: pb.FeedbackRequest, grpc_context=None) -> pb.FeedbackResponse:  # noqa: N802
        try:
            caller = self._caller(bearer_from_grpc(grpc_context))
            if not isinstance(request, pb.FeedbackRequest):  # bytes the proxy could not decode
                raise invalid("request", f"body is not an edgefleet.v1.FeedbackRequest: {request.reason}")
            good = {pb.RATING_GOOD: True, pb.RATING_BAD: False}.get(request.rating)
            node = await self.feedback_relay.rate(request.request_id, good, request.correction, caller)
            return pb.FeedbackResponse(request_id=request.request_id, node_id=node)
        except Exception as exc:  # noqa: BLE001
            set_grpc_status(grpc_context, as_request_error(exc))
            return pb.FeedbackResponse()

    # ------------------------------------------------------------------ OpenAI-compatible HTTP

    @app.post("/v1/feedback", responses=FEEDBACK_RESPONSES)
    async def feedback(self, body: FeedbackBody, authorization: str | None = Header(default=None)):
        """Rate an answer by its completion ``id``, optionally with the answer it should have been."""
        try:
            caller = self._caller(bearer_from_http(authorization))
            node = await self.feedback_relay.rate(body.id, body.rating == "good", body.correction or "", caller)
        except Exception as exc:  # noqa: BLE001
            return error_response(as_request_error(exc))
        return {"id": body.id, "node_id": node}

    @app.post("/v1/chat/completions", responses=DOCUMENTED_RESPONSES)
    async def chat_completions(
        self, body: ChatBody, request: Request, authorization: str | None = Header(default=None)
    ):
        return await self._http("chat", body, request, authorization)

    @app.post("/v1/completions", responses=DOCUMENTED_RESPONSES)
    async def completions(
        self, body: CompletionBody, request: Request, authorization: str | None = Header(default=None)
    ):
        return await self._http("text", body, request, authorization)

    @app.get("/v1/models")
    async def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id="edgefleet", created=self.started, owned_by="edgefleet")])

    async def _http(self, kind, body, request, authorization):
        arrived = time.perf_counter()
        # Serve's proxy answers with the request's x-request-id (the caller's, or a fresh UUID it put in
        # the request): as the completion id too, header and body name one request. A caller that
        # sends its own x-request-id chooses the id, so ids are unique only as far as callers' are.
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            caller = self._authenticate(bearer_from_http(authorization))
            if not REQUEST_ID.fullmatch(rid):  # it becomes the completion's id, in logs and metrics tags
                raise invalid("x-request-id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
            if kind == "chat":
                inputs = [(None, chat_messages(body.messages), None)]
            else:  # one request per prompt; those of a list are named by index in errors: prompt[1]
                listed = isinstance(body.prompt, list)
                inputs = [(p, None, i if listed else None) for i, p in enumerate(prompts(body.prompt))]
            if body.stream and len(inputs) > 1:
                raise invalid("stream", f"a list of {len(inputs)} prompts cannot be streamed: send one per request")
            self._charge(caller, cost=len(inputs))  # a list of n prompts is n generations
            vs = [
                dataclasses.replace(
                    self._validated(body, rid if len(inputs) == 1 else f"{rid}-{i}", prompt, messages, item),
                    caller=caller,
                )
                for i, (prompt, messages, item) in enumerate(inputs)
            ]
            if not body.stream:
                tasks = [
                    asyncio.ensure_future(self._answer(v, arrived, item))
                    for v, (*_, item) in zip(vs, inputs, strict=True)
                ]
                try:
                    ends = await asyncio.gather(*tasks)
                finally:
                    for task in tasks:  # one prompt failed: the others' answers are no use now
                        task.cancel()
                return JSONResponse(full_response(kind, rid, ends))
            events = self.run(vs[0], arrived=arrived)
            first = await anext(events)  # fail before the 200 is sent: errors still get their status
        except Exception as exc:  # noqa: BLE001
            return error_response(counted_failure(exc))
        return StreamingResponse(sse_stream(kind, rid, body.model, first, events), media_type="text/event-stream")

    def _validated(self, body, rid: str, prompt: str | None, messages, item: int | None) -> Validated:
        try:
            return validate(
                prompt=prompt,
                messages=messages,
                max_new_tokens=body.limit(),
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
                stop=body.stops(),
                deadline_ms=body.deadline_ms,
                route=body.route,
                site=body.site,
                priority="normal",
                request_id=rid,
                cfg=self.cfg,
                mode=body.mode,
                fit_context_cap=self.cfg.ingress.default_max_tokens_cap,
            )
        except RequestError as err:
            raise for_item(err, item) from None

    async def _answer(self, v: Validated, arrived: float, item: int | None) -> GenerateResult:
        """The result of one unary request."""
        try:
            return await _result_of(self.run(v, arrived=arrived, stream=False))
        except RequestError as err:
            raise for_item(err, item) from None

    # ------------------------------------------------------------------ the one request path

    async def run(self, v: Validated, *, arrived: float, stream: bool = True) -> AsyncIterator[Delta | GenerateResult]:
        """One validated request through the Dispatcher: its deltas, then its result.

        A request that ends with an answer is counted here; one that fails is counted where its
        status is set (:func:`counted_failure`), so validation errors count too.
        """
        ended = False
        clock = metrics.TokenClock()  # inter-token latency, as the chunks leave for the client
        try:
            # aclosing: when the caller stops early, the dispatch's cleanup (finish, cancel) runs at once, not at GC
            async with contextlib.aclosing(self.dispatcher.run(v, arrived=arrived, stream=stream)) as events:
                async for event in events:
                    if isinstance(event, Delta):
                        clock.chunk(event.tokens)
                    else:
                        ended = True
                        metrics.request_served(event, v.deadline_ms, clock)
                        self.feedback_relay.remember(v, event)
                        self.recent.record(
                            event.node_id, event.completion_tokens, event.sla_met if v.deadline_ms else None
                        )
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            if not ended:  # the caller left (deadline, disconnect) before the answer was complete
                metrics.request_failed("cancelled")
            raise

    async def fleet_status(self) -> tuple[TargetStatus, ...]:
        """This replica's live view of every target (what ``edgefleet status`` shows per node)."""
        await self.poller.on_request()
        if not self.fleet.healthy:  # nothing heard yet: ask every target once instead of guessing
            await self.targets.refresh_all()
        return self.fleet.status(self.recent)

    # ------------------------------------------------------------------ auth and quotas

    def _caller(self, token: str | None) -> str:
        """Authorize (token and rate limit) and name the caller: whose answers they may rate."""
        caller = self._authenticate(token)
        self._charge(caller, cost=1)
        return caller

    def _authenticate(self, token: str | None) -> str:
        """The caller's rate-limit key for a valid bearer token (only known callers get a bucket)."""
        if self.token_hashes and not matches(token, self.token_hashes):
            raise RequestError(
                grpc.StatusCode.UNAUTHENTICATED, "missing bearer token" if not token else "invalid bearer token"
            )
        return digest(token) if token and self.token_hashes else "anonymous"  # never the token itself

    def _charge(self, caller: str, *, cost: int) -> None:
        if self.limiter is None:
            return
        if cost > self.limiter.burst:  # it could never be allowed: waiting would not help
            raise invalid("prompt", f"{cost} prompts exceed the rate limit's burst of {self.limiter.burst:g}")
        retry_after_s = self.limiter.take(caller, time.monotonic(), cost=cost)
        if retry_after_s is not None:
            raise RateLimited(self.cfg.auth.rate_limit.requests_per_s, retry_after_s)
