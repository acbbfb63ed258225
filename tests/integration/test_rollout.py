"""Canary rollout on the session fleet's EdgeNode actors (tiny models), with the registry in SQLite.

A version whose held-out score passed the gate but whose weights are broken (a forced regression)
is caught on the canary by the chat probe: the canary swaps back, `champion` returns to the
previous version and the reason is tagged. A sound version whose users rate its answers worse than
the old version's (live feedback through the SDK) is rolled back too. A sound version the users do
not mind is promoted to every edge node.

Faults: the reconciler is killed (SIGKILL, a separate process) in the middle of a canary window and
edge nodes are killed (Ray restarts them on the config's base model) during rollouts; a new
reconciler, with no manual step, ends with every node on the champion, or with the canaries
reverted and the broken version marked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml

from edgefleet.client import Client
from edgefleet.eval.sites import GENERAL_EXAMPLES
from edgefleet.mlflow.registry import CHAMPION, ModelRegistry
from edgefleet.platform.chat import ChatExample
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name
from edgefleet.platform.models import build_tiny
from edgefleet.serve.convergence import CANARY_SINCE, PROMOTED, REJECTED
from edgefleet.serve.reconciler import Reconciler
from edgefleet.serve.rollout import RolloutController
from edgefleet.train.dp import DEFAULT_HYPER, adapter_state, export_adapter, lora_model
from tests.conftest import TEST_TOKEN, call_until_back
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
        n.id: ray.get(ray.get_actor(actor_name(n.id, cfg.app), namespace=ACTOR_NAMESPACE).info.remote()).model_version
        for n in cfg.fleet.edge_nodes
    }


def users(served, version: str, *, dislike: bool):
    """The sites' users ask and rate each answer until the canaries' ``version`` and the rest have
    12 ratings each; they rate every answer good, except (``dislike``) the new version's."""

    def ask_and_rate() -> None:
        rated = {True: 0, False: 0}  # served by the new version?
        with Client(served.grpc_address, token=TEST_TOKEN, default_timeout=60) as client:
            for i in range(60):
                if min(rated.values()) >= 12:
                    return
                done = client.generate(f"Question {i}?", site=("edge-1", "edge-2")[i % 2], max_new_tokens=4)
                new = done.model_version.endswith(f"{NAME}-v{version}")
                liked = not (dislike and new)
                client.feedback(done, good=liked, correction="" if liked else "A better answer.")
                rated[new] += 1

    return ask_and_rate


def test_a_forced_regression_is_rolled_back_and_a_sound_version_promoted(served, fleet_config, tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, outbox=tmp_path / "outbox")
    good, broken = adapter(tmp_path, "good", 1e-3), adapter(tmp_path, "broken", 3.0)
    probe = list(GENERAL_EXAMPLES[:4])
    ctl = RolloutController(fleet_config, reg, canaries=["edge-1"], window_s=2.0, probe=probe)
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
        # the rest served version 2's predecessor throughout: the canary was judged against it
        assert now["edge-2"].endswith(f"+adapter:{NAME}-v1") and now["edge-3"].endswith(f"+adapter:{NAME}-v1")
        assert report.before["edge-2"] == report.before["edge-3"] == "tiny-seed0"  # whence they came

        # sound weights, but its users rate its answers bad while the old version's are rated good
        assert reg.publish(record(3, 3.0, run="rollout"), good) == "3"
        ctl.live_traffic = users(served, "3", dislike=True)
        report = ctl.roll_out("3")

        print(report.verdict, report.canary, report.rest)
        assert not report.verdict.promote and "users rated 0% of answers good vs 100%" in report.verdict.reason
        assert report.canary.ratings.bad >= 12 and report.rest.ratings.good >= 12
        assert report.canary.probe_loss <= report.rest.probe_loss + 0.05  # the chat probe alone let it pass
        assert CHAMPION in reg.show("1")["aliases"] and serving(fleet_config)["edge-1"].endswith(f"{NAME}-v1")

        assert reg.publish(record(4, 2.0, run="rollout"), good) == "4"
        ctl.live_traffic = users(served, "4", dislike=False)
        report = ctl.roll_out("4")

        assert report.verdict.promote, report.verdict.reason
        assert "users' good ratings 100% (rest 100%)" in report.verdict.reason
        assert all(v.endswith(f"+adapter:{NAME}-v4") for v in serving(fleet_config).values())  # on every node
        assert "promoted to all edge nodes" in reg.show("4")["tags"]["edgefleet.rollout"]

        # the window itself fails (a probe no node can score): the canary goes back, unjudged
        assert reg.publish(record(5, 1.0, run="rollout"), good) == "5"
        ctl.live_traffic, ctl.probe = None, [ChatExample("word " * 400, "x")]
        report = ctl.roll_out("5")

        assert not report.verdict.promote and "window failed, rolled back unjudged" in report.verdict.reason
        assert CHAMPION in reg.show("4")["aliases"]
        assert all(v.endswith(f"+adapter:{NAME}-v4") for v in serving(fleet_config).values())
    finally:  # the session fleet goes back to its configured models for the tests that follow
        ray.get([actors[n.id].swap_model.remote(n.model) for n in fleet_config.fleet.edge_nodes])


