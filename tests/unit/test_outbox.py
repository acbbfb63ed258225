"""The registry's outbox: exact identities, independent entries, quarantine; and the plumbing
around publication that needs no MLflow server (filter quoting, the SQLite artifact folder, the
pyfunc's params, a publisher that never raises)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from edgefleet.federation.publication import RoundPublisher
from edgefleet.federation.round_state import RoundResult
from edgefleet.mlflow import pyfunc_model
from edgefleet.mlflow.outbox import Outbox, RoundKey
from edgefleet.mlflow.registry import ModelRegistry, _quoted


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def test_entries_are_keyed_by_exact_identity_not_by_a_name_suffix(tmp_path, adapter):
    box = Outbox(tmp_path / "outbox")
    assert box.add(RoundKey("dp-baseline", 1), "{}", adapter)
    assert box.add(RoundKey("baseline", 1), "{}", adapter)  # not mistaken for dp-baseline's round 1
    assert not box.add(RoundKey("baseline", 1), "{}", adapter)  # the same round again: kept once
    assert box.add(RoundKey("a/b 'c'", 2), "{}", adapter)  # any run name: the folder name is only a label
    assert [e.key for e in box.entries()] == [
        RoundKey("dp-baseline", 1),
        RoundKey("baseline", 1),
        RoundKey("a/b 'c'", 2),
    ]


def test_an_entry_that_keeps_failing_is_quarantined_with_its_error_and_the_others_stay(tmp_path, adapter):
    box = Outbox(tmp_path / "outbox", max_attempts=2)
    box.add(RoundKey("run", 1), "{}", adapter)
    box.add(RoundKey("run", 2), "{}", adapter)
    poisoned, other = box.entries()
    assert not box.failed(poisoned, "ValueError: no", now=1000.0)
    (poisoned, _) = box.entries()
    assert not box.failed(poisoned, "OSError: store down a moment", now=1030.0)  # within a minute: not counted
    (poisoned, _) = box.entries()
    assert (poisoned.state.attempts, poisoned.state.last_error) == (1, "OSError: store down a moment")
    assert box.failed(poisoned, "ValueError: still no", now=1100.0)
    assert [e.key for e in box.entries()] == [other.key]
    (kept,) = box.quarantined()
    assert (kept.key, kept.state.attempts, kept.state.last_error) == (RoundKey("run", 1), 2, "ValueError: still no")
    assert (kept.adapter_dir / "adapter_model.safetensors").read_bytes() == b"weights"  # nothing lost
    box.done(other)
    assert box.entries() == []
    assert box.requeue() == [RoundKey("run", 1)]  # its cause fixed, an operator puts it back
    (back,) = box.entries()
    assert back.state.attempts == 0 and box.quarantined() == []
    # an entry's own error (not an outage) counts every time; a round added again meanwhile is not doubled
    assert not box.failed(back, "TypeError: bad record", transient=False, now=2000.0)
    (back,) = box.entries()
    assert box.failed(back, "TypeError: bad record", transient=False, now=2001.0)
    box.add(RoundKey("run", 1), "{}", adapter)
    assert box.requeue() == [] and len(box.entries()) == 1 and box.quarantined() == []


def test_an_entry_an_earlier_release_wrote_is_read_by_its_record(tmp_path, adapter):
    folder = tmp_path / "outbox" / "00000000000000000001-run-round-00003"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({"run": "run", "round": 3}))
    (entry,) = Outbox(tmp_path / "outbox").entries()
    assert entry.key == RoundKey("run", 3) and entry.state.attempts == 0

    # Upgraded: the registry's outbox is now a folder per destination; the old entry moves in.
    registry = ModelRegistry("sqlite:///x.db", "m", outbox=tmp_path / "outbox")
    assert [e.key for e in registry.outbox.entries()] == [RoundKey("run", 3)]
    assert registry.pending() and not folder.exists()


def test_a_filter_value_is_quoted_with_the_quote_it_lacks():
    assert _quoted("plain") == "'plain'"
    assert _quoted("it's") == '"it\'s"'
    with pytest.raises(ValueError, match="both quote"):
        _quoted('it\'s "both"')


@pytest.mark.parametrize(
    ("uri", "folder"),
    [
        ("sqlite:////srv/ml flow/mlflow.db", "/srv/ml flow/artifacts"),
        ("sqlite:////srv/ml%20flow/mlflow.db?timeout=20", "/srv/ml flow/artifacts"),
        ("http://127.0.0.1:5000", None),
        ("sqlite://", None),
    ],
)
def test_artifacts_go_beside_a_sqlite_store(uri, folder):
    location = ModelRegistry(uri, "m", outbox="/unused")._artifact_location()
    assert location == (Path(folder).as_uri() if folder else None)


def test_the_registry_uri_is_the_tracking_uri_unless_given():
    assert ModelRegistry("sqlite:////a.db", "m", outbox="/unused").registry_uri == "sqlite:////a.db"
    assert ModelRegistry("sqlite:////a.db", "m", outbox="/u", registry_uri="http://r:1").registry_uri == "http://r:1"


def test_the_config_honours_mlflow_registry_uri(monkeypatch):
    from edgefleet.config import EdgefleetConfig

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry:5000")
    cfg = EdgefleetConfig.model_validate({})
    assert (cfg.tracking_uri, cfg.registry_uri) == ("http://tracking:5000", "http://registry:5000")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    assert cfg.registry_uri == "http://tracking:5000"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": 10**6},
        {"max_new_tokens": 2.9},
        {"max_new_tokens": True},
        {"max_new_tokens": None},
        {"max_new_tokens": "x"},
        {"max_new_tokens": float("inf")},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"temperature": "warm"},
    ],
)
def test_generation_params_are_bounded_and_refused_by_name(bad):
    """Each an invalid-parameter error naming the param (a 400 from `mlflow models serve`), never a
    crash (500) or a silently different value."""
    with pytest.raises(MlflowException, match=next(iter(bad))) as refused:
        pyfunc_model._checked({**pyfunc_model.PARAMS, **bad})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert pyfunc_model._checked({**pyfunc_model.PARAMS, "max_new_tokens": "8"}) == (8, 0.0)
    assert pyfunc_model._checked({**pyfunc_model.PARAMS, "max_new_tokens": 8.0}) == (8, 0.0)


@pytest.mark.parametrize(
    ("prompts", "says"),
    [([], "1 to 64 prompts"), ([None], "must be text"), (["x" * 20_000], "at most 16000"), (["ok", 3], "prompt 1")],
)
def test_prompts_are_text_and_bounded(prompts, says):
    with pytest.raises(MlflowException, match=says):
        pyfunc_model._prompts(prompts)


def test_a_dataframe_gives_its_prompt_column():
    frame = pd.DataFrame({"id": [7], "prompt": ["Hi"]})
    assert pyfunc_model._prompts(frame) == ["Hi"]
    assert pyfunc_model._prompts(pd.DataFrame({0: ["Hey"]})) == ["Hey"]
    assert pyfunc_model._prompts("Yo") == ["Yo"]


def test_a_publication_that_fails_never_aborts_the_run(tmp_path):
    """No exported adapter (the file is missing): publish logs it and answers None."""
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", "m", outbox=tmp_path / "outbox")
    publisher = RoundPublisher(registry, run="run", lineage={"strategy": "fedavg", "delta": 1e-5}, base_model={})
    result = RoundResult(1, 0, ["a"], ["a"], {}, 1.0, 1.0, 2.7, {"a": 1.0}, None, 1.0)
    assert publisher.publish(result, tmp_path / "missing.safetensors", base=None, hp=None, base_quality=None) is None
