"""The Gateway's HTTP path without a cluster: what a list prompt costs, and what a dropped call leaves behind.

The Gateway class is built directly (no Serve, no Ray cluster); its targets are fakes.
"""

from __future__ import annotations

import asyncio

import pytest
import ray

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.engine import GenRequest
from edgefleet.platform.events import Finished, Started
from edgefleet.platform.stats import EngineStats
from edgefleet.serve import gateway as gateway_module
from edgefleet.serve.openai_http import CompletionBody
from edgefleet.serve.quotas import RateLimiter
from edgefleet.serve.validation import DEFAULT_MAX_NEW_TOKENS

GatewayClass = gateway_module.Gateway.func_or_class.__mro__[1]  # the class under Serve's ingress wrapper


def _gateway(data: dict | None = None):
    gw = object.__new__(GatewayClass)
    GatewayClass.__init__(gw, data or EdgefleetConfig().model_dump(), cloud=None)
    for target in gw.fleet.target_ids:
        gw.fleet.heartbeat(target, EngineStats())
    gw.targets._refresh = lambda target: asyncio.sleep(0)
    return gw


class _HttpRequest:
    headers: dict[str, str] = {}


async def _answered(target, request):
    yield Started(0.0, 1, 1, "m", "1", node_id=target, tier="edge")
    yield Finished("stop", 1, "ok")


def test_a_list_of_prompts_spends_one_rate_limit_request_per_prompt():
    data = EdgefleetConfig().model_dump()
    data["auth"]["rate_limit"] = {"requests_per_s": 0.01, "burst": 4}
    gw = _gateway(data)
    gw.targets.events = _answered

    def post(n: int):
        return asyncio.run(gw._http("text", CompletionBody(prompt=["p"] * n, max_tokens=1), _HttpRequest(), None))

    assert post(3).status_code == 200
    assert post(2).status_code == 429  # 1 left of the burst of 4: two generations are not allowed
    assert post(1).status_code == 200
    too_many = post(5)  # more than the burst could ever allow: waiting would not help
    assert too_many.status_code == 400 and b"burst of 4" in too_many.body


def test_the_limiter_spends_all_or_nothing():
    limiter = RateLimiter(rate=1.0, burst=3)
    assert limiter.take("a", 0.0, cost=2) is None
    assert limiter.take("a", 0.0, cost=2) == pytest.approx(1.0)  # 1 token left, 2 needed at 1/s
    assert limiter.take("a", 0.0, cost=1) is None  # the refused call spent nothing


def test_a_cancelled_unary_call_cancels_the_work_on_the_node(monkeypatch):
    cancelled = []

    class NeverDone:
        def __await__(self):
            return asyncio.sleep(30).__await__()

    ref = NeverDone()

    class Actor:
        class complete:  # noqa: N801 - the shape of an actor method: .remote(...)
            @staticmethod
            def remote(request):
                return ref

    monkeypatch.setattr(ray, "cancel", lambda r, **kwargs: cancelled.append(r))

    async def go():
        gw = _gateway()
        gw.targets.actor = lambda node: Actor
        v = gw._validated(CompletionBody(prompt="hi", max_tokens=4), "r", "hi", None, None)
        task = asyncio.ensure_future(gw._answer(v, 0.0, None))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return gw

    gw = asyncio.run(go())
    assert cancelled == [ref]  # else the node keeps generating an answer nobody reads
    assert all(not jobs for jobs in gw.fleet.jobs.values())  # and the fleet view forgot the job


def test_a_hedge_counts_an_open_ended_answer_at_its_planned_length():
    gw = _gateway()
    seen = []
    gw.fleet.dispatch = lambda target, prompt_tokens, new_tokens, now=None: seen.append(new_tokens) or 0

    async def nothing(target, request):
        return
        yield

    gw.targets.events = nothing

    async def go():
        request = GenRequest("h", [{"role": "user", "content": "hi"}], max_new_tokens=1024, fit_context=True)
        async for _ in gw.dispatcher._hedge_events("cloud", request, 10):
            pass

    asyncio.run(go())
    assert seen == [DEFAULT_MAX_NEW_TOKENS]
