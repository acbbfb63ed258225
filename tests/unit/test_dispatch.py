"""The Dispatcher without a cluster: failover before and after the first token, on fake targets."""

from __future__ import annotations

import asyncio
import time

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.events import Delta, Failed, Finished, Started
from edgefleet.platform.network import SimulatedWan
from edgefleet.serve.dispatch import Dispatcher
from edgefleet.serve.events import GenerateResult
from edgefleet.serve.fleet_tracker import FleetTracker
from edgefleet.serve.router import Decision, ResidualTracker
from edgefleet.serve.stats_poller import StatsPoller
from edgefleet.serve.targets import LookupGone, Targets
from edgefleet.serve.validation import validate


class TwoTargets:
    """The Router's stand-in: edge-1 first, edge-2 as its fallback."""

    def choose(self, request, view) -> Decision:
        return Decision("edge-1", "edge", "test", fallbacks=("edge-2",), predicted_ms=50.0, base_ms=40.0)


def _dispatcher(events) -> tuple[Dispatcher, list]:
    cfg = EdgefleetConfig()
    fleet = FleetTracker(cfg, {})
    targets = Targets(cfg, None, fleet)
    sent = []

    async def fake(target, request):
        sent.append((target, request))
        async for event in events[target](request):
            yield event

    targets.events = fake
    poller = StatsPoller(lambda: asyncio.sleep(0))
    dispatcher = Dispatcher(
        cfg,
        targets=targets,
        router=TwoTargets(),
        margins=ResidualTracker(),
        wan=SimulatedWan({}, enabled=False),
        poller=poller,
    )
    return dispatcher, sent


def _run(dispatcher: Dispatcher, stream: bool) -> list:
    v = validate(
        prompt="hi",
        messages=None,
        max_new_tokens=8,
        temperature=None,
        top_p=None,
        seed=None,
        stop=None,
        deadline_ms=0,
        route="auto",
        site="",
        priority="normal",
        request_id="r1",
        cfg=EdgefleetConfig(),
    )

    async def go():
        return [e async for e in dispatcher.run(v, arrived=time.perf_counter(), stream=stream)]

    return asyncio.run(go())


def _started(node: str) -> Started:
    return Started(0.0, 3, 1, "m", "v1", node_id=node, tier="edge")


def test_a_target_that_refuses_before_its_first_token_fails_over_to_the_next():
    async def draining(request):
        yield Failed("UNAVAILABLE", "node is draining")

    async def answers(request):
        yield _started("edge-2")
        yield Finished("stop", 2, "ok!")

    dispatcher, sent = _dispatcher({"edge-1": draining, "edge-2": answers})

    (result,) = _run(dispatcher, stream=False)

    assert isinstance(result, GenerateResult) and result.text == "ok!" and result.node_id == "edge-2"
    assert result.attempts == 2 and result.predicted_ms == 0.0  # the prediction was the first target's
    assert "edge-1 failed before its first token" in result.route_reason
    assert [t for t, _ in sent] == ["edge-1", "edge-2"]
    assert all(not jobs for jobs in dispatcher.fleet.jobs.values())  # every dispatch was finished


def test_a_stream_that_breaks_mid_way_continues_on_the_next_target_without_repeating_text():
    async def breaks(request):
        yield _started("edge-1")
        yield Delta("The capital", 2)
        raise LookupGone("edge-1 is gone")

    async def continues(request):
        yield _started("edge-2")
        yield Delta(" is Paris.", 3)
        yield Finished("stop", 3, " is Paris.")

    dispatcher, sent = _dispatcher({"edge-1": breaks, "edge-2": continues})

    events = _run(dispatcher, stream=True)

    result = events[-1]
    assert [e.text for e in events[:-1]] == ["The capital", " is Paris."]
    assert result.text == "The capital is Paris." and result.completion_tokens == 5
    continued = sent[1][1]  # the next target continues the text, with what is left of the length
    assert (continued.prefix, continued.max_new_tokens) == ("The capital", 8 - 2)
    assert "edge-1 failed after 2 tokens" in result.route_reason


def test_a_unary_reply_waits_for_the_dispatchers_accounting():
    """What runs after the final event (finish, the breaker count) runs before the unary reply
    goes out, not when the abandoned generator is collected."""
    from edgefleet.serve.gateway import _result_of

    done = []
    final = GenerateResult.__new__(GenerateResult)

    async def events():
        yield final
        done.append("accounted")

    assert asyncio.run(_result_of(events())) is final
    assert done == ["accounted"]
