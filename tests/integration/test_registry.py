"""The MLflow registry with real MLflow: a SQLite store, and a real `mlflow server` on loopback.

Each round's adapter becomes a version with lineage tags and the alias `candidate`; the gate moves
`champion`; plain MLflow loads `models:/…@champion` and generates; a server that is down leaves
rounds in the outbox until it answers, then they are published in order, with their tags. A
publisher stopped after any step of a publication finishes it on its next flush: one version per
round, each gated (SQLite for every step, a real server for a few).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow
import pytest
import torch

from edgefleet.mlflow.outbox import RoundKey
from edgefleet.mlflow.registry import (
    CANDIDATE,
    CHAMPION,
    ROLLED_BACK_TAG,
    ROLLOUT_TAG,
    STEPS,
    ModelRegistry,
    RoundRecord,
    gate,
)
from edgefleet.platform.models import build_tiny
from edgefleet.train.dp import DEFAULT_HYPER, adapter_state, export_adapter, lora_model
from tests.conftest import free_port

pytestmark = pytest.mark.slow
NAME = "edgefleet-edge-llm"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    base, _ = build_tiny(0)
    with torch.random.fork_rng():
        torch.manual_seed(DEFAULT_HYPER.seed)
        adapter = adapter_state(lora_model(base, DEFAULT_HYPER))
    adapter = {k: v + 0.01 if "lora_B" in k else v for k, v in adapter.items()}
    return export_adapter(base, adapter, DEFAULT_HYPER, tmp_path_factory.mktemp("adapter") / "peft")


def record(round_id: int, loss: float, run: str = "run-a", eps: float = 2.0) -> RoundRecord:
    return RoundRecord(
        run=run,
        round=round_id,
        strategy="fedavg",
        clients=["edge-1", "edge-2"],
        train_loss=loss + 0.1,
        held_out_loss=loss,
        perplexity=2.718**loss,
        epsilon={"edge-1": eps, "edge-2": eps * 0.9},
        delta=1e-5,
        budget_epsilon=30.0,
        user_epsilon=None,
        base_model={"source": "tiny", "quantization": "none"},
        params={"strategy": "fedavg", "clients_per_round": 2},
    )


def test_rounds_become_versions_with_lineage_the_gate_moves_champion_and_plain_mlflow_generates(tmp_path, adapter_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = ModelRegistry(uri, NAME, outbox=tmp_path / "outbox", margin=0.05)

    v1 = reg.publish(record(1, 5.0), adapter_dir)
    v2 = reg.publish(record(2, 4.99), adapter_dir)  # not better by the margin: held
    v3 = reg.publish(record(3, 4.0), adapter_dir)
    again = reg.publish(record(3, 4.0), adapter_dir)  # a coordinator publishing again after a restart

    assert (v1, v2, v3, again) == ("1", "2", "3", "3")
    versions = {v["version"]: v for v in reg.versions()}
    assert (
        versions["2"]["tags"]["edgefleet.gate"] == "held"
        and "does not beat" in versions["2"]["tags"]["edgefleet.gate_reason"]
    )
    assert CHAMPION in versions["3"]["aliases"] and CANDIDATE in versions["3"]["aliases"]
    tags = versions["3"]["tags"]
    assert tags["edgefleet.round"] == "3" and tags["edgefleet.parent_version"] == "2"
    assert tags["edgefleet.data_lineage"] == "edge-1,edge-2" and tags["edgefleet.base_model"] == "tiny"
    assert tags["edgefleet.previous_champion"] == "1" and float(tags["edgefleet.epsilon_max"]) == 2.0

    client = mlflow.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(tags["edgefleet.mlflow_run_id"], "held_out_loss")
    assert [m.step for m in history] == [1, 2, 3]
    latest = reg.latest_run()  # what `edgefleet status` shows
    assert latest["run"] == "run-a" and latest["round"] == 3
    assert latest["epsilon"] == pytest.approx({"edge-1": 2.0, "edge-2": 1.8}) and latest["budget"] is None

    llm = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    out = llm.predict(["What is the capital of France?"], params={"max_new_tokens": 4})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)

    assert reg.rollback("forced regression in a test") == "1"
    assert CHAMPION in reg.show("1")["aliases"]
    assert reg.show("3")["tags"]["edgefleet.rolled_back"] == "forced regression in a test"


def start_server(port: int, tmp_path) -> subprocess.Popen:
    from edgefleet.mlflow import server

    proc = server.spawn(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", port, log=subprocess.DEVNULL, workers=1
    )
    if server.wait_healthy(proc, f"http://127.0.0.1:{port}", timeout_s=90):
        return proc
    exited = proc.poll()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its uvicorn worker too, which would keep the port
    raise AssertionError(f"mlflow server exited with {exited}" if exited is not None else "no /health within 90 s")


class LazyServer:
    """One real `mlflow server` for the module, started by the first test that needs it up (one
    start costs ~15 s here); until then its port answers nothing."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder, self.proc = free_port(), folder, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is None:
            self.proc = start_server(self.port, self.folder)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = LazyServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def test_against_a_real_mlflow_server_rounds_that_end_while_it_is_down_wait_in_the_outbox(
    tmp_path, adapter_dir, mlflow_server
):
    """The server is down (not yet started) while rounds 1 and 2 end; once it is up, the next
    round's publish registers all three, in order."""
    uri = mlflow_server.uri
    reg = ModelRegistry(uri, NAME, outbox=tmp_path / "outbox")

    assert reg.publish(record(1, 5.0, run="run-b"), adapter_dir) is None  # the server is down: nothing lost
    assert reg.publish(record(2, 4.5, run="run-b"), adapter_dir) is None
    assert len(reg.pending()) == 2
    assert [e.state.attempts for e in reg.outbox.entries()] == [0, 0]  # unreachable is no failed attempt

    mlflow_server.start()
    assert reg.publish(record(3, 4.0, run="run-b"), adapter_dir) == "3"
    versions = {v["version"]: v for v in reg.versions()}
    out = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}").predict(["hi"], params={"max_new_tokens": 2})
    assert len(out) == 1
    reg.promote("2", "operator's choice")  # the promote verb through the server too
    assert CHAMPION in reg.show("2")["aliases"] and reg.show("2")["tags"]["edgefleet.previous_champion"] == "3"
    # `mlflow models serve` on the champion: the signature's params schema lets max_new_tokens through
    served = _mlflow_models_serve(uri, f"models:/{NAME}@{CHAMPION}", tmp_path / "serve.log")
    try:
        _, tok = build_tiny(0)
        short, longer = (_invoke(served, {"max_new_tokens": n}) for n in (1, 12))
        assert len(tok(short, add_special_tokens=False).input_ids) <= 1 < len(tok(longer).input_ids)
        bad = _invoke(served, {"max_new_tokens": "many"}, ok=False)
        assert "max_new_tokens" in bad  # a param of the wrong type is refused by name, not ignored
        too_many = _invoke(served, {"max_new_tokens": 10**6}, ok=False)
        assert "max_new_tokens must be between 1 and" in too_many  # bounded: no request holds a node for long
    finally:
        served.proc.terminate()
        served.proc.wait(timeout=30)
    assert reg.pending() == []
    assert [versions[v]["tags"]["edgefleet.round"] for v in ("1", "2", "3")] == ["1", "2", "3"]  # in order
    assert CHAMPION in versions["3"]["aliases"] and versions["3"]["tags"]["edgefleet.parent_version"] == "2"


