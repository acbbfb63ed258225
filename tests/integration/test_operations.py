"""Operations on the session fleet: edgefleet's metrics on Ray's metrics endpoints, `edgefleet status`,
and `edgefleet federate` submitted with `ray job submit` to the fleet's job server.

One module-scoped scenario drives everything an operator would see: ordinary traffic with
deadlines, refused requests, a slow site that gets hedged to the cloud, an edge actor killed
mid-request (failover), a queue burst, a federated round run as a Ray Job whose driver is
SIGKILLed after the round's sum was revealed, charged and aggregated (its Train sessions die with it
and give their nodes back), the same job resubmitted (it finishes the round from disk, without
training again), and a canary rollout of the version it registered. A scraper thread reads every
node's metrics endpoint all along, as Prometheus would, and keeps the largest value it saw of each
series.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from edgefleet import metrics  # noqa: E402
from edgefleet.client import Client, InvalidRequest, Unauthenticated  # noqa: E402
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name  # noqa: E402
from tests.conftest import TEST_TOKEN, call_until_back, make_test_config_dict  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
QUESTION = "What is the capital of France?"
ROOT = Path(__file__).resolve().parents[2]


def _edge(node_id: str):
    return ray.get_actor(actor_name(node_id), namespace=ACTOR_NAMESPACE)


class Scraper:
    """Scrapes every live node's endpoint every ``period_s``; keeps each (series, labels)'s largest value.

    Once a second: every scrape makes each node's agent render all of Ray's series, ~0.3 of a core
    at twice a second here, and a held gauge is re-exported every second anyway."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.period_s, self.seen, self.stop = period_s, {}, threading.Event()
        self.resting = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.resting.is_set():
                self.once()
            self.stop.wait(self.period_s)

    @contextlib.contextmanager
    def rest(self) -> Iterator[None]:
        """No scrapes meanwhile: for a stretch that sets no series anyone checks."""
        self.resting.set()
        try:
            yield
        finally:
            self.resting.clear()

    def once(self) -> None:
        for name, samples in metrics.scrape(metrics.endpoints(ray.nodes()), timeout_s=2).items():
            for labels, value in samples:
                key = (name, tuple(sorted((k, v) for k, v in labels.items() if k in _OURS)))
                self.seen[key] = max(value, self.seen.get(key, value))

    def max_of(self, series: str, **labels: str) -> float:
        values = [v for (name, ls), v in self.seen.items() if name == series and labels.items() <= dict(ls).items()]
        return max(values, default=0.0)


_OURS = {t for m in metrics.METRICS for t in m.tags}  # Ray adds WorkerId, SessionName...: not ours


