"""One validated request onto the fleet, and its answer back: dispatch, hedging and failover.

The Router (pure policy) chooses a target and its fallbacks; the Dispatcher carries the choice
out. It crosses the simulated WAN, races a hedge to the cloud when a stream's first token is
late, and fails over to the next fallback when a target fails before its first token (or, in a
stream still within its deadline, after some: the next target continues the text; tokens already
sent cannot be taken back). It is the one place that counts work in the fleet view
(:meth:`Dispatcher._working_on`), the one place that learns the prediction's error
(:meth:`Dispatcher._learn`), and the one place that builds the request's :class:`GenerateResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial

import grpc

from edgefleet import metrics
from edgefleet.config import EdgefleetConfig
from edgefleet.errors import EdgefleetError
from edgefleet.platform.engine import GenRequest
from edgefleet.platform.events import Delta, EngineEvent, Failed, Finished, FirstToken, Started
from edgefleet.platform.network import SimulatedLoss, SimulatedWan
from edgefleet.serve.events import GenerateResult, Hedged
from edgefleet.serve.failures import broken
from edgefleet.serve.fleet_tracker import FleetTracker
from edgefleet.serve.hedge_race import race
from edgefleet.serve.hedging import HedgeBudget, plan_hedge
from edgefleet.serve.router import (
    DeadlineInfeasible,
    Decision,
    FleetView,
    NoTargetError,
    ResidualTracker,
    Router,
    RouteRequest,
)
from edgefleet.serve.stats_poller import StatsPoller
from edgefleet.serve.targets import RETRYABLE, Targets
from edgefleet.serve.validation import RequestError, Validated, planned_tokens


class _Unavailable(EdgefleetError):
    """A target refused before sending anything (e.g. draining), or broke before its first token."""


@dataclass
class _Work:
    failed: bool = True  # until the target answers: a failure counts towards its circuit breaker


@dataclass
class _Run:
    """One request's way through its targets: the choice, and what it has got so far."""

    v: Validated
    arrived: float  # perf_counter s
    stream: bool
    decision: Decision
    route: RouteRequest
    started: Started | None = None  # the answering target's
    first_token_at: float | None = None  # perf_counter s, the first target's to send one
    sent_text: str = ""  # already streamed to the client, by earlier targets too
    sent_tokens: int = 0  # by earlier targets
    notes: list[str] = field(default_factory=list)  # joined into the route reason
    answered: bool = False  # the result went out: a caller closing us now is not a cancellation


