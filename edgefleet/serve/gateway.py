"""The Gateway: Serve ingress for gRPC ``InferenceService`` and OpenAI-compatible HTTP.

Every request takes one path: validate → ask the Router for a Decision on the live FleetView →
stream from the chosen EdgeNode actor or the Cloud deployment → time it and report where it ran.
A target that fails before its first token is replaced by the Decision's next fallback; after
the first token a failure ends the stream (tokens already sent cannot be taken back).
"""

# No `from __future__ import annotations`: Serve pickles this class by value, and FastAPI must
# still resolve the request-body annotations in the replica, so they stay real objects.

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
import ray
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from edgefleet import metrics
from edgefleet._proto import inference_pb2 as pb
from edgefleet.config import EdgefleetConfig
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name
from edgefleet.platform.feedback import Answer
from edgefleet.platform.network import SimulatedLoss, SimulatedWan
from edgefleet.security import digest, matches
from edgefleet.serve import openai_http
from edgefleet.serve.fleet_tracker import FleetTracker, RecentOutcomes
from edgefleet.serve.hedge_race import race
from edgefleet.serve.hedging import HedgeBudget, plan_hedge
from edgefleet.serve.openai_http import (
    DOCUMENTED_RESPONSES,
    FEEDBACK_RESPONSES,
    SSE_DONE,
    ChatBody,
    CompletionBody,
    FeedbackBody,
    ModelCard,
    ModelList,
    chat_messages,
    error_response,
    full_response,
    prompts,
    sse_chunk,
)
from edgefleet.serve.quotas import RateLimiter
from edgefleet.serve.router import (
    DeadlineInfeasible,
    Decision,
    FleetView,
    NoTargetError,
    ResidualTracker,
    Router,
    RouteRequest,
    make_router,
)
from edgefleet.serve.stats_poller import StatsPoller
from edgefleet.serve.validation import (
    REQUEST_ID,
    RETRY_AFTER_MS,
    RateLimited,
    RequestError,
    Validated,
    invalid,
    planned_tokens,
    validate,
    validate_feedback,
    validate_proto,
)


class LookupGone(Exception):
    """An EdgeNode actor name that no longer resolves (the actor is gone for good)."""


# Failures of a target (not of the request) that another target may not share: fail over.
RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, BackPressureError, LookupGone)

app = FastAPI(title="edgefleet", description="OpenAI-compatible API of the edgefleet Gateway")
openai_http.install(app)


# Helpers come before the class: @serve.deployment pickles the class at import, with the globals
# that exist at that moment.


