"""The app a Serve config builds (``edgefleet.serve.app:build_app``, what KubeRay's RayService runs),
as a second app on the session fleet ("replicas": one tiny edge node, ``ingress.gateway_replicas: 2``),
so the session app's Gateway stays whole for the tests that follow.

- A Gateway replica crashes under load: clients retry UNAVAILABLE before the first token and every
  request still succeeds, on the other replica. Serve then replaces the killed replica.
- Then the builder's other half: a redeploy reconciles the app's detached edge actors (swap the model
  live, do nothing when nothing changed, move to another node).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray")

from edgefleet.client import Client, EdgefleetClientError  # noqa: E402
from tests.conftest import TEST_TOKEN, make_test_config_dict, remove_app, side_app  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
APP = "replicas"
TOTAL, WORKERS, KILL_AFTER = 120, 6, 30


def _gateway_pids() -> list[int]:
    import psutil

    return sorted(
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if f"ServeReplica:{APP}:Gateway" in " ".join(p.info["cmdline"] or [])
    )


def _app_config() -> dict:
    return make_test_config_dict(num_edge=1) | {"app": APP, "ingress": {"gateway_replicas": 2}}


@pytest.fixture(scope="module")
def two_gateways(served, tmp_path_factory):
    with side_app(_app_config(), tmp_path_factory.mktemp(APP), ready=lambda: len(_gateway_pids()) == 2):
        yield served


def test_a_crashed_gateway_replica_costs_a_retry_not_a_request(two_gateways):
    from ray import serve

    before = _gateway_pids()
    assert len(before) == 2, before
    done: list[str] = []
    failed: list[str] = []
    killed = threading.Event()

    def one(client: Client, i: int) -> None:
        try:
            client.generate(f"request {i}", max_new_tokens=16, timeout=60)
            done.append(str(i))
        except EdgefleetClientError as e:  # recorded, asserted on below: nothing may be lost
            failed.append(f"{i}: {e.code} {e.details}")
        if len(done) >= KILL_AFTER and not killed.is_set():
            killed.set()
            os.kill(before[0], signal.SIGKILL)  # mid-load: the other workers' calls are in flight

    # Retries come from the SDK (UNAVAILABLE before the first token), with its default policy widened
    # to ride out the proxy noticing the dead replica.
    with (
        Client(
            two_gateways.grpc_address, token=TEST_TOKEN, application=APP, max_retries=8, backoff_max_s=2.0
        ) as client,
        ThreadPoolExecutor(WORKERS) as pool,
    ):
        list(pool.map(lambda i: one(client, i), range(TOTAL)))

    assert killed.is_set()
    assert not failed, failed[:5]
    assert len(done) == TOTAL
    deadline = time.monotonic() + 120  # Serve replaces the dead replica
    while not (
        serve.status().applications[APP].status == "RUNNING"
        and len(_gateway_pids()) == 2
        and before[0] not in _gateway_pids()
    ):
        assert time.monotonic() < deadline, (serve.status().applications[APP], _gateway_pids())
        time.sleep(1)


def test_the_built_app_serves_then_a_redeploy_reconciles_its_detached_edge_actors(two_gateways, write_config, tmp_path):
    from edgefleet.config import load_config
    from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name
    from edgefleet.serve.app import build_app, reconcile_edge_actors

    with Client(two_gateways.grpc_address, token=TEST_TOKEN, application=APP, default_timeout=60) as client:
        answer = client.generate("What is the capital of France?", max_new_tokens=4, site="edge-1", route="edge")
    assert answer.node_id == "edge-1" and answer.completion_tokens > 0
    data = _app_config()
    with pytest.raises(ValueError, match="only a 'config'"):
        build_app({"config": str(write_config(data)), "typo": 1})
    actor = ray.get_actor(actor_name("edge-1", APP), namespace=ACTOR_NAMESPACE)

    # A redeploy with the model changed: the same actor swaps to it, live.
    data["fleet"]["edge_nodes"][0]["model"] = {"source": "tiny:1", "quantization": "none"}
    cfg = load_config(write_config(data, "changed.yaml"))
    assert reconcile_edge_actors(cfg) == {"edge-1": "swapped"}
    info = ray.get(actor.info.remote())
    assert info.model_version == "tiny-seed1" and info.spec.source == "tiny:1"
    assert reconcile_edge_actors(cfg) == {"edge-1": "serving"}  # nothing changed: nothing done

    # A redeploy that names an adapter in the config swaps to it (a reconciler's registry adapter
    # is kept across redeploys; a configured one is not mistaken for one)
    adapter = _tiny_adapter(tmp_path / "adapter", seed=1)
    data["fleet"]["edge_nodes"][0]["model"] = {"source": "tiny:1", "quantization": "none", "adapter": str(adapter)}
    assert reconcile_edge_actors(load_config(write_config(data, "adapter.yaml"))) == {"edge-1": "swapped"}
    assert ray.get(actor.info.remote()).model_version == "tiny-seed1+adapter:adapter"

    # A redeploy that moves the app to edge-2: edge-1's actor goes, edge-2's comes.
    data["fleet"]["edge_nodes"][0]["id"] = "edge-2"
    try:
        moved = reconcile_edge_actors(load_config(write_config(data, "moved.yaml")))
        assert moved == {"edge-1": "removed", "edge-2": "serving"}
        with pytest.raises(ValueError):
            ray.get_actor(actor_name("edge-1", APP), namespace=ACTOR_NAMESPACE)
    finally:  # the fixture removes the app and the actors its config names: edge-1's, gone by now
        remove_app(APP, ["edge-2"])


def _tiny_adapter(folder, seed: int):
    """A peft LoRA adapter over ``tiny:<seed>``, non-zero so that it changes the model."""
    import torch

    from edgefleet.platform.models import build_tiny
    from edgefleet.train.dp import DEFAULT_HYPER, adapter_state, export_adapter, lora_model

    base, _ = build_tiny(seed)
    state = {k: v + 0.01 if "lora_B" in k else v for k, v in adapter_state(lora_model(base, DEFAULT_HYPER)).items()}
    with torch.no_grad():
        return export_adapter(base, state, DEFAULT_HYPER, folder)