class Dispatcher:
    def __init__(
        self,
        cfg: EdgefleetConfig,
        *,
        targets: Targets,
        router: Router,
        margins: ResidualTracker,
        wan: SimulatedWan,
        poller: StatsPoller,
    ) -> None:
        self.cfg, self.targets, self.router, self.margins = cfg, targets, router, margins
        self.wan, self.poller = wan, poller
        self.fleet: FleetTracker = targets.fleet
        self.hedges = HedgeBudget(share=0.05)  # at most 5% of requests get a hedge

    async def run(self, v: Validated, *, arrived: float, stream: bool = True) -> AsyncIterator[Delta | GenerateResult]:
        """Route, dispatch and time one validated request: its deltas, then one result.

        ``stream=False`` asks the target for the whole text at the end instead of per-token deltas.

        Raises:
            RequestError: invalid for the model, no target, or the target failed mid-stream.
        """
        await self.poller.on_request()
        view = self.fleet.view()  # one snapshot for the choice and the hedge plan
        decision, route = self.decide(v, view)
        self.hedges.on_request()
        # Only streams hedge: a unary call shows its first token only when it is complete, so a
        # first-token timer would fire on almost every unary request.
        hedge = (
            plan_hedge(decision.target_id, route, view, self.margins) if self.cfg.routing.hedging and stream else None
        )
        run = _Run(v, arrived, stream, decision, route)
        candidates = [decision.target_id, *decision.fallbacks]
        for attempt, target in enumerate(candidates):
            if run.sent_text and run.sent_tokens >= v.max_new_tokens:  # the failure came with the last token
                yield self._result(run, Finished("length", 0, ""), target, attempt)
                return
            request = v.engine_request(stream=stream)
            if run.sent_text:  # continue where the failed target stopped: no restart, no duplicate text
                request = dataclasses.replace(
                    request, prefix=run.sent_text, max_new_tokens=v.max_new_tokens - run.sent_tokens
                )
            started_any, tokens_here = False, 0
            with self._working_on(target, route.prompt_tokens, max(1, v.planned_new_tokens - run.sent_tokens)) as work:
                try:
                    if self.wan.drops(target):
                        raise SimulatedLoss(f"simulated loss on the way to {target}")
                    await asyncio.sleep(self.wan.sample_delay_s(target))  # 0 unless simulated
                    events: AsyncIterator[EngineEvent | Hedged] = self.targets.events(target, request)
                    if attempt == 0 and hedge is not None:
                        events = race(
                            events,
                            partial(self._hedge_events, hedge.cloud_id, request, route.prompt_tokens),
                            after_s=hedge.after_ms / 1000,
                            budget=self.hedges,
                            hedge_name=hedge.cloud_id,
                        )
                    async for event in events:
                        if isinstance(event, Hedged):
                            run.notes.append(event.text)
                            metrics.hedged(target)
                            continue
                        if isinstance(event, Failed):
                            if event.code == "UNAVAILABLE" and not started_any:
                                raise _Unavailable(event.message)
                            if event.code == "INTERNAL" and not tokens_here:  # the target broke, not the request
                                raise _Unavailable(event.message)
                            work.failed = False  # the target answered; the request itself was refused
                            raise RequestError(grpc.StatusCode[event.code], event.message, event.param)
                        started_any = True
                        if isinstance(event, Started):
                            run.started = event
                        elif isinstance(event, FirstToken):
                            run.first_token_at = run.first_token_at or event.at or time.perf_counter()
                        elif isinstance(event, Delta):
                            run.first_token_at = run.first_token_at or time.perf_counter()
                            tokens_here = event.tokens
                            run.sent_text += event.text
                            yield event
                        elif isinstance(event, Finished):
                            work.failed = False
                            result = self._result(run, event, target, attempt + 1)
                            if run.started is not None and run.started.node_id == target:  # not a winning hedge
                                self._learn(run, attempt, target, result.completion_tokens, result.total_ms)
                            run.answered = True
                            yield result
                            return
                    run.sent_tokens += tokens_here  # the stream ended without Finished: count what it sent
                    run.notes.append(f"{target} closed its stream without finishing")
                except (GeneratorExit, asyncio.CancelledError):
                    # The caller left (client deadline, disconnect). Its time so far is a lower bound
                    # of the actual: still a residual to learn from, or the worst misses never count.
                    if not run.answered:
                        elapsed_ms = (time.perf_counter() - arrived) * 1000
                        self._learn(run, attempt, target, run.sent_tokens + tokens_here, elapsed_ms)
                    work.failed = False
                    raise
                except (_Unavailable, SimulatedLoss, *RETRYABLE) as exc:
                    if isinstance(exc, RETRYABLE):
                        self.targets.forget(target)
                    elapsed_ms = (time.perf_counter() - arrived) * 1000
                    within_deadline = v.deadline_ms == 0 or elapsed_ms < v.deadline_ms
                    if started_any and run.sent_text and not (stream and within_deadline):
                        raise broken(
                            RequestError(grpc.StatusCode.UNAVAILABLE, f"{target} failed mid-stream: {exc}")
                        ) from None
                    if attempt + 1 < len(candidates):
                        metrics.failed_over(target)
                    run.sent_tokens += tokens_here
                    run.notes.append(
                        f"{target} failed after {tokens_here} tokens; continued on the next target"
                        if tokens_here
                        else f"{target} failed before its first token"
                    )
        raise broken(RequestError(grpc.StatusCode.UNAVAILABLE, f"every candidate failed: {', '.join(candidates)}"))

    def decide(self, v: Validated, view: FleetView) -> tuple[Decision, RouteRequest]:
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

    @contextlib.contextmanager
    def _working_on(self, target: str, prompt_tokens: int, new_tokens: int) -> Iterator[_Work]:
        """Count a request's work on ``target`` in the fleet view until it leaves (the router
        replays it when it plans the next request there)."""
        work = _Work()
        job = self.fleet.dispatch(target, prompt_tokens, new_tokens)
        try:
            yield work
        finally:
            self.fleet.finish(target, failed=work.failed, job=job)

    def _learn(self, run: _Run, attempt: int, target: str, tokens: int, actual_ms: float) -> None:
        """Learn the prediction's error, on the first target only. An open-ended answer that ran
        past its planned length was not mispredicted: it was a longer job, and learning it would
        widen the target's margin for every later request."""
        base_ms = run.decision.base_ms
        if attempt == 0 and base_ms is not None and tokens <= run.route.max_new_tokens:
            self.margins.observe(target, base_ms, actual_ms)

    async def _hedge_events(self, target: str, request: GenRequest, prompt_tokens: int) -> AsyncIterator[EngineEvent]:
        """A hedge's events, counted as work on its target while it runs, like any dispatch."""
        with self._working_on(
            target, prompt_tokens, planned_tokens(request.max_new_tokens, request.fit_context)
        ) as work:
            work.failed = False  # a hedge never opens the cloud's breaker: it is a spare, not the request's path
            async for event in self.targets.events(target, request):
                yield event

    def _result(self, run: _Run, end: Finished, target: str, attempts: int) -> GenerateResult:
        now = time.perf_counter()
        total_ms = (now - run.arrived) * 1000
        s = run.started or Started(0.0, 0, 0, "", "", node_id=target)
        return GenerateResult(
            request_id=run.v.request_id,
            text=run.sent_text if run.stream else end.text,
            finish_reason=end.finish_reason,
            prompt_tokens=s.prompt_tokens,
            completion_tokens=run.sent_tokens + end.completion_tokens,
            tier=s.tier,
            node_id=s.node_id or target,
            model=s.model,
            model_version=s.model_version,
            queue_ms=s.queue_ms,
            ttft_ms=((run.first_token_at or now) - run.arrived) * 1000,
            total_ms=total_ms,
            sla_met=run.v.deadline_ms == 0 or total_ms <= run.v.deadline_ms,
            route_reason="; ".join([run.decision.reason, *run.notes]),
            predicted_ms=(run.decision.predicted_ms or 0.0) if attempts == 1 else 0.0,
            network_simulated=self.wan.enabled,
            attempts=attempts,
        )
