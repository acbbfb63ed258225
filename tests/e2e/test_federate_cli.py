"""`edgefleet federate` as an operator runs it, killed with SIGKILL and restarted on the same run.

The kill lands after round 2's sum was revealed, charged to the ledger and aggregated. The restarted
coordinator finishes round 2 from disk. At the end every client's ledger holds exactly one release
per round it finished: nobody's ε was counted twice, or skipped. (A death mid-training, retried with
fresh keys, is the same resume on another step: tests/integration/test_coordinator_rounds.py kills
an in-process coordinator at both steps; each CLI run here costs a process and two Train sessions.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_test_config_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def federate(cfg_path: Path, address: str, crash_after: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    env.pop("EDGEFLEET_CRASH_AFTER", None)
    if crash_after:
        env["EDGEFLEET_CRASH_AFTER"] = crash_after
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "-c",
            str(cfg_path),
            "federate",
            "--rounds",
            "2",
            "--run",
            "resume-me",
            "--address",
            address,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_a_killed_coordinator_resumes_and_counts_nobodys_epsilon_twice(fleet, tmp_path: Path):
    data = make_test_config_dict(num_edge=3) | {"cache_dir": str(tmp_path / "cache")}
    data["federation"] = {
        "clients_per_round": 2,  # of 3
        "min_clients": 2,
        "local_steps": 4,
        "batch_size": 32,
        "block_size": 64,
        "lr": 0.02,
        "round_timeout_s": 120,
    }
    cfg_path = tmp_path / "fleet.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "cache" / "federation" / "resume-me"

    first = federate(cfg_path, fleet.address, crash_after="2:aggregated")
    assert first.returncode == -signal.SIGKILL, first.stdout[-2000:] + first.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert len(state["completed"]) == 1 and state["current"]["status"] == "aggregated"

    second = federate(cfg_path, fleet.address)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming after round 1 (round 2 was in progress)" in second.stdout
    assert re.search(r"ε edge-1", second.stdout), second.stdout[-3000:]

    state = json.loads((run_dir / "state.json").read_text())
    rounds = state["completed"]
    assert [(r["round"], r["attempt"]) for r in rounds] == [(1, 1), (2, 1)]  # round 2 finished from disk
    assert len((run_dir / "rounds.jsonl").read_text().splitlines()) == 2  # each round committed once
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    charged = dict(db.execute("SELECT client, COUNT(*) FROM releases GROUP BY client").fetchall())
    finished = {n: sum(n in r["finished"] for r in rounds) for n in ("edge-1", "edge-2", "edge-3")}
    assert charged == {n: k for n, k in finished.items() if k}
    assert db.execute("SELECT COUNT(*) FROM releases WHERE round > 2").fetchone() == (0,)

    # every committed round became exactly one registry version, resumes included
    models = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "-c", str(cfg_path), "models", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert models.returncode == 0, models.stderr[-2000:]
    versions = json.loads(models.stdout)
    assert sorted(v["tags"]["edgefleet.round"] for v in versions) == ["1", "2"]
    assert all(v["tags"]["edgefleet.run"] == "resume-me" for v in versions)
    assert "candidate" in versions[-1]["aliases"]
    unknown = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "-c", str(cfg_path), "models", "show", "99"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "no version 99" in unknown.stderr and len(unknown.stderr.splitlines()) == 1
