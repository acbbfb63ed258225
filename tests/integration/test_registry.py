"""The MLflow registry with real MLflow: a SQLite store, and a real `mlflow server` on loopback.

Each round's adapter becomes a version with lineage tags and the alias `candidate`; the gate moves
`champion`; plain MLflow loads `models:/…@champion` and generates; a server that is down leaves
rounds in the outbox until it answers, then they are published in order, with their tags.
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

from edgefleet.mlflow.registry import CANDIDATE, CHAMPION, ModelRegistry, RoundRecord
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


def test_against_a_real_mlflow_server_rounds_that_end_while_it_is_down_wait_in_the_outbox(tmp_path, adapter_dir):
    """The server is down (not yet started: one start costs ~15 s here) while rounds 1 and 2 end;
    once it is up, the next round's publish registers all three, in order."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    reg = ModelRegistry(uri, NAME, outbox=tmp_path / "outbox")

    assert reg.publish(record(1, 5.0, run="run-b"), adapter_dir) is None  # the server is down: nothing lost
    assert reg.publish(record(2, 4.5, run="run-b"), adapter_dir) is None
    assert len(reg.pending()) == 2

    server = start_server(port, tmp_path)
    try:
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
        finally:
            served.proc.terminate()
            served.proc.wait(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert reg.pending() == []
    assert [versions[v]["tags"]["edgefleet.round"] for v in ("1", "2", "3")] == ["1", "2", "3"]  # in order
    assert CHAMPION in versions["3"]["aliases"] and versions["3"]["tags"]["edgefleet.parent_version"] == "2"


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
