"""Canary rollout on the session fleet's EdgeNode actors (tiny models), with the registry in SQLite.

A version whose held-out score passed the gate but whose weights are broken (a forced regression)
is caught on the canary by the quality probe: the canary swaps back, `champion` returns to the
previous version and the reason is tagged. A sound version is promoted to every edge node.
"""

from __future__ import annotations

import pytest
import ray
import torch

from edgefleet.mlflow.registry import CHAMPION, ModelRegistry
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name
from edgefleet.platform.models import build_tiny
from edgefleet.serve.rollout import RolloutController
from edgefleet.train.data import demo_topics
from edgefleet.train.dp import DEFAULT_HYPER, adapter_state, export_adapter, lora_model
from tests.integration.test_registry import NAME, record

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def adapter(tmp_path, name, scale):
    base, _ = build_tiny(0)
    with torch.random.fork_rng():
        torch.manual_seed(DEFAULT_HYPER.seed)
        state = adapter_state(lora_model(base, DEFAULT_HYPER))
    gen = torch.Generator().manual_seed(1)
    state = {k: v + scale * torch.randn(v.shape, generator=gen) if "lora_B" in k else v for k, v in state.items()}
    return export_adapter(base, state, DEFAULT_HYPER, tmp_path / name)


def serving(cfg):
    return {
        n.id: ray.get(ray.get_actor(actor_name(n.id, cfg.app), namespace=ACTOR_NAMESPACE).info.remote())[
            "model_version"
        ]
        for n in cfg.fleet.edge_nodes
    }


def test_a_forced_regression_is_rolled_back_and_a_sound_version_promoted(served, fleet_config, tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, outbox=tmp_path / "outbox")
    good, broken = adapter(tmp_path, "good", 1e-3), adapter(tmp_path, "broken", 3.0)
    texts = list(demo_topics().values())[:4]
    ctl = RolloutController(fleet_config, reg, canaries=["edge-1"], window_s=2.0, probe_texts=texts)
    actors = {
        n.id: ray.get_actor(actor_name(n.id, fleet_config.app), namespace=ACTOR_NAMESPACE)
        for n in fleet_config.fleet.edge_nodes
    }
    try:
        assert reg.publish(record(1, 5.0, run="rollout"), good) == "1"
        assert reg.publish(record(2, 4.0, run="rollout"), broken) == "2"  # its claimed score passes the gate
        assert CHAMPION in reg.show("2")["aliases"]

        report = ctl.roll_out("2")

        print(report.verdict, report.canary, report.rest)
        assert not report.verdict.promote and "probe loss" in report.verdict.reason
        assert CHAMPION in reg.show("1")["aliases"]  # champion is back on the previous version
        assert "canary regressed" in reg.show("2")["tags"]["edgefleet.rolled_back"]
        now = serving(fleet_config)
        assert now["edge-1"].endswith(f"+adapter:{NAME}-v1")  # the canary serves version 1 again
        assert "+adapter" not in now["edge-2"] and "+adapter" not in now["edge-3"]  # never touched

        assert reg.publish(record(3, 3.0, run="rollout"), good) == "3"
        report = ctl.roll_out("3")

        assert report.verdict.promote, report.verdict.reason
        assert all(v.endswith(f"+adapter:{NAME}-v3") for v in serving(fleet_config).values())  # on every node
        assert "promoted to all edge nodes" in reg.show("3")["tags"]["edgefleet.rollout"]
    finally:  # the session fleet goes back to its configured models for the tests that follow
        ray.get([actors[n.id].swap_model.remote(n.model) for n in fleet_config.fleet.edge_nodes])
