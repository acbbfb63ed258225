"""A Gateway replica crashes under load: with two replicas, clients retry UNAVAILABLE before the
first token and every request still succeeds, on the other replica.

A separate Serve app ("replicas", one tiny edge node, ``ingress.gateway_replicas: 2``) keeps the
session app's Gateway whole for the tests that follow. Serve then replaces the killed replica.
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
from tests.conftest import TEST_TOKEN, make_test_config_dict, side_app  # noqa: E402

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


@pytest.fixture(scope="module")
def two_gateways(served, tmp_path_factory):
    data = make_test_config_dict(num_edge=1) | {"app": APP, "ingress": {"gateway_replicas": 2}}
    with side_app(data, tmp_path_factory.mktemp(APP), ready=lambda: len(_gateway_pids()) == 2):
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