def _federate_job_config(tmp_path: Path) -> Path:
    # Two of the fleet's three edge nodes take part: each client costs a Ray Train session per job
    # (four processes, ~7 s of imports), and two are what secure aggregation needs. Both train every
    # round; sampling some of three across a crash and resume is test_coordinator_rounds' (in-process).
    data = make_test_config_dict(num_edge=2) | {"cache_dir": str(tmp_path / "cache")}
    data["federation"] = {
        "clients_per_round": 2,
        "min_clients": 2,
        "local_steps": 4,
        "batch_size": 32,
        "block_size": 64,
        "lr": 0.02,
        "round_timeout_s": 120,
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def operated(served, fleet, fleet_config, tmp_path_factory):
    """Run the scenario once; yields what the tests check."""
    tmp = tmp_path_factory.mktemp("operations")
    cfg_path = _federate_job_config(tmp)
    scraper = Scraper()
    scraper.thread.start()
    out: dict = {"cfg_path": cfg_path, "scraper": scraper}
    try:
        with Client(served.grpc_address, token=TEST_TOKEN, default_timeout=120) as client:
            before = _settled_counts()  # earlier tests' last requests may still be on their way to the endpoints
            _traffic(client)  # 13 answers
            _refusals(client, served)  # 2 refusals
            out["counted"] = _settled_delta(before, expected={"ok": 13, "rejected": 2})
            out["hedged"] = _slow_site_gets_hedged(client)
            out["failed_over"] = _edge_killed_mid_request(client)
            _queue_burst(client)
        with scraper.rest():  # the killed driver dies before it commits: it sets none of the series checked
            out["killed_job"] = _federate_as_ray_job(fleet_config, cfg_path, tmp, "killed", crash_after="1:aggregated")
        out["state_after_kill"] = json.loads((_run_dir(cfg_path) / "state.json").read_text())
        out["killed_groups"] = _placement_groups_of(out["killed_job"]["ray_job_id"], fleet)
        out["job"] = _federate_as_ray_job(fleet_config, cfg_path, tmp, "resubmitted")
        assert out["job"]["returncode"] == 0, out["job"]["output"][-4000:]
        out["models"] = json.loads(_cli(cfg_path, "models", "list", "--json").stdout)
        out["rollout"] = _roll_out_the_new_champion(fleet_config, cfg_path)
        with Client(served.grpc_address, token=TEST_TOKEN, default_timeout=120) as client:
            _traffic(client, n=6)  # the last minute's SLA window, on the rolled-out model
        # What an operator runs next, side by side (each CLI mostly imports; the fleet is idle now)
        with ThreadPoolExecutor(3) as pool:
            status = pool.submit(_cli, cfg_path, "status", "--json", "--address", fleet.address)
            table = pool.submit(_cli, cfg_path, "status", "--once", "--address", fleet.address, ok=False, columns=200)
            unknown = pool.submit(_cli, cfg_path, "models", "show", "99", ok=False)
            out["status"], out["status_table"] = json.loads(status.result().stdout), table.result()
            out["unknown_version"] = unknown.result()
        time.sleep(3)  # two more report intervals: the last gauges reach the endpoints
        scraper.once()
        yield out
    finally:
        scraper.stop.set()


def _request_counts() -> dict[str, float]:
    """Total of ray_edgefleet_requests_total by outcome, over every node's endpoint, now."""
    samples = metrics.scrape(metrics.endpoints(ray.nodes()), timeout_s=2).get("ray_edgefleet_requests_total", [])
    out: dict[str, float] = {}
    for labels, value in samples:
        out[labels["outcome"]] = out.get(labels["outcome"], 0.0) + value
    return out


def _settled_counts(timeout_s: float = 30) -> dict[str, float]:
    """The counts once two reads 2.5 s apart (more than two report intervals) agree."""
    deadline = time.monotonic() + timeout_s
    last = _request_counts()
    while time.monotonic() < deadline:
        time.sleep(2.5)
        now = _request_counts()
        if now == last:
            return now
        last = now
    return last


def _settled_delta(before: dict[str, float], expected: dict[str, int], timeout_s: float = 30) -> dict[str, float]:
    """How much each outcome grew since ``before``, once the counters reached ``expected`` and held still
    for two report intervals (a double count would show as more than expected)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = _request_counts()
        delta = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in set(now) | set(before)}
        if all(delta.get(k, 0) >= v for k, v in expected.items()) or time.monotonic() > deadline:
            time.sleep(2.5)
            now = _request_counts()
            return {k: v for k in set(now) | set(before) if (v := now.get(k, 0.0) - before.get(k, 0.0))}
        time.sleep(0.5)


def _traffic(client: Client, n: int = 12) -> None:
    for i in range(n):
        site = f"edge-{i % 3 + 1}"
        client.generate(QUESTION, max_new_tokens=8, site=site, timeout=30)
    client.generate(QUESTION, max_new_tokens=8, route="cloud", timeout=30)


def _refusals(client: Client, served) -> None:
    with pytest.raises(InvalidRequest):
        client.generate(QUESTION, max_new_tokens=5000)
    with Client(served.grpc_address, token="wrong-token", default_timeout=30) as stranger:
        with pytest.raises(Unauthenticated):
            stranger.generate(QUESTION, max_new_tokens=4)


def _slow_site_gets_hedged(client: Client) -> str:
    """edge-1 answers 3 s late: its first token misses the hedge timer and the cloud copy wins."""
    for _ in range(40):  # the hedge budget earns 5% of a hedge per request: fill it
        client.generate(QUESTION, max_new_tokens=2, route="cloud")
    victim = _edge("edge-1")
    ray.get(victim.inject_delay.remote(3.0))
    try:
        chunks = list(client.stream(QUESTION, max_new_tokens=8, site="edge-1", timeout=30))
    finally:
        ray.get(victim.inject_delay.remote(0.0))
    return chunks[-1].completion.route_reason


def _edge_killed_mid_request(client: Client) -> str:
    """edge-2's actor dies while a request waits on it: the Gateway fails over to another edge."""
    victim = _edge("edge-2")
    ray.get(victim.inject_delay.remote(5.0))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: client.generate(QUESTION, max_new_tokens=4, site="edge-2", route="edge"))
        time.sleep(1.5)
        ray.kill(victim, no_restart=False)  # Ray restarts it (max_restarts); the delay is gone with the old one
        answer = pending.result(timeout=120)
    call_until_back(victim.info.remote)
    return answer.route_reason