class Stopped(BaseException):
    """The publisher's process ends here: not an Exception, so nothing in it counts or handles it."""


def stop_after(step: str, round_id: int):
    def after_step(done: str, r: RoundRecord) -> None:
        if (done, r.round) == (step, round_id):
            raise Stopped(f"stopped after {step} of round {round_id}")

    return after_step


def losses(n: int) -> list[float]:
    """Held-out losses that make the gate promote some rounds and hold others."""
    return [5.0 - 0.3 * i if i % 3 != 2 else 6.0 for i in range(n)]


def publish_stopping_at_each(uri: str, outbox: Path, adapter_dir: Path, stops: list[str], *, name: str, run: str):
    """Round i is stopped after step ``stops[i-1]``; a new publisher (a restart) flushes it."""
    for i, (step, loss) in enumerate(zip(stops, losses(len(stops)), strict=True), start=1):
        stopping = ModelRegistry(uri, name, outbox=outbox, after_step=stop_after(step, i))
        with pytest.raises(Stopped):
            stopping.publish(record(i, loss, run=run), adapter_dir)
        assert len(stopping.pending()) == 1  # left for the next try
        restarted = ModelRegistry(uri, name, outbox=outbox)
        assert list(restarted.flush().published) == [RoundKey(run, i)]
        assert restarted.pending() == []