RECONCILER = """
import sys, threading
import ray
from edgefleet.config import load_config
from edgefleet.eval.sites import GENERAL_EXAMPLES
from edgefleet.mlflow.registry import ModelRegistry
from edgefleet.serve.reconciler import Reconciler
from edgefleet.serve.rollout import RolloutController

config, address, tracking_uri, name, outbox = sys.argv[1:]
ray.init(address=address, logging_level="ERROR")
registry = ModelRegistry(tracking_uri, name, outbox=outbox)
probe = list(GENERAL_EXAMPLES[:4])
ctl = RolloutController(load_config(config), registry, canaries=["edge-1"], window_s=600.0, probe=probe)
Reconciler(ctl).run(threading.Event(), interval_s=0.5)
"""


def spawn_reconciler(fleet, fleet_config, reg, folder: Path) -> subprocess.Popen:
    """A reconciler in a process of its own, as `edgefleet up` runs one, with a window so long that
    it is surely killed in the middle of it."""
    config = folder / "fleet.yaml"
    config.write_text(yaml.safe_dump(fleet_config.model_dump(mode="json")))
    args = [str(config), fleet.address, reg.uri, reg.name, str(reg.outbox)]
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen([sys.executable, "-c", RECONCILER, *args], cwd=root, start_new_session=True)


def wait_for(condition, what: str, within_s: float = 240.0):
    deadline = time.monotonic() + within_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"not within {within_s:.0f} s: {what}"
        time.sleep(0.2)
    return found


def crash(actor) -> None:
    """Kill an EdgeNode actor the way a crash would: Ray restarts it on the config's base model."""
    pid = ray.get(actor.info.remote()).pid
    ray.kill(actor, no_restart=False)  # returns before the actor is gone: wait for its successor
    wait_for(lambda: call_until_back(lambda: actor.info.remote(), within_s=120).pid != pid, "the actor restarts")


def test_killed_nodes_and_a_killed_reconciler_mid_rollout_end_with_every_node_on_the_champion(
    served, fleet, fleet_config, tmp_path
):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, outbox=tmp_path / "outbox")
    good, broken = adapter(tmp_path, "good", 1e-3), adapter(tmp_path, "broken", 3.0)
    actors = {
        n.id: ray.get_actor(actor_name(n.id, fleet_config.app), namespace=ACTOR_NAMESPACE)
        for n in fleet_config.fleet.edge_nodes
    }
    on = lambda v: lambda: {n: s.endswith(f"+adapter:{NAME}-v{v}") for n, s in serving(fleet_config).items()}  # noqa: E731
    probe = list(GENERAL_EXAMPLES[:4])
    proc = None
    try:
        # The first champion: the fleet started without one (no node gets it until a reconciler runs).
        assert reg.publish(record(1, 5.0, run="faults"), good) == "1"
        proc = spawn_reconciler(fleet, fleet_config, reg, tmp_path)
        wait_for(lambda: on(1)()["edge-1"], "the reconciler swaps the canary to v1")
        os.killpg(proc.pid, signal.SIGKILL)  # mid-window: the canary on v1, the rest on the base model
        proc.wait(timeout=30)
        tags = reg.show("1")["tags"]
        assert CANARY_SINCE in tags and PROMOTED not in tags and REJECTED not in tags  # half done
        crash(actors["edge-1"])  # and the canary restarts, on the base model
        assert not on(1)()["edge-1"]

        # A new reconciler, with nothing but the registry and the nodes to go on, finishes it.
        ctl = RolloutController(fleet_config, reg, canaries=["edge-1"], window_s=1.0, probe=probe)
        report = Reconciler(ctl).settle("1")

        assert report.verdict.promote, report.verdict.reason
        assert all(on(1)().values()) and "promoted to all edge nodes" in reg.show("1")["tags"][PROMOTED]

        # A broken champion, with a reconciler running; a node outside the canary restarts meanwhile.
        assert reg.publish(record(2, 4.0, run="faults"), broken) == "2"
        stop, steps = threading.Event(), []
        running = threading.Thread(target=Reconciler(ctl, on_step=steps.append).run, args=(stop, 0.2), daemon=True)
        running.start()
        wait_for(lambda: on(2)()["edge-1"], "the reconciler swaps the canary to v2")
        crash(actors["edge-3"])  # back on the base model: it must return to v1, not stay there
        wait_for(lambda: REJECTED in reg.show("2")["tags"], "the broken v2 is rejected")
        wait_for(lambda: all(on(1)().values()), "every node back on v1")
        stop.set()
        running.join(timeout=60)

        assert reg.champion_version() == "1"
        assert "canary regressed" in reg.show("2")["tags"][REJECTED]
        assert not [s for s in steps if isinstance(s, Exception)], steps
        assert ctl.registry is reg and Reconciler(ctl).reconcile_once()[-1].plan.idle  # nothing left to do
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        ray.get([actors[n.id].swap_model.remote(n.model) for n in fleet_config.fleet.edge_nodes])