def _queue_burst(client: Client) -> None:
    """More concurrent requests than edge-3's batch holds: some wait in its queue. Long enough (several
    seconds) that Ray's 1 s metric export sees the gauge non-zero: a 2-wave burst sometimes drained first."""
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(lambda _: client.generate(QUESTION, max_new_tokens=128, site="edge-3", route="edge"), range(120)))


def _federate_as_ray_job(fleet_config, cfg_path: Path, tmp: Path, name: str, crash_after: str = "") -> dict:
    """`ray job submit -- edgefleet federate --rounds 1 --run ray-job`; with ``crash_after`` its driver
    SIGKILLs itself at that step (edgefleet.cli.federate.CRASH_ENV, set through the job's runtime env)."""
    from edgefleet.cli.federate import CRASH_ENV

    ray_cli = Path(sys.executable).parent / "ray"
    job_id = f"edgefleet-federate-{name}-{int(time.time())}"
    dashboard = f"http://127.0.0.1:{fleet_config.ports.dashboard}"
    env_vars = {"COLUMNS": "250"} | ({CRASH_ENV: crash_after} if crash_after else {})  # a table row on one line
    submit = subprocess.run(
        [
            str(ray_cli),
            "job",
            "submit",
            "--address",
            dashboard,
            "--submission-id",
            job_id,
            "--runtime-env-json",
            json.dumps({"env_vars": env_vars}),
            "--",
            sys.executable,
            "-m",
            "edgefleet.cli",
            "-c",
            str(cfg_path),
            "federate",
            "--rounds",
            "1",
            "--run",
            "ray-job",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )
    from ray.job_submission import JobSubmissionClient

    try:
        info = JobSubmissionClient(dashboard).get_job_info(job_id)
        status, exit_code, ray_job_id = str(info.status), info.driver_exit_code, info.job_id
    except RuntimeError as exc:  # the submission itself failed: the CLI's output says why
        status, exit_code, ray_job_id = f"not found ({exc})", None, None
    output = submit.stdout + submit.stderr
    return {
        "returncode": submit.returncode,
        "status": status,
        "exit": exit_code,
        "output": output,
        "ray_job_id": ray_job_id,
    }


def _placement_groups_of(ray_job_id: str | None, fleet, within_s: float = 60) -> dict[str, str]:
    """The killed driver's placement groups (its Train sessions' reservations on the edge nodes) and
    their states, once all are removed or ``within_s`` seconds after it died: one still held is what
    a new session on those nodes would wait on."""
    from ray.util.state import list_placement_groups

    deadline = time.monotonic() + within_s
    while True:
        groups = list_placement_groups(address=fleet.dashboard_url, filters=[("creator_job_id", "=", ray_job_id)])
        states = {g.placement_group_id: g.state for g in groups}
        if all(s == "REMOVED" for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def _roll_out_the_new_champion(fleet_config, cfg_path: Path):
    from edgefleet.config import load_config
    from edgefleet.mlflow.registry import ModelRegistry
    from edgefleet.serve.rollout import RolloutController
    from edgefleet.train.data import demo_topics

    registry = ModelRegistry.from_config(load_config(cfg_path))
    versions = registry.versions()
    assert versions, "the federated round registered no model version"
    champion = registry.champion_version()
    if champion is None:  # the gate kept it a candidate (one short round): promote it as an operator would
        champion = versions[-1]["version"]
        registry.promote(champion, "operations test")
    ctl = RolloutController(
        fleet_config, registry, canaries=["edge-1"], window_s=2.0, probe=list(demo_topics().values())[:2]
    )
    try:
        return ctl.roll_out(champion)
    finally:  # the session fleet goes back to its configured models for the tests that follow
        edges = {n.id: _edge(n.id) for n in fleet_config.fleet.edge_nodes}
        ray.get([edges[n.id].swap_model.remote(n.model) for n in fleet_config.fleet.edge_nodes])


def _cli(cfg_path: Path, *args: str, ok: bool = True, columns: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)} if columns else None
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "-c", str(cfg_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0 or not ok, out.stderr[-3000:]
    return out


# ---------------------------------------------------------------- Ray Jobs


def _run_dir(cfg_path: Path) -> Path:
    """The federate job's run directory (`--run ray-job`, under the job config's cache)."""
    return cfg_path.parent / "cache" / "federation" / "ray-job"


def _completed_rounds(operated) -> list[dict]:
    return json.loads((_run_dir(operated["cfg_path"]) / "state.json").read_text())["completed"]


def test_federate_as_a_ray_job_killed_after_an_aggregation_finishes_the_round_when_resubmitted(operated):
    killed, job = operated["killed_job"], operated["job"]
    # SIGKILLed (the entrypoint runs under sh -c: -9, or 128 + 9 from the shell), exactly at its step
    assert killed["status"] == "FAILED" and killed["exit"] in (-9, 137), (killed["exit"], killed["output"][-4000:])
    after_kill = operated["state_after_kill"]
    assert after_kill["completed"] == [] and after_kill["current"]["status"] == "aggregated"
    assert "round 1:" not in killed["output"]  # it died before committing round 1
    # one reservation per Train session (two clients), each given back when the driver died
    assert len(operated["killed_groups"]) >= 2 and set(operated["killed_groups"].values()) == {"REMOVED"}
    assert job["returncode"] == 0 and job["status"] == "SUCCEEDED", job["output"][-4000:]
    assert "resuming (round 1 was in progress)" in job["output"]
    # the job's log is the CLI's round line, then its table: round 1 finished from disk, not retrained
    assert "round 1:" in job["output"] and "ε edge-1" in job["output"]
    rounds = _completed_rounds(operated)
    assert [(r["round"], r["attempt"]) for r in rounds] == [(1, 1)]
    assert len((_run_dir(operated["cfg_path"]) / "rounds.jsonl").read_text().splitlines()) == 1  # committed once


def test_nobodys_epsilon_is_counted_twice_or_skipped_across_the_kill(operated):
    rounds = _completed_rounds(operated)
    db = sqlite3.connect(_run_dir(operated["cfg_path"]) / "ledger.sqlite")
    charged = dict(db.execute("SELECT client, COUNT(*) FROM releases GROUP BY client").fetchall())
    finished = {n: sum(n in r["finished"] for r in rounds) for n in ("edge-1", "edge-2")}
    assert charged == {n: k for n, k in finished.items() if k}
    assert db.execute("SELECT COUNT(*) FROM releases WHERE round > 1").fetchone() == (0,)


def test_every_committed_round_became_exactly_one_registry_version(operated):
    versions = operated["models"]  # `edgefleet models list --json` right after the resubmitted job
    assert sorted(v["tags"]["edgefleet.round"] for v in versions) == ["1"]
    assert all(v["tags"]["edgefleet.run"] == "ray-job" for v in versions)
    assert "candidate" in versions[-1]["aliases"]
    unknown = operated["unknown_version"]  # `edgefleet models show 99`
    assert unknown.returncode == 2 and "no version 99" in unknown.stderr and len(unknown.stderr.splitlines()) == 1


# ---------------------------------------------------------------- metrics


def test_the_scenario_hedged_and_failed_over(operated):
    assert "hedged to cloud" in operated["hedged"], operated["hedged"]
    assert "edge-2 failed" in operated["failed_over"], operated["failed_over"]


@pytest.mark.parametrize("spec", metrics.METRICS, ids=lambda m: m.name)
def test_every_metric_is_exported_with_a_nonzero_value(operated, spec):
    scraper = operated["scraper"]
    series = spec.series[-1] if spec.kind == "histogram" else spec.exported  # a histogram's _count
    assert scraper.max_of(series) > 0, f"{series} never non-zero; seen: {sorted({n for n, _ in scraper.seen})}"


def test_each_request_is_counted_exactly_once_by_outcome(operated):
    assert operated["counted"] == {"ok": 13, "rejected": 2}


def test_metrics_say_where_requests_ran_and_why_some_were_refused(operated):
    s = operated["scraper"]
    for node in ("edge-1", "edge-2", "edge-3", "cloud"):
        assert s.max_of("ray_edgefleet_requests_total", node=node, outcome="ok") > 0, node
    assert s.max_of("ray_edgefleet_rejections_total", reason="invalid_argument") >= 1
    assert s.max_of("ray_edgefleet_rejections_total", reason="unauthenticated") >= 1
    assert s.max_of("ray_edgefleet_hedges_total", node="edge-1") >= 1
    assert s.max_of("ray_edgefleet_failovers_total", node="edge-2") >= 1
    assert s.max_of("ray_edgefleet_sla_total", result="met") > 0
    assert s.max_of("ray_edgefleet_federation_round", run="ray-job") == 1
    verdict = "promoted" if operated["rollout"].verdict.promote else "rolled_back"
    assert s.max_of("ray_edgefleet_rollout_state", state=verdict) == 1


# ---------------------------------------------------------------- edgefleet status


def test_status_json_shows_every_node_live_with_round_champion_and_epsilon(operated, fleet_config):
    status = operated["status"]
    rows = {r["node"]: r for r in status["nodes"] if r["alive"]}
    assert {"edge-1", "edge-2", "edge-3", "cloud", "head"} <= set(rows)
    assert status["gateway"] == "ok"
    for node in ("edge-1", "edge-2", "edge-3", "cloud"):
        row = rows[node]
        assert row["health"] == "serving", row
        assert row["labels"]["edgefleet.io/node"] == node
        assert row["queue_depth"] >= 0 and row["model_version"]
    recent = [rows[n] for n in ("edge-1", "edge-2", "edge-3")]
    assert any(r["tokens_per_s"] > 0 for r in recent)
    assert all(r["sla_attainment"] is None or 0 <= r["sla_attainment"] <= 1 for r in recent)
    assert sum(r["sla_judged"] for r in recent) >= 6  # the last traffic, all with deadlines
    assert status["run"] == "ray-job" and status["round"] == 1
    assert status["champion_version"] == int(operated["rollout"].version) or status["rollout_state"] == "rolled_back"
    rounds = _completed_rounds(operated)
    spent = {c for c, e in status["epsilon"].items() if e["spent"] > 0}
    assert spent == {c for r in rounds for c in r["finished"]}
    budget = fleet_config.privacy.client_budget_epsilon
    assert all(e["budget"] == budget and e["spent"] < budget for e in status["epsilon"].values())


def test_status_table_prints_once_for_scripts(operated):
    out = operated["status_table"]  # `edgefleet status --once` at 200 columns
    assert out.returncode == 0, out.stderr[-3000:]
    for text in ("edgefleet fleet", "edge-1", "cloud", "serving", "round 1 of run ray-job", "champion"):
        assert text in out.stdout, out.stdout
