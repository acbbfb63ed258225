"""Shared fixtures. One embedded Ray fleet per test session: starting one costs ~10 s on 2 cores."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from edgefleet.config import EdgefleetConfig, PortsConfig, parse_config
from edgefleet.security import digest
from tests.background import Background

# MLflow's set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
# and a config honours those variables. edgefleet's own calls restore them (config.use_mlflow_uris);
# a test that calls MLflow directly must not leak its store into the next either.
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
for _variable in MLFLOW_URI_VARIABLES:
    os.environ.pop(_variable, None)


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_an_earlier_test() -> Iterator[None]:
    yield
    for variable in MLFLOW_URI_VARIABLES:
        os.environ.pop(variable, None)


TEST_TOKEN = "test-token-3f9a-77c1e0"  # the config holds only its hash (edgefleet.security)


_BACKGROUND = pytest.StashKey[Background]()


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect have had their say
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use background inputs (a test module's ``BACKGROUND`` jobs, see tests/background.py)
    run late, so the inputs have most of the session's idle time to be computed in; tests that kill
    fleet nodes run last, so if a node fails to come back no other test is left waiting on it (a
    Train job on a missing node's label would wait for it). The sort is stable: file order is kept
    otherwise."""
    items.sort(key=lambda item: (item.get_closest_marker("fleet_faults") is not None, bool(_background_of(item))))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Start the background jobs of the tests about to run (none for --collect-only, --setup-plan,
    or a session whose collection failed)."""
    jobs = {name: job for item in session.items for name, job in _background_of(item).items()}
    session.config.stash[_BACKGROUND] = background = Background(jobs)
    opt = session.config.option
    if not (opt.collectonly or getattr(opt, "setupplan", False) or session.testsfailed):
        background.start()


def _background_of(item: pytest.Item) -> dict:
    return getattr(getattr(item, "module", None), "BACKGROUND", {})


def pytest_unconfigure(config: pytest.Config) -> None:
    if _BACKGROUND in config.stash:
        config.stash[_BACKGROUND].shutdown()


@pytest.fixture(scope="session")
def background(request: pytest.FixtureRequest) -> Background:
    """The session's background inputs: ``background.result(name)`` waits for one."""
    return request.config.stash[_BACKGROUND]


def free_port() -> int:
    return free_ports(1)[0]


