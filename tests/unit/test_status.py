"""`edgefleet status`'s pure parts: the Gateway's one-minute window and the status document."""

from __future__ import annotations

import json

from rich.console import Console

from edgefleet.cli.status import build_status, render
from edgefleet.platform.topology import FleetNode
from edgefleet.serve.fleet_tracker import RecentOutcomes, RecentSummary, TargetStatus


def test_recent_outcomes_forget_what_is_older_than_the_window():
    w = RecentOutcomes(window_s=60, now=0)
    w.record("edge-1", 30, True, now=10)
    w.record("edge-1", 30, False, now=50)
    w.record("edge-1", 40, None, now=65)  # no deadline: tokens count, SLA does not
    s = w.summary("edge-1", now=100)  # the first answer (t=10) is out of the window
    assert s.requests == 2 and s.sla_judged == 1 and s.sla_met == 0
    assert s.sla_attainment == 0.0
    assert s.tokens_per_s == (30 + 40) / 60


def test_a_young_gateway_divides_by_the_time_it_has_seen():
    w = RecentOutcomes(window_s=60, now=0)
    w.record("cloud", 100, True, now=5)
    assert w.summary("cloud", now=10).tokens_per_s == 10.0
    assert w.summary("edge-9", now=10) == RecentSummary(
        requests=0, tokens_per_s=0.0, sla_met=0, sla_judged=0, sla_attainment=None
    )


def node(node_id: str, role: str, alive: bool = True) -> FleetNode:
    labels = {"edgefleet.io/node": node_id} if role != "head" else {}
    return FleetNode(node_id, role, alive, 1.0, "10.0.0.1", "abc", labels)


def gw(
    target_id: str, healthy: bool = True, circuit: bool = False, draining: bool = False, tokens: float = 5.0
) -> TargetStatus:
    return TargetStatus(
        target_id=target_id,
        tier="cloud" if target_id == "cloud" else "edge",
        healthy=healthy,
        circuit_open=circuit,
        draining=draining,
        queue_depth=2,
        in_flight=1,
        model="tiny",
        model_version="tiny-v1",
        recent=RecentSummary(requests=4, tokens_per_s=tokens, sla_met=3, sla_judged=4, sla_attainment=0.75),
    )


# The keys scripts read from each node row of `edgefleet status --json` (the shape before typed rows)
SERVING_KEYS = (
    *("queue_depth", "in_flight", "tokens_per_s", "model", "model_version"),
    *("requests", "sla_met", "sla_judged", "sla_attainment"),
)
SAMPLES = {
    "ray_edgefleet_rollout_state": [
        ({"model": "m", "state": "canary"}, 0.0),
        ({"model": "m", "state": "promoted"}, 1.0),
    ],
}
REGISTRY = {"run": {"run": "new", "round": 2, "epsilon": {"edge-1": 3.5}, "budget": 30.0}, "champion": 4}


def test_status_reports_health_from_the_node_table_and_the_gateway():
    nodes = [
        node("edge-1", "edge"),
        node("edge-2", "edge"),
        node("edge-3", "edge", alive=False),
        node("cloud", "cloud"),
        node("head", "head"),
    ]
    gateway = [gw("edge-1"), gw("edge-2", circuit=True), gw("edge-3", healthy=False), gw("cloud", healthy=False)]
    status = build_status(nodes, gateway, SAMPLES, REGISTRY)
    health = {r["node"]: r["health"] for r in status["nodes"]}
    assert health == {
        "edge-1": "serving",
        "edge-2": "circuit open",
        "edge-3": "down",
        "cloud": "unreachable",
        "head": "up",
    }
    assert status["nodes"][0]["sla_attainment"] == 0.75 and status["nodes"][0]["tokens_per_s"] == 5.0


def test_a_gateway_row_reaches_the_json_document_as_plain_values_under_its_old_keys():
    status = build_status([node("edge-1", "edge")], [gw("edge-1", tokens=2.5)], SAMPLES, REGISTRY)

    row = json.loads(json.dumps(status))["nodes"][0]  # what `edgefleet status --json` prints

    assert set(row) == {"node", "role", "labels", "alive", "health", *SERVING_KEYS}
    assert row["tokens_per_s"] == 2.5 and row["sla_attainment"] == 0.75 and row["model_version"] == "tiny-v1"


def test_the_run_champion_and_rollout_state_reach_the_summary():
    status = build_status([], None, SAMPLES, REGISTRY, gateway_error="not answering")
    assert status["run"] == "new" and status["round"] == 2
    assert status["epsilon"] == {"edge-1": {"spent": 3.5, "budget": 30.0}}
    assert status["champion_version"] == 4 and status["rollout_state"] == "promoted"
    assert status["gateway"] == "not answering"


def test_nothing_federated_yet_and_no_gateway_still_renders():
    nodes = [node("edge-1", "edge")]
    status = build_status(
        nodes, None, {}, {"run": None, "champion": None}, gateway_error="not answering (TimeoutError)"
    )
    assert status["nodes"][0]["health"] == "up (no Gateway view)"
    assert status["run"] is None and status["champion_version"] is None
    console = Console(record=True, width=160)
    console.print(render(status))
    text = console.export_text()
    assert "no federated round yet" in text and "none registered yet" in text and "not answering" in text


def test_the_table_shows_sla_and_epsilon_out_of_budget():
    nodes = [node("edge-1", "edge")]
    console = Console(record=True, width=200)
    console.print(render(build_status(nodes, [gw("edge-1")], SAMPLES, REGISTRY)))
    text = console.export_text()
    assert "75% (3/4)" in text and "3.50 of 30" in text and "round 2 of run new" in text and "version 4" in text


def test_an_unreadable_registry_is_named_not_fatal():
    status = build_status([], None, {}, {"error": "MLflow at http://x:5000 unreadable (ConnectionError)"})
    assert status["registry"].startswith("MLflow at") and status["run"] is None
    console = Console(record=True, width=160)
    console.print(render(status))
    assert "unreadable" in console.export_text()


def test_a_site_back_on_a_new_raylet_is_one_row_and_draining_shows():
    nodes = [node("edge-1", "edge"), node("edge-1", "edge", alive=False), node("edge-2", "edge", alive=False)]
    status = build_status(nodes, [gw("edge-1", draining=True)], {}, REGISTRY)
    rows = [(r["node"], r["health"]) for r in status["nodes"]]
    assert rows == [("edge-1", "draining"), ("edge-2", "down")]  # a site that is still gone stays visible


def test_status_refuses_a_non_positive_interval():
    import argparse

    import pytest

    from edgefleet.cli.status import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--interval", "0.5"]).interval == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--interval", "0"])