class _Homes:
    """request id → the edge node that keeps its answer, the newest ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        from collections import OrderedDict

        self.capacity, self._nodes = capacity, OrderedDict()

    def put(self, request_id: str, node: str) -> None:
        self._nodes[request_id] = node
        self._nodes.move_to_end(request_id)
        while len(self._nodes) > self.capacity:
            self._nodes.popitem(last=False)

    def get(self, request_id: str) -> str | None:
        return self._nodes.get(request_id)


class _Unavailable(Exception):
    """A target refused before sending anything (e.g. draining): try the next one."""


def _as_request_error(exc: Exception) -> RequestError:
    if isinstance(exc, RequestError):
        return exc
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


# Codes that mean "refused" (the request, its caller or the fleet's capacity), not "broke".
_REJECTED = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.UNAVAILABLE: "no_target",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
}


def _for_item(err: RequestError, item: int | None) -> RequestError:
    """An error about one prompt of a list names that prompt (``prompt[1]``), not the whole field."""
    if item is None or err.param != "prompt":
        return err
    return RequestError(err.code, f"prompt[{item}]{err.message.removeprefix('prompt')}", f"prompt[{item}]")


def _broken(err: RequestError) -> RequestError:
    err.broken = True  # the fleet failed an accepted request: an error, not a refusal
    return err


def _counted_failure(exc: Exception) -> RequestError:
    """The status a failed request leaves with, counted in the request metrics by outcome and reason."""
    err = _as_request_error(exc)
    if err.code in _REJECTED and not getattr(err, "broken", False):
        infeasible = err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.param == "deadline_ms"
        reason = (
            "deadline_infeasible"
            if infeasible
            else "rate_limited"
            if isinstance(err, RateLimited)
            else _REJECTED[err.code]
        )
        metrics.request_failed("rejected", reason)
    else:
        metrics.request_failed("error")
    return err


def _bearer_from_http(authorization: str | None) -> str | None:
    return (authorization or "").removeprefix("Bearer ").strip() or None


def _bearer_from_grpc(ctx: Any) -> str | None:
    if ctx is None:
        return None
    for key, value in ctx.invocation_metadata():
        if key.lower() == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def _set_status(ctx: Any, err: RequestError) -> None:
    if ctx is not None:
        ctx.set_code(err.code)
        ctx.set_details(err.message)
        if isinstance(err, RateLimited):  # machine-readable retry hint; the SDK reads it
            ctx.set_trailing_metadata([(RETRY_AFTER_MS, str(err.retry_after_ms))])


_FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
_TIER = {"edge": pb.TIER_EDGE, "cloud": pb.TIER_CLOUD}


def _to_response(e: dict[str, Any] | None) -> pb.GenerateResponse:
    if e is None:
        raise RequestError(grpc.StatusCode.INTERNAL, "the target closed the stream without a final event")
    return pb.GenerateResponse(
        request_id=e["request_id"],
        text=e["text"],
        usage=pb.Usage(prompt_tokens=e["prompt_tokens"], completion_tokens=e["completion_tokens"]),
        served_by=pb.ServedBy(tier=_TIER.get(e["tier"], pb.TIER_UNSPECIFIED), node_id=e["node_id"]),
        model_name=e["model"],
        model_version=e["model_version"],
        timings=pb.Timings(queue_ms=e["queue_ms"], ttft_ms=e["ttft_ms"], total_ms=e["total_ms"]),
        sla_met=e["sla_met"],
        finish_reason=_FINISH.get(e["finish_reason"], pb.FINISH_REASON_UNSPECIFIED),
        route_reason=e["route_reason"],
        predicted_ms=e["predicted_ms"],
        network_simulated=e["network_simulated"],
    )


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(app)
class Gateway:
    def __init__(self, config: dict[str, Any], cloud: Any, router: Router | None = None) -> None:
        self.cfg = EdgefleetConfig.model_validate(config)
        self.token_hashes = frozenset(self.cfg.auth.tokens)  # digests only: see edgefleet.security
        limit = self.cfg.auth.rate_limit
        self.limiter = RateLimiter(rate=limit.requests_per_s, burst=limit.burst) if limit else None
        self.cloud = cloud
        self.margins = ResidualTracker()
        self.router = router or make_router(
            self.cfg.routing.policy, cost_order=self.cfg.routing.cost_order, margins=self.margins
        )
        profiles = {n.id: n.network for n in self.cfg.fleet.edge_nodes}
        profiles[self.cfg.fleet.cloud.id] = self.cfg.fleet.cloud.network
        # One machine (no ray.address): no real WAN, so inject the configured one; a real cluster: none.
        self.wan = SimulatedWan(profiles, enabled=self.cfg.ray.address is None)
        self.fleet = FleetTracker(self.cfg, {t: self.wan.rtt_ms(t) for t in profiles})
        self.handles: dict[str, Any] = {}  # EdgeNode actor handles by node id
        self.hedges = HedgeBudget(share=0.05)  # at most 5% of requests get a hedge
        self.recent = RecentOutcomes(window_s=60.0)
        self.started = int(time.time())  # /v1/models' `created`
        self.poller = StatsPoller(self._refresh_all)
        self.site_nodes = {}  # a site's edge node: where its users' answers and feedback are kept
        for n in self.cfg.fleet.edge_nodes:
            self.site_nodes.setdefault(n.site, n.id)
        self.homes = _Homes(capacity=self.cfg.feedback.max_answers)  # request id → node that keeps it

    # ------------------------------------------------------------------ gRPC

    async def Generate(self, request: pb.GenerateRequest, grpc_context=None) -> pb.GenerateResponse:  # noqa: N802
        try:
            caller = self._caller(_bearer_from_grpc(grpc_context))
            summary = None
            v = dataclasses.replace(validate_proto(request, self.cfg), caller=caller)
            async for event in self.run(v, arrived=time.perf_counter(), stream=False):
                if event["type"] == "end":
                    summary = event
            return _to_response(summary)
        except Exception as exc:  # noqa: BLE001 - every failure leaves with a status, never UNKNOWN
            _set_status(grpc_context, _counted_failure(exc))  # a unary call can end quietly with the code set
            return pb.GenerateResponse()

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context=None):  # noqa: N802
        try:
            caller = self._caller(_bearer_from_grpc(grpc_context))
            index = 0
            v = dataclasses.replace(validate_proto(request, self.cfg), caller=caller)
            async for event in self.run(v, arrived=time.perf_counter()):
                if event["type"] == "delta":
                    yield pb.GenerateChunk(request_id=v.request_id, text=event["text"], index=index)
                    index += 1
                elif event["type"] == "end":
                    yield pb.GenerateChunk(
                        request_id=v.request_id, index=index, final=True, summary=_to_response(event)
                    )
        except Exception as exc:  # noqa: BLE001
            err = _counted_failure(exc)
            _set_status(grpc_context, err)
            raise err from None  # a stream that just ends reports OK; raising makes Serve send the code

    async def Feedback(self, request: pb.FeedbackRequest, grpc_context=None) -> pb.FeedbackResponse:  # noqa: N802
        try:
            caller = self._caller(_bearer_from_grpc(grpc_context))
            if not isinstance(request, pb.FeedbackRequest):  # bytes the proxy could not decode
                raise invalid("request", f"body is not an edgefleet.v1.FeedbackRequest: {request.reason}")
            good = {pb.RATING_GOOD: True, pb.RATING_BAD: False}.get(request.rating)
            node = await self._feedback(request.request_id, good, request.correction, caller)
            return pb.FeedbackResponse(request_id=request.request_id, node_id=node)
        except Exception as exc:  # noqa: BLE001
            _set_status(grpc_context, _as_request_error(exc))
            return pb.FeedbackResponse()

    # ------------------------------------------------------------------ OpenAI-compatible HTTP

    @app.post("/v1/feedback", responses=FEEDBACK_RESPONSES)
    async def feedback(self, body: FeedbackBody, authorization: str | None = Header(default=None)):
        """Rate an answer by its completion ``id``, optionally with the answer it should have been."""
        try:
            caller = self._caller(_bearer_from_http(authorization))
            node = await self._feedback(body.id, body.rating == "good", body.correction or "", caller)
        except Exception as exc:  # noqa: BLE001
            return error_response(_as_request_error(exc))
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
            caller = self._authenticate(_bearer_from_http(authorization))
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
            return error_response(_counted_failure(exc))
        return StreamingResponse(self._sse(kind, rid, body.model, first, events), media_type="text/event-stream")

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
            raise _for_item(err, item) from None

    async def _answer(self, v: Validated, arrived: float, item: int | None) -> dict[str, Any]:
        """The end event of one unary request."""
        end = None
        try:
            async for event in self.run(v, arrived=arrived, stream=False):
                end = event if event["type"] == "end" else end
        except RequestError as err:
            raise _for_item(err, item) from None
        return end

    async def _sse(self, kind, rid, model, first, events):
        async with contextlib.aclosing(events):  # a client gone mid-stream: run's cleanup now, not at GC
            async for chunk in self._sse_chunks(kind, rid, model, first, events):
                yield chunk

    async def _sse_chunks(self, kind, rid, model, first, events):
        try:
            event = first
            while True:
                if event["type"] == "delta":
                    yield sse_chunk(kind, rid, model, event["text"])
                else:
                    yield sse_chunk(kind, rid, event["model"] or model, None, event["finish_reason"], end=event)
                    break
                event = await anext(events)
        except Exception as exc:  # noqa: BLE001 - mid-stream: the status line is gone, report in-band
            err = _counted_failure(exc)
            yield f"data: {json.dumps({'error': {'message': err.message, 'code': err.code.name.lower()}})}\n\n"
        yield SSE_DONE

    # ------------------------------------------------------------------ the one request path

    async def run(self, v: Validated, *, arrived: float, stream: bool = True) -> AsyncIterator[dict[str, Any]]:
        """Route, dispatch and time one validated request. Yields delta events, then one end event.

        A request that ends with an answer is counted here; one that fails is counted where its
        status is set (:func:`_counted_failure`), so validation errors count too.
        """
        ended = False
        clock = metrics.TokenClock()  # inter-token latency, as the chunks leave for the client
        try:
            # aclosing: when the caller stops early, _run's cleanup (finish, cancel) runs at once, not at GC
            async with contextlib.aclosing(self._run(v, arrived=arrived, stream=stream)) as events:
                async for event in events:
                    if event["type"] == "delta":
                        clock.chunk(event)
                    elif event["type"] == "end":
                        ended = True
                        metrics.request_served(event, v.deadline_ms, clock)
                        self._remember(v, event, v.caller)
                        self.recent.record(
                            event["node_id"], event["completion_tokens"], event["sla_met"] if v.deadline_ms else None
                        )
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            if not ended:  # the caller left (deadline, disconnect) before the answer was complete
                metrics.request_failed("cancelled")
            raise

    async def _run(self, v: Validated, *, arrived: float, stream: bool = True) -> AsyncIterator[dict[str, Any]]:
        """The request path behind :meth:`run`.

        ``stream=False`` asks the target for the whole text at the end instead of per-token deltas.

        Raises:
            RequestError: invalid for the model, no target, or the target failed mid-stream.
        """
        await self.poller.on_request()
        view = self.fleet.view()  # one snapshot for the choice and the hedge plan
        decision, route_request = self._decide(v, view)
        self.hedges.on_request()
        # Only streams hedge: a unary call shows its first token only when it is complete, so a
        # first-token timer would fire on almost every unary request.
        hedge = (
            plan_hedge(decision.target_id, route_request, view, self.margins)
            if self.cfg.routing.hedging and stream
            else None
        )
        candidates = [decision.target_id, *decision.fallbacks]
        first_token_at = None
        start: dict[str, Any] = {}
        sent_text, sent_tokens = "", 0  # already streamed to the client, by earlier targets
        answered = False  # the end event went out: a caller closing us now is not a cancellation
        notes: list[str] = []

        def summary(end: dict[str, Any], target: str, attempts: int, text: str = "") -> dict[str, Any]:
            now = time.perf_counter()
            total_ms = (now - arrived) * 1000
            return {
                **end,
                "type": "end",
                "request_id": v.request_id,
                "text": sent_text if stream else text,
                "completion_tokens": sent_tokens + end["completion_tokens"],
                "tier": start.get("tier", ""),
                "node_id": start.get("node_id", target),
                "model": start.get("model", ""),
                "model_version": start.get("model_version", ""),
                "prompt_tokens": start.get("prompt_tokens", 0),
                "queue_ms": start.get("queue_ms", 0.0),
                "ttft_ms": ((first_token_at or now) - arrived) * 1000,
                "total_ms": total_ms,
                "sla_met": v.deadline_ms == 0 or total_ms <= v.deadline_ms,
                "route_reason": "; ".join([decision.reason, *notes]),
                "predicted_ms": (decision.predicted_ms or 0.0) if attempts == 1 else 0.0,
                "network_simulated": self.wan.enabled,
                "attempts": attempts,
            }

        def learn(tokens: int, actual_ms: float) -> None:
            """Learn the prediction's error, on the first target only. An open-ended answer that ran
            past its planned length was not mispredicted: it was a longer job, and learning it would
            widen the target's margin for every later request."""
            if attempt == 0 and decision.base_ms is not None and tokens <= route_request.max_new_tokens:
                self.margins.observe(target, decision.base_ms, actual_ms)

        for attempt, target in enumerate(candidates):
            job = self.fleet.dispatch(target, route_request.prompt_tokens, max(1, v.planned_new_tokens - sent_tokens))
            started_any, failed, tokens_here = False, True, 0
            request = v.engine_request(stream=stream)
            if sent_text and sent_tokens >= v.max_new_tokens:  # the failure came with the last token
                self.fleet.finish(target, failed=False, job=job)
                yield summary({"finish_reason": "length", "completion_tokens": 0}, target, attempt)
                return
            if sent_text:  # continue where the failed target stopped: no restart, no duplicate text
                request |= {"prefix": sent_text, "max_new_tokens": v.max_new_tokens - sent_tokens}
            try:
                if self.wan.drops(target):
                    raise SimulatedLoss(f"simulated loss on the way to {target}")
                await asyncio.sleep(self.wan.sample_delay_s(target))  # 0 unless simulated
                events = self._events_from(target, request)
                if attempt == 0 and hedge is not None:
                    hedge_events = partial(self._hedge_events, hedge.cloud_id, request, route_request.prompt_tokens)
                    events = race(
                        events,
                        hedge_events,
                        after_s=hedge.after_ms / 1000,
                        budget=self.hedges,
                        hedge_name=hedge.cloud_id,
                    )
                async for event in events:
                    kind = event["type"]
                    if kind == "note":
                        notes.append(event["text"])
                        if event.get("hedged"):
                            metrics.hedged(target)
                        continue
                    if kind == "error":
                        if event["code"] == "UNAVAILABLE" and not started_any:
                            raise _Unavailable(event["message"])
                        if event["code"] == "INTERNAL" and not tokens_here:  # the target broke, not the request
                            raise _Unavailable(event["message"])
                        failed = False  # the target answered; the request itself was refused
                        raise RequestError(grpc.StatusCode[event["code"]], event["message"], event.get("param"))
                    started_any = True
                    if kind == "start":
                        start = event
                    elif kind == "first_token":
                        first_token_at = first_token_at or event.get("at") or time.perf_counter()
                    elif kind == "delta":
                        first_token_at = first_token_at or time.perf_counter()
                        tokens_here = event.get("tokens", tokens_here + 1)
                        sent_text += event["text"]
                        yield event
                    elif kind == "end":
                        failed = False
                        done = summary(event, target, attempt + 1, event["text"])
                        if start.get("node_id") == target:  # not a winning hedge
                            learn(done["completion_tokens"], done["total_ms"])
                        answered = True
                        yield done
                        return
                sent_tokens += tokens_here  # the stream ended without an end event: count what it sent
                notes.append(f"{target} closed its stream without finishing")
                continue
            except (GeneratorExit, asyncio.CancelledError):
                # The caller left (client deadline, disconnect). Its time so far is a lower bound
                # of the actual: still a residual to learn from, or the worst misses never count.
                if not answered:
                    learn(sent_tokens + tokens_here, (time.perf_counter() - arrived) * 1000)
                failed = False
                raise
            except (_Unavailable, SimulatedLoss, *RETRYABLE) as exc:
                if isinstance(exc, RETRYABLE):
                    self.handles.pop(target, None)
                elapsed_ms = (time.perf_counter() - arrived) * 1000
                if started_any and sent_text and not (stream and (v.deadline_ms == 0 or elapsed_ms < v.deadline_ms)):
                    raise _broken(
                        RequestError(grpc.StatusCode.UNAVAILABLE, f"{target} failed mid-stream: {exc}")
                    ) from None
                if attempt + 1 < len(candidates):
                    metrics.failed_over(target)
                sent_tokens += tokens_here
                notes.append(
                    f"{target} failed after {tokens_here} tokens; continued on the next target"
                    if tokens_here
                    else f"{target} failed before its first token"
                )
                continue  # fail over to the next candidate
            finally:
                self.fleet.finish(target, failed=failed, job=job)
        raise _broken(RequestError(grpc.StatusCode.UNAVAILABLE, f"every candidate failed: {', '.join(candidates)}"))

    def _decide(self, v: Validated, view: FleetView) -> tuple[Decision, RouteRequest]:
        mode = self.cfg.routing.mode if v.mode == "default" else v.mode
        # The Gateway has no tokenizer: ~4 characters per token is close for English, and the
        # learnt margin absorbs the rest.
        prompt_tokens = sum(len(m["content"]) for m in v.messages) // 4 + 8 * len(v.messages)
        request = RouteRequest(
            route=v.route,
            site=v.site,
            deadline_ms=v.deadline_ms,
            prompt_tokens=prompt_tokens,
            max_new_tokens=v.planned_new_tokens,
            mode=mode,
        )
        try:
            return self.router.choose(request, view), request
        except DeadlineInfeasible as exc:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "deadline_ms") from None
        except NoTargetError as exc:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    async def _events_from(self, target: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if not request["stream"]:
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
        refs = self._actor(target).generate_stream.options(num_returns="streaming").remote(request)
        try:
            async for ref in refs:
                yield await ref
        finally:
            ray.cancel(refs)

    async def _hedge_events(self, target: str, request: dict[str, Any], prompt_tokens: int):
        """A hedge's events, counted as work on its target while it runs, like any dispatch."""
        job = self.fleet.dispatch(
            target, prompt_tokens, planned_tokens(request["max_new_tokens"], request["fit_context"])
        )
        try:
            async for event in self._events_from(target, request):
                yield event
        finally:
            self.fleet.finish(target, failed=False, job=job)

    async def _completed_on(self, target: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Unary: one call, no per-token traffic. Yields the same start / first_token / end events."""
        sent = time.perf_counter()
        # Cancelling this coroutine does not reach the actor or replica by itself: without the
        # explicit cancel, a dropped call (a failed sibling in a list prompt, a client gone) would
        # keep generating there while the fleet view already counts the target free.
        if target == self.cfg.fleet.cloud.id:
            response = self.cloud.complete.remote(request)
            cancel = response.cancel
        else:
            response = self._actor(target).complete.remote(request)
            cancel = partial(ray.cancel, response)
        try:
            result = await response
        except asyncio.CancelledError:
            cancel()
            raise
        if result["type"] == "error":
            yield result
            return
        back = time.perf_counter()
        # The first token left the engine at first_token_ms after it got the request; the one-way
        # transfer is taken as half of the round trip not spent in the engine.
        one_way_s = max(0.0, (back - sent) * 1000 - result["engine_ms"]) / 2000
        yield {**result, "type": "start"}
        yield {"type": "first_token", "at": sent + one_way_s + result["first_token_ms"] / 1000}
        yield result

    def _actor(self, node_id: str) -> Any:
        # A name lookup is a GCS round trip: cache the handle, drop it when the actor looks gone.
        if node_id not in self.handles:
            try:
                self.handles[node_id] = ray.get_actor(actor_name(node_id, self.cfg.app), namespace=ACTOR_NAMESPACE)
            except ValueError as exc:
                raise LookupGone(str(exc)) from None
        return self.handles[node_id]

    # ------------------------------------------------------------------ fleet view

    async def fleet_status(self) -> dict[str, Any]:
        """This replica's live view of every target (what ``edgefleet status`` shows per node)."""
        await self.poller.on_request()
        if not self.fleet.healthy:  # nothing heard yet: ask every target once instead of guessing
            await self._refresh_all()
        view = {t.target_id: t for t in self.fleet.view().targets}
        out = {}
        for target_id in self.fleet.target_ids:
            t, s = view[target_id], self.fleet.stats.get(target_id, {})
            out[target_id] = {
                "tier": t.tier,
                "healthy": t.healthy,
                "circuit_open": t.circuit_open,
                "draining": t.draining,
                "queue_depth": t.queue_depth,
                "in_flight": t.in_flight,
                "model": s.get("model", ""),
                "model_version": s.get("model_version", ""),
                **self.recent.summary(target_id),
            }
        return out

    async def _refresh_all(self) -> None:
        """Every target's stats into the fleet view (the poller's schedule: ``serve/stats_poller.py``)."""
        await asyncio.gather(*(self._refresh(t) for t in self.fleet.target_ids), return_exceptions=True)

    async def _refresh(self, target_id: str) -> None:
        try:
            is_cloud = target_id == self.fleet.cloud_id
            # 10 polls a second per node: kept out of Ray's task-event store (the GCS keeps up to 100k
            # task records, ~13 MB/min of GCS growth in the soak) and out of the dashboard's task list.
            call = (
                self.cloud.stats.remote()
                if is_cloud
                else self._actor(target_id).stats.options(enable_task_events=False).remote()
            )
            self.fleet.heartbeat(target_id, await asyncio.wait_for(call, timeout=1.0))
        except Exception:  # dead, restarting or slow: route around it until it answers again
            self.fleet.heartbeat(target_id, None)
            self.handles.pop(target_id, None)

    # ------------------------------------------------------------------ feedback

    def _home(self, v: Validated, end: dict[str, Any]) -> str | None:
        """Where a request's answer and its feedback are kept: the edge node of the caller's site,
        else the edge node that served it; a cloud answer with no site has no home."""
        return self.site_nodes.get(v.site) or (end["node_id"] if end.get("tier") == "edge" else None)

    def _caller(self, token: str | None) -> str:
        """Authorize (token and rate limit) and name the caller: whose answers they may rate."""
        caller = self._authenticate(token)
        self._charge(caller, cost=1)
        return caller

    def _remember(self, v: Validated, end: dict[str, Any], caller: str) -> None:
        """Hand the answer to its home node, to wait there for its user's feedback."""
        home = self._home(v, end)
        if home is None:
            return
        question = next((m["content"] for m in reversed(v.messages) if m["role"] == "user"), "")
        answer = Answer(
            v.request_id, v.site or home, question, end["text"].strip(), end["model_version"], time.time(), caller
        )
        self.homes.put(v.request_id, home)
        try:  # fire and forget: the answer is already the caller's, keeping it must not delay it
            self._actor(home).remember.options(enable_task_events=False).remote(answer)
        except Exception:  # noqa: BLE001 - a home node that is down loses this answer's feedback only
            self.handles.pop(home, None)

    async def _feedback(self, request_id: str, good: bool | None, correction: str, caller: str) -> str:
        """Store a rating on the node that keeps the answer; returns that node's id.

        The node that kept it is known to the replica that answered; another replica (or this one
        after a restart) asks every edge node, and only the one holding the answer stores it.
        """
        rating = validate_feedback(request_id, good, correction, self.cfg)
        everyone = [n.id for n in self.cfg.fleet.edge_nodes]
        hinted = self.homes.get(request_id)
        nodes = [hinted] if hinted else everyone
        unreachable = []
        for attempt in range(2):
            calls = {n: self._store_feedback(n, request_id, rating, caller) for n in nodes}
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

    async def _store_feedback(self, node: str, request_id: str, rating: Any, caller: str) -> bool | None:
        """Whether ``node`` stored it; None: the node did not answer (down, restarting, slow)."""
        try:
            call = self._actor(node).feedback.remote(request_id, rating, caller)
            return await asyncio.wait_for(call, timeout=10.0)
        except (*RETRYABLE, ray.exceptions.RayTaskError):
            self.handles.pop(node, None)
            return None
        except Exception:  # noqa: BLE001 - a timeout: the handle is still good
            return None

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