def assert_exactly_once_and_gated(uri: str, name: str, run: str, rounds: int) -> None:
    """One version per round, with every tag, gated; the aliases where the gate put them; one
    logged model and one point of each metric per round."""
    reg = ModelRegistry(uri, name, outbox="/nonexistent")
    versions = reg.versions()
    assert [v["tags"]["edgefleet.round"] for v in versions] == [str(i) for i in range(1, rounds + 1)]
    assert {v["tags"]["edgefleet.run"] for v in versions} == {run}
    first_tags = set(versions[0]["tags"])
    assert {"edgefleet.gate", "edgefleet.gate_reason", "edgefleet.parent_version", "edgefleet.delta"} <= first_tags
    assert all(
        set(v["tags"]) - {"edgefleet.previous_champion"} == first_tags - {"edgefleet.previous_champion"}
        for v in versions
    )
    champion, expected_champion = None, None
    for v, loss in zip(versions, losses(rounds), strict=True):
        decision = gate(loss, champion, margin=0.0, within_budget=True)
        assert v["tags"]["edgefleet.gate"] == ("promoted" if decision.promote else "held"), v
        assert v["tags"]["edgefleet.gate_reason"] == decision.reason
        if decision.promote:
            champion, expected_champion = loss, v["version"]
    assert reg.champion_version() == expected_champion
    assert CANDIDATE in versions[-1]["aliases"]

    client = mlflow.MlflowClient(uri)
    run_id = versions[0]["tags"]["edgefleet.mlflow_run_id"]
    assert {v["tags"]["edgefleet.mlflow_run_id"] for v in versions} == {run_id}
    assert sorted(m.step for m in client.get_metric_history(run_id, "held_out_loss")) == list(range(1, rounds + 1))
    experiment = client.get_run(run_id).info.experiment_id
    logged = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    assert sorted(m.name for m in logged) == sorted(f"round-{i}" for i in range(1, rounds + 1))


def test_a_publisher_stopped_after_any_step_finishes_the_round_once_sqlite(tmp_path, adapter_dir, monkeypatch):
    """Every step, once: round k stops after step k and the restarted publisher finishes it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    foreign = mlflow.MlflowClient(uri).create_run("0").info.run_id  # someone else's run, named by the environment
    monkeypatch.setenv("MLFLOW_RUN_ID", foreign)
    run = 'it\'s a "quoted" run'  # both quotes: no filter in MLflow's syntax can name it
    publish_stopping_at_each(uri, tmp_path / "outbox", adapter_dir, list(STEPS), name=NAME, run=run)
    assert_exactly_once_and_gated(uri, NAME, run, len(STEPS))
    assert "edgefleet.run" not in mlflow.MlflowClient(uri).get_run(foreign).data.tags  # not resumed


def test_a_publisher_stopped_after_some_steps_finishes_the_round_once_real_server(tmp_path, adapter_dir, mlflow_server):
    mlflow_server.start()
    stops = ["model", "version", "decide", "champion"]
    publish_stopping_at_each(mlflow_server.uri, tmp_path / "outbox", adapter_dir, stops, name="faults", run="run-f")
    assert_exactly_once_and_gated(mlflow_server.uri, "faults", "run-f", len(stops))


def test_a_version_an_earlier_release_left_untagged_is_adopted_not_duplicated(tmp_path, adapter_dir):
    """An earlier release registered with log_model(registered_model_name=...) and tagged after:
    stopped in between, it left a version without tags. The next publish tags that one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outbox = tmp_path / "outbox"
    with pytest.raises(Stopped):
        ModelRegistry(uri, NAME, outbox=outbox, after_step=stop_after("metrics", 1)).publish(
            record(1, 5.0), adapter_dir
        )
    client = mlflow.MlflowClient(uri)
    (model,) = client.search_logged_models([client.get_experiment_by_name("edgefleet-federation").experiment_id])
    orphan = mlflow.register_model(f"models:/{model.model_id}", NAME)  # what the earlier release did first
    assert orphan.tags == {}

    reg = ModelRegistry(uri, NAME, outbox=outbox)
    assert reg.flush().published == {RoundKey("run-a", 1): str(orphan.version)}
    assert_exactly_once_and_gated(uri, NAME, "run-a", 1)


