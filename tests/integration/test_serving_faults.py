"""An edge node dies under load, and nothing is lost.

500 streamed requests (16 at a time, spread over the three sites, a 20 s deadline each) run while
edge-2's raylet is killed, then brought back. Every request must end exactly once, complete text or a
clear status, within its deadline plus 1 s; a completed stream's text must be exactly the chunks it
received (a rescued stream continues without repeating itself); the Gateway must have counted one
answer per completion; and once the node is back, its site's traffic returns to it.

Runs after every other test (marker ``fleet_faults``): it leaves a dead raylet's entry in Ray's node
table, which the node-table tests in test_fleet would see, and a node that failed to come back must
not stall the tests after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter

import pytest

ray = pytest.importorskip("ray")

from edgefleet import metrics  # noqa: E402
from edgefleet.client import AsyncClient, EdgefleetClientError  # noqa: E402
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name  # noqa: E402
from edgefleet.platform.topology import edge_labels  # noqa: E402
from tests.conftest import TEST_TOKEN, call_until_back, rejoin  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.fleet_faults]
TOTAL, CONCURRENCY, DEADLINE_S = 500, 16, 20.0
VICTIM = "edge-2"
KILL_AFTER, REJOIN_AFTER = 150, 300  # requests finished before the kill, and before the node comes back


def _ok_count() -> float:
    samples = metrics.scrape(metrics.endpoints(ray.nodes()), timeout_s=2).get("ray_edgefleet_requests_total", [])
    return sum(v for labels, v in samples if labels["outcome"] == "ok")


async def _one(client: AsyncClient, i: int) -> dict:
    site = f"edge-{i % 3 + 1}"
    started = time.monotonic()
    texts, finals, outcome = [], [], None
    try:
        async for chunk in client.stream(
            f"Request {i}: say something.", max_new_tokens=24, site=site, timeout=DEADLINE_S
        ):
            texts.append(chunk.text)
            if chunk.final:
                finals.append(chunk.completion)
        outcome = "complete" if len(finals) == 1 else f"ended with {len(finals)} final chunks"
    except EdgefleetClientError as e:
        outcome = f"status {e.code}"
    return {
        "i": i,
        "site": site,
        "outcome": outcome,
        "elapsed": time.monotonic() - started,
        "texts": texts,
        "final": finals[-1] if finals else None,
    }


async def _load(served, results: list[dict], events: dict) -> None:
    """The steady load; it pauses before request REJOIN_AFTER until the node is back, so the
    rejoined node sees a real share of the rest."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TOTAL):
        queue.put_nowait(i)

    async def worker(client: AsyncClient) -> None:
        while not queue.empty():
            while len(results) >= REJOIN_AFTER and "back" not in events:
                await asyncio.sleep(0.1)
            results.append(await _one(client, queue.get_nowait()))

    async with AsyncClient(served.grpc_address, token=TEST_TOKEN) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))


def _wait_for(results: list[dict], n: int, loader: threading.Thread) -> None:
    while len(results) < n and loader.is_alive():
        time.sleep(0.05)


@pytest.fixture(scope="module")
def under_fault(fleet, served):
    """The load runs in a thread; the faults come from here (Ray's node start/stop needs the main thread)."""
    victim = ray.get_actor(actor_name(VICTIM), namespace=ACTOR_NAMESPACE)
    pid = ray.get(victim.info.remote()).pid
    raylet = {n.node_id: n.ray_node_id for n in fleet.nodes() if n.alive}[VICTIM]
    node = next(n for n in fleet._cluster.worker_nodes if n.node_id == raylet)
    ok_before = _ok_count()
    results: list[dict] = []
    events: dict = {}
    loader = threading.Thread(target=lambda: asyncio.run(_load(served, results, events)), daemon=True)
    loader.start()
    _wait_for(results, KILL_AFTER, loader)
    events["killed"] = len(results)
    fleet._cluster.remove_node(node, allow_graceful=False)
    os.kill(pid, signal.SIGKILL)
    _wait_for(results, REJOIN_AFTER, loader)
    try:
        rejoin(fleet, edge_labels(VICTIM), gone=raylet)
        call_until_back(victim.info.remote, within_s=300)
    except Exception as exc:  # say why: Ray's record of the actor and the node table
        state = ray._private.state.actors(victim._actor_id.hex())
        nodes = [(n.node_id, n.alive) for n in fleet.nodes()]
        raise AssertionError(
            f"{VICTIM} did not come back ({type(exc).__name__}: {exc}): "
            f"{state.get('State')}, {state.get('NumRestarts')} restarts, "
            f"{state.get('DeathCause')}; nodes: {nodes}"
        ) from None
    finally:
        events["results_at_back"] = len(results)
        events["back"] = True  # on failure too: the load drains (each request is bounded by its deadline)
    loader.join(timeout=600)
    assert not loader.is_alive(), "the load did not finish"
    time.sleep(3)  # two metric report intervals
    return results, events, _ok_count() - ok_before


