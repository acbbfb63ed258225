"""The SLA router against round robin on the real path (SDK → gRPC → Gateway → actors), with
synthetic backends of different speeds and simulated RTT. Orderings only, never absolute times."""

from __future__ import annotations

import asyncio
import copy

import pytest

ray = pytest.importorskip("ray")

from edgefleet.client import AsyncClient, EdgefleetClientError  # noqa: E402
from edgefleet.config import parse_config  # noqa: E402
from tests.conftest import make_test_config_dict, remove_app  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
PROFILES = {"edge-1": "synthetic:0.5:25", "edge-2": "synthetic:0.5:25", "edge-3": "synthetic:0.5:150"}  # edge-3 slow
BURST, NEW_TOKENS, DEADLINE_S = 18, 16, 1.2


def synthetic_config(fleet_config, policy: str):
    data = make_test_config_dict(num_edge=3)
    for node in data["fleet"]["edge_nodes"]:
        node["model"] = {"source": PROFILES[node["id"]]}
    data["fleet"]["cloud"]["model"] = {"source": "synthetic:0.2:20"}
    data["fleet"]["cloud"]["network"] = {"rtt_ms": 60, "jitter_ms": 5}
    data |= {
        "app": f"synth-{policy.replace('_', '-')}",
        "routing": {"policy": policy},
        "ports": copy.deepcopy(fleet_config.ports.model_dump()),
        "auth": {"tokens": []},
    }
    return parse_config(data)


async def attainment(target: str, app: str) -> float:
    async with AsyncClient(target, application=app) as client:
        # Warm-up: one request per target, so every target has reported measured speeds.
        for site in ("edge-1", "edge-2", "edge-3"):
            await client.generate("warm up", max_new_tokens=4, site=site, route="edge", timeout=30)
        await client.generate("warm up", max_new_tokens=4, route="cloud", timeout=30)
        await asyncio.sleep(0.3)  # two stats heartbeats

        async def one(i: int) -> bool:
            try:
                done = await client.generate(
                    f"question {i}", max_new_tokens=NEW_TOKENS, timeout=DEADLINE_S, mode="best_effort"
                )
                return done.sla_met
            except EdgefleetClientError:  # the client's deadline passed: a miss
                return False

        met = await asyncio.gather(*(one(i) for i in range(BURST)))
        return sum(met) / len(met)


def test_sla_router_meets_tight_deadlines_that_round_robin_misses(served, fleet_config):
    from edgefleet.serve.app import deploy

    results = {}
    for policy in ("sla", "round_robin"):
        cfg = synthetic_config(fleet_config, policy)
        deployment = deploy(cfg, timeout_s=120, log_level="WARNING")
        try:
            results[policy] = asyncio.run(attainment(deployment.grpc_address, cfg.app))
        finally:
            remove_app(cfg.app, [n.id for n in cfg.fleet.edge_nodes])

    print(f"SLO attainment over a burst of {BURST}: {results}")
    assert results["sla"] > results["round_robin"], results
    assert results["sla"] >= 0.8, results  # most of the burst meets its SLA


def test_demo_scene_keeps_the_tight_request_on_the_edge_and_sends_the_long_one_to_the_cloud(served, fleet_config):
    from rich.console import Console

    from edgefleet.cli.demo import deadlines as demo_deadlines
    from tests.conftest import TEST_TOKEN

    tight, long = demo_deadlines.run(fleet_config, TEST_TOKEN, Console(quiet=True))

    assert tight.tier == "edge" and "meets deadline" in tight.route_reason, tight
    assert long.tier == "cloud" and "meets deadline" in long.route_reason, long