def test_a_poisoned_entry_is_quarantined_and_does_not_block_the_rest(tmp_path, adapter_dir):
    """`baseline` and `dp-baseline` are different runs; an entry that cannot be published fails
    on its own, is quarantined with its error after max_attempts, and the other rounds go on."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = ModelRegistry(uri, NAME, outbox=tmp_path / "outbox", max_attempts=3, count_every_s=0)
    reg.outbox.add(RoundKey("broken", 1), '{"run": "broken", "round": 1, "not a": "record"}', adapter_dir)

    assert reg.publish(record(1, 5.0, run="dp-baseline"), adapter_dir) == "1"
    assert reg.publish(record(1, 4.0, run="baseline"), adapter_dir) == "2"  # not taken for dp-baseline's
    (waiting,) = reg.outbox.entries()
    assert waiting.key == RoundKey("broken", 1) and waiting.state.attempts == 2
    result = reg.flush()
    assert result.quarantined == [RoundKey("broken", 1)] and reg.pending() == []
    (kept,) = reg.quarantined()
    assert kept.state.attempts == 3 and "TypeError" in kept.state.last_error
    assert [v["tags"]["edgefleet.run"] for v in reg.versions()] == ["dp-baseline", "baseline"]


def test_registries_sharing_a_cache_never_publish_each_others_rounds(tmp_path, adapter_dir):
    """Two configs with one cache and two stores (the suite's tests, a staging and a production
    registry): a round waiting for a server that is down stays for that server. Found on a clean
    clone, where a test's waiting round turned up as another store's only version."""
    down = ModelRegistry(f"http://127.0.0.1:{free_port()}", NAME, outbox=tmp_path / "outbox")
    assert down.publish(record(1, 5.0, run="for-the-down-server"), adapter_dir) is None
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    up = ModelRegistry(uri, NAME, outbox=tmp_path / "outbox")

    assert up.publish(record(1, 5.0, run="mine"), adapter_dir) == "1"

    assert [v["tags"]["edgefleet.run"] for v in up.versions()] == ["mine"]
    assert [e.key for e in down.outbox.entries()] == [RoundKey("for-the-down-server", 1)]


def test_a_late_retry_never_takes_the_champion_back_and_a_rejected_version_stays_out(tmp_path, adapter_dir):
    """A round whose publisher stopped before its gate, rejected meanwhile, is held when retried,
    with the reason; an operator can still promote it, as a fresh rollout."""
    uri, outbox = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "outbox"
    reg = ModelRegistry(uri, NAME, outbox=outbox)
    assert reg.publish(record(1, 5.0), adapter_dir) == "1" and reg.publish(record(2, 4.0), adapter_dir) == "2"
    assert reg.champion_version() == "2"
    reg.rollback("canary regressed", version="2")  # the fleet rejects v2: v1 is champion again
    with pytest.raises(Stopped):
        ModelRegistry(uri, NAME, outbox=outbox, after_step=stop_after("candidate", 3)).publish(
            record(3, 3.0), adapter_dir
        )
    reg.tag("3", ROLLED_BACK_TAG, "rejected by an operator before its gate ran")
    assert reg.flush().published == {RoundKey("run-a", 3): "3"}
    assert reg.champion_version() == "1"
    assert reg.show("3")["tags"]["edgefleet.gate"] == "held"
    assert "rolled back earlier" in reg.show("3")["tags"]["edgefleet.gate_reason"]
    # what the fleet falls back to: the last version whose rollout it approved, or the base model
    assert reg.last_approved("2") is None
    reg.tag("1", ROLLOUT_TAG, "promoted to all edge nodes: canary healthy")
    assert reg.last_approved("2") == "1" and reg.last_approved("1") == "1"

    # an operator may still promote a rejected version: a fresh rollout, its old marks cleared
    reg.promote("2")
    assert reg.champion_version() == "2" and ROLLED_BACK_TAG not in reg.show("2")["tags"]


def test_one_reconciler_holds_the_lease_until_it_expires_or_is_given_back(tmp_path, adapter_dir):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, outbox=tmp_path / "outbox")
    assert reg.hold_lease("a", 10, now=100.0) is None  # no registered model yet: nothing to contend for
    reg.publish(record(1, 5.0), adapter_dir)

    assert reg.hold_lease("a", 10, now=100.0) is None
    assert reg.hold_lease("b", 10, now=105.0).startswith("a ")  # a holds it: b only watches
    assert reg.hold_lease("a", 10, now=108.0) is None  # a renews: until 118
    assert reg.hold_lease("b", 10, now=115.0).startswith("a ")
    assert reg.hold_lease("b", 10, now=119.0) is None  # a stopped renewing (it died): b takes over
    reg.release_lease("a")  # not a's any more: nothing happens
    assert reg.hold_lease("a", 10, now=120.0).startswith("b ")
    reg.release_lease("b")
    assert reg.hold_lease("a", 10, now=121.0) is None


def test_a_round_registered_after_a_later_round_of_its_run_never_takes_the_champion(tmp_path, adapter_dir):
    """Round 1 stopped before it had a version; round 2 (from another machine's outbox) became v1
    and champion; round 1, retried, becomes v2: later by number, earlier by round, so held."""
    uri, outbox = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "outbox"
    with pytest.raises(Stopped):
        ModelRegistry(uri, NAME, outbox=outbox, after_step=stop_after("run", 1)).publish(record(1, 3.0), adapter_dir)
    other = ModelRegistry(uri, NAME, outbox=tmp_path / "another-machine's-outbox")
    assert other.publish(record(2, 4.0), adapter_dir) == "1" and other.champion_version() == "1"

    reg = ModelRegistry(uri, NAME, outbox=outbox)
    assert reg.flush().published == {RoundKey("run-a", 1): "2"}
    assert reg.champion_version() == "1" and reg.show("2")["tags"]["edgefleet.gate"] == "held"


def test_the_fallback_and_the_lease_survive_a_deleted_version_and_odd_tags(tmp_path, adapter_dir):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, outbox=tmp_path / "outbox")
    for i, loss in enumerate((5.0, 4.0, 3.0), start=1):
        reg.publish(record(i, loss), adapter_dir)
    client = mlflow.MlflowClient(reg.uri)
    client.delete_model_version(NAME, "1")  # an operator cleans up old versions
    assert reg.last_approved("3") is None  # the chain ends at the deleted one: the base model
    reg.tag("3", "edgefleet.previous_champion", "3")  # a hand-edited loop
    assert reg.last_approved("3") is None
    for odd in ("ghost inf", "ghost nan", "ghost 1e300", "ghost x", " 5"):
        client.set_registered_model_tag(NAME, "edgefleet.reconciler_lease", odd)
        assert reg.hold_lease("me", 10) is None, odd  # an odd lease frees it, never crashes a pass


def test_a_rollback_never_lands_on_a_rejected_version_and_restarts_its_canary(tmp_path, adapter_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = ModelRegistry(uri, NAME, outbox=tmp_path / "outbox")
    for i, loss in enumerate((5.0, 4.0, 3.0), start=1):
        assert reg.publish(record(i, loss), adapter_dir) == str(i)  # each replaces the one before
    reg.tag("1", ROLLOUT_TAG, "promoted to all edge nodes: ok")
    reg.tag("2", ROLLED_BACK_TAG, "canary regressed")  # v2 was rejected while v3 was already on its way
    assert reg.rollback("canary regressed too", version="3") == "1"  # not v2: the last approved
    assert reg.champion_version() == "1" and ROLLED_BACK_TAG in reg.show("3")["tags"]

    reg.promote("3")  # an operator insists: v3 replaces v1 again
    reg.tag("1", "edgefleet.canary_since", "12.5")
    reg.tag("1", ROLLOUT_TAG, "")  # say v1 never finished its own canary
    assert reg.rollback("no", version="3") == "1"
    assert "edgefleet.canary_since" not in reg.show("1")["tags"]  # its canary starts afresh, not timed out


def test_an_older_round_retried_after_a_newer_champion_is_held(tmp_path, adapter_dir):
    uri, outbox = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "outbox"
    with pytest.raises(Stopped):  # round 1 registered, then its publisher died before the gate
        ModelRegistry(uri, NAME, outbox=outbox, after_step=stop_after("candidate", 1)).publish(
            record(1, 5.0), adapter_dir
        )
    other = ModelRegistry(uri, NAME, outbox=tmp_path / "another-machine's-outbox")
    assert other.publish(record(2, 4.0), adapter_dir) == "2" and other.champion_version() == "2"

    assert ModelRegistry(uri, NAME, outbox=outbox).flush().published == {RoundKey("run-a", 1): "1"}

    reg = ModelRegistry(uri, NAME, outbox=outbox)
    assert reg.champion_version() == "2" and reg.show("1")["tags"]["edgefleet.gate"] == "held"
    assert "a later version, is already the champion" in reg.show("1")["tags"]["edgefleet.gate_reason"]


def test_a_harmful_update_is_held_by_the_gate_with_its_reason_on_the_version(tmp_path):
    """A client trained to answer everything with one phrase: its model scores worse on what the
    sites' users ask and drifts from the base on general chat. The gate holds it; the champion stays."""
    from edgefleet.eval.scores import QualityJudge
    from edgefleet.eval.sites import site_domains
    from edgefleet.platform.chat import ChatExample, render_chat
    from edgefleet.train.dp import LocalHyper, load_adapter, local_update

    base, tok = build_tiny(0)
    domain = site_domains(["edge-1", "edge-2"])["edge-1"]
    judge = QualityJudge(
        base, tok, {"edge-1": [ChatExample(q.question, q.reference) for q in domain.held_out]}, block_size=128
    )
    hp = LocalHyper(lr=1e-2, batch_size=8, physical_batch=8, max_steps=40, epochs=1000.0)
    asked = [ChatExample(q.question, q.reference) for q in domain.asked]
    helpful = local_update(base, None, render_chat(asked, tok, 128), None, hp)
    one_phrase = [ChatExample(e.question, "I cannot help with that.") for e in asked]
    harmful = local_update(base, helpful.adapter, render_chat(one_phrase, tok, 128), None, hp)

    def scores(adapter):
        with torch.random.fork_rng():
            torch.manual_seed(hp.seed)
            model = lora_model(base, hp)
        load_adapter(model, adapter)
        q = judge.score(model)
        return q, asdict(q)

    before = judge.score(base)
    good, good_scores = scores(helpful.adapter)
    bad, bad_scores = scores(harmful.adapter)
    assert good.task_score > before.task_score and good.task_score > bad.task_score

    # the guard's tolerance sits above what the helpful update moved
    reg = ModelRegistry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, outbox=tmp_path / "outbox", max_divergence=2 * good.divergence
    )
    v1 = reg.publish(
        replace(record(1, 5.0), scores=good_scores, base_task_score=before.task_score),
        _peft(base, helpful.adapter, hp, tmp_path / "v1"),
    )
    v2 = reg.publish(
        replace(record(2, 4.0), scores=bad_scores, base_task_score=before.task_score),
        _peft(base, harmful.adapter, hp, tmp_path / "v2"),
    )

    tags = reg.show(v2)["tags"]
    assert reg.show(v1)["tags"]["edgefleet.gate"] == "promoted" and reg.champion_version() == v1
    assert tags["edgefleet.gate"] == "held"  # although its held-out loss "improved" from 5.0 to 4.0
    assert "task score" in tags["edgefleet.gate_reason"] or "regression" in tags["edgefleet.gate_reason"]
    assert float(tags["edgefleet.task_score"]) == pytest.approx(bad.task_score, abs=1e-5)
    assert float(tags["edgefleet.divergence"]) == pytest.approx(bad.divergence, abs=1e-5)
    assert float(tags["edgefleet.answer_match"]) == pytest.approx(bad.answer_match, abs=1e-4)
    # the scores in the version's MLflow run: metrics per site, and the evaluation table
    client = mlflow.MlflowClient(reg.uri)
    run = client.get_run(tags["edgefleet.mlflow_run_id"])
    assert run.data.metrics["task_score.edge-1"] == pytest.approx(bad.per_site[0].task_score, abs=1e-5)
    assert "answer_match.edge-1" in run.data.metrics and "answer_match" in run.data.metrics
    table = client.load_table(run.info.experiment_id, "round-2/evaluation.json", run_ids=[run.info.run_id])
    assert list(table["site"]) == ["edge-1"] and list(table["held-out questions"]) == [len(domain.held_out)]


def _peft(base, adapter, hp, folder):
    return export_adapter(base, adapter, hp, folder / "peft")


@dataclass
class _Served:
    proc: subprocess.Popen
    url: str


def _mlflow_models_serve(tracking_uri: str, model_uri: str, log: Path) -> _Served:
    """`mlflow models serve --env-manager local` on a free loopback port, once it answers /ping."""
    port, venv_bin = free_port(), Path(sys.executable).parent  # as from an activated venv: uvicorn on PATH
    proc = subprocess.Popen(
        [str(venv_bin / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/ping", timeout=5).status == 200:
                return _Served(proc, url)
        time.sleep(0.5)
    proc.kill()
    said = log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"mlflow models serve never answered /ping (exit code {proc.poll()}):\n{said}")


def _invoke(served: _Served, params: dict, *, ok: bool = True) -> str:
    body = json.dumps({"inputs": ["What is the capital of France?"], "params": params}).encode()
    req = urllib.request.Request(f"{served.url}/invocations", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert ok, "a bad request was served"
            return json.loads(resp.read())["predictions"][0]
    except urllib.error.HTTPError as err:
        said = err.read().decode()
        assert not ok, said
        return said