def test_every_request_ends_exactly_once(under_fault):
    results, events, _ = under_fault
    assert "killed" in events and "back" in events, events
    ids = Counter(r["i"] for r in results)
    assert len(ids) == TOTAL and set(ids.values()) == {1}, "missing or duplicated requests"
    outcomes = Counter(r["outcome"] for r in results)
    assert all(o == "complete" or o.startswith("status ") for o in outcomes), outcomes
    print(f"\noutcomes under fault: {dict(outcomes)}")


def test_every_request_ends_within_its_deadline_plus_one_second(under_fault):
    results, _, _ = under_fault
    late = [(r["i"], round(r["elapsed"], 2), r["outcome"]) for r in results if r["elapsed"] > DEADLINE_S + 1]
    assert not late, late


def test_a_completed_stream_is_exactly_its_chunks_even_when_rescued(under_fault):
    results, _, _ = under_fault
    done = [r for r in results if r["outcome"] == "complete"]
    assert all(r["final"].text == "".join(r["texts"]) for r in done)
    rescued = [r for r in done if f"{VICTIM} failed" in r["final"].route_reason]
    print(f"\nrescued by failover: {len(rescued)}; completed: {len(done)} of {TOTAL}")


def test_the_gateway_counted_one_answer_per_completed_stream(under_fault):
    results, _, ok_delta = under_fault
    assert ok_delta == sum(r["outcome"] == "complete" for r in results)


def test_the_node_rejoins_and_its_site_gets_traffic_back(under_fault):
    results, events, _ = under_fault
    after = results[events["results_at_back"] :]
    served_after = Counter(r["final"].node_id for r in after if r["outcome"] == "complete" and r["site"] == VICTIM)
    assert served_after.get(VICTIM, 0) > 0, served_after


# ---------------------------------------------------------------- the cloud is unreachable


def _cloud_replica_pids() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if "ServeReplica:edgefleet:Cloud" in " ".join(p.info["cmdline"] or [p.info["name"] or ""])
    ]


def _timed(call):
    started = time.monotonic()
    try:
        return call(), time.monotonic() - started
    except EdgefleetClientError as e:
        return e, time.monotonic() - started


def test_with_the_cloud_gone_edges_serve_and_cloud_only_requests_end_clearly(fleet, served, under_fault):
    """Runs after the edge scenario (it needs the fleet whole again): the cloud's raylet and replica
    are killed, then the cloud node comes back and serves again."""
    from ray import serve

    from edgefleet.client import Client, Unavailable
    from edgefleet.platform.topology import cloud_labels

    raylet = {n.node_id: n.ray_node_id for n in fleet.nodes() if n.alive}["cloud"]
    node = next(n for n in fleet._cluster.worker_nodes if n.node_id == raylet)
    fleet._cluster.remove_node(node, allow_graceful=False)
    for pid in _cloud_replica_pids():
        os.kill(pid, signal.SIGKILL)
    try:
        with Client(served.grpc_address, token=TEST_TOKEN, max_retries=0) as client:
            time.sleep(2.5)  # the Gateway's heartbeats notice (every 100 ms, 1 s when idle; 1 s timeout)
            ask = lambda i: client.generate(f"still {i}?", max_new_tokens=8, site=f"edge-{i % 3 + 1}", timeout=10)  # noqa: E731
            edge_answers = [_timed(lambda i=i: ask(i)) for i in range(9)]
            cloud_only, cloud_s = _timed(lambda: client.generate("cloud?", max_new_tokens=8, route="cloud", timeout=10))
            strict, strict_s = _timed(lambda: client.generate("long", max_new_tokens=200, timeout=0.05, mode="strict"))
            best, best_s = _timed(lambda: client.generate("long", max_new_tokens=40, timeout=10, mode="best_effort"))
        for answer, seconds in edge_answers:
            assert not isinstance(answer, Exception), answer
            assert answer.node_id.startswith("edge-") and seconds <= 10 + 1
        assert isinstance(cloud_only, Unavailable) and cloud_s <= 10 + 1, (cloud_only, cloud_s)  # nothing hangs
        assert getattr(strict, "code", None) in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED") and strict_s <= 1.05
        assert not isinstance(best, Exception) and best.node_id.startswith("edge-") and best_s <= 11
    finally:  # the cloud comes back for the tests that follow
        rejoin(fleet, cloud_labels("cloud"), gone=raylet)
        deadline = time.monotonic() + 180
        with Client(served.grpc_address, token=TEST_TOKEN) as client:
            while True:
                status = serve.status().applications["edgefleet"].deployments["Cloud"].status
                answer, _ = _timed(lambda: client.generate("back?", max_new_tokens=4, route="cloud", timeout=30))
                if status == "HEALTHY" and not isinstance(answer, Exception):
                    break
                assert time.monotonic() < deadline, (status, answer)
                time.sleep(1)
    assert answer.node_id == "cloud"