# Below the kernel's ephemeral range (32768-60999) and above Ray's worker ports (10002-19999): a
# port the OS hands out (bind to 0) is ephemeral, and any outgoing connection made before the
# server binds it (a Ray worker dialling the GCS) may take it as its local port. CI once lost
# Serve's gRPC proxy, and 98 tests with it, to that race.
_PORT_RANGE = (20000, 32000)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports outside the ephemeral range: each one is checked by binding it, and
    every socket is held until all are bound, so none repeats."""
    import random

    rng = random.Random()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            port = rng.randrange(*_PORT_RANGE)
            s = stack.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
        return ports


def make_test_config_dict(num_edge: int = 3) -> dict:
    """The embedded fleet with tiny models, the dashboard (its job server) and free ports: fast and isolated."""
    tiny = {"source": "tiny", "quantization": "none"}
    return {
        "fleet": {
            "edge_nodes": [
                {"id": f"edge-{i}", "num_cpus": 1, "actor_cpus": 0.25, "model": tiny, "network": {"rtt_ms": 5 * i}}
                for i in range(1, num_edge + 1)
            ],
            "cloud": {"num_cpus": 1, "replica_cpus": 0.25, "model": tiny},
        },
        # The dashboard hosts the job server (`ray job submit` tests).
        "ray": {"head_cpus": 1, "object_store_mb": 100, "dashboard": True},
        "federation": {"clients_per_round": min(3, num_edge), "min_clients": 1},
        "auth": {"tokens": [digest(TEST_TOKEN)]},
        # every port free, dashboard_agent too: `edgefleet up` in test_up runs beside the session fleet
        "ports": dict(zip(PortsConfig.model_fields, free_ports(len(PortsConfig.model_fields)), strict=True)),
    }


def call_until_back(call, within_s: float = 300.0):
    """``ray.get(call())``, retried while the actor is restarting, for up to ``within_s`` seconds.

    Calls in flight while an actor restarts fail with ActorUnavailableError (EdgeNode has no task
    retries: generation is not blindly retried); the caller, in production the Gateway, decides.
    A call made while the actor waits for its node to come back waits with it: after a raylet is
    killed, Ray may take over a minute (missed heartbeats) before it restarts the actor.
    """
    import time

    import ray

    deadline = time.monotonic() + within_s
    while True:
        try:
            return ray.get(call(), timeout=max(1.0, min(30.0, deadline - time.monotonic())))
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() >= deadline:
                raise AssertionError(f"actor did not come back within {within_s:.0f} s") from None
            time.sleep(0.5)


def rejoin(fleet, labels: dict[str, str], *, gone: str, attempts: int = 3):
    """Bring a killed site back as a supervisor (systemd, KubeRay) would: a new raylet with the same
    labels, started once the GCS has marked the old one (Ray node id ``gone``) dead, as a real host
    returns after its loss was noticed; and started again if it dies in its first seconds. CI once
    saw a raylet added 5 s after the kill (the old one still "alive" in the GCS) die, SIGKILLed with
    no log line, 2 s after registering; its site then never came back."""
    import time

    import ray

    deadline = time.monotonic() + 90
    while any(n["NodeID"] == gone and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, f"the GCS still lists node {gone} alive after 90 s"
        time.sleep(0.5)
    for _ in range(attempts):
        node = fleet._cluster.add_node(num_cpus=1, object_store_memory=100 * 1024**2, labels=labels)
        time.sleep(5)  # past the first seconds, where that raylet died
        if not any(kind == "raylet" for kind, _ in node.dead_processes()):
            return node
        fleet._cluster.remove_node(node, allow_graceful=False)
    raise AssertionError(f"a raylet labelled {labels} died right after starting, {attempts} times")


@contextlib.contextmanager
def side_app(data: dict, folder: Path, *, ready: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """A second Serve app (``data["app"]``, one tiny edge node) on the session fleet, built the way a
    Serve config builds it (``build_app``); removed with its edge actor afterwards."""
    import time

    from ray import serve

    from edgefleet.serve.app import build_app

    app = data["app"]
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    serve.run(build_app({"config": str(path)}), name=app, route_prefix=f"/{app}", blocking=False)
    deadline = time.monotonic() + 300
    while serve.status().applications[app].status != "RUNNING" or not ready():
        assert time.monotonic() < deadline, serve.status().applications[app]
        time.sleep(0.5)
    try:
        yield
    finally:
        remove_app(app, [node["id"] for node in data["fleet"]["edge_nodes"]])


def remove_app(app: str, edge_ids: list[str]) -> None:
    """Delete a side app and its edge actors. An app left running costs the tests after it dearly:
    two idle synthetic apps made the operations scenario ~80 s slower on 2 cores."""
    import ray
    from ray import serve

    from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name

    serve.delete(app)
    for node_id in edge_ids:
        try:
            ray.kill(ray.get_actor(actor_name(node_id, app), namespace=ACTOR_NAMESPACE))
        except ValueError:  # already gone: a test moved or removed it
            pass


@pytest.fixture(scope="session")
def fleet_config() -> EdgefleetConfig:
    return parse_config(make_test_config_dict(), source="test fleet")


@pytest.fixture(scope="session")
def fleet(fleet_config: EdgefleetConfig) -> Iterator:
    from edgefleet.platform.cluster import start_local_fleet

    # Metrics reach the endpoints every second instead of every 10 s, so the metrics tests wait less.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    # The GCS marks a killed raylet dead after 3 failed health checks 1 s apart (~5 s) instead of 5
    # checks 3 s apart (~14 s): the fault tests wait for that before a site comes back. A raylet
    # that is merely slow on 2 cores still has each check's 10 s timeout. The GCS reads them as it
    # starts; set only meanwhile, so no later subprocess (`edgefleet up` in test_up) inherits them.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_health_check_period_ms", "1000")
        env.setenv("RAY_health_check_failure_threshold", "3")
        # Every Ray process sends the GCS its tasks' state changes each second, for the dashboard's
        # task view and `ray list tasks`; no test reads them (actors and placement groups are GCS
        # tables of their own), and under traffic the Gateway's stats polls alone make ~40 actor calls a second.
        env.setenv("RAY_task_events_report_interval_ms", "0")
        f = start_local_fleet(fleet_config)
    yield f
    f.shutdown()


@pytest.fixture(scope="session")
def served(fleet, fleet_config):
    """The request path on the session fleet: EdgeNode actors, Cloud and Gateway (tiny models)."""
    from edgefleet.serve.app import deploy

    return deploy(fleet_config, timeout_s=300)


@pytest.fixture
def write_config(tmp_path: Path):
    def _write(data: dict | str, name: str = "fleet.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return _write
