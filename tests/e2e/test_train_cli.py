"""`edgefleet train local` as a user runs it: a private update on one node, its loss and its ε.

Tiny models keep it quick. The command joins the running session fleet with `--address`, as an
operator joins the fleet `edgefleet up` started (a second embedded fleet would cost a cluster start
and share the 2 cores with the first), writes the topic shards, runs the Ray Train job on the node
and prints a table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_test_config_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_train_local_prints_a_falling_held_out_loss_and_its_epsilon(fleet, tmp_path: Path):
    data = make_test_config_dict(num_edge=3) | {"cache_dir": str(tmp_path / "cache")}
    cfg_path = tmp_path / "fleet.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "-c",
            str(cfg_path),
            "--address",
            fleet.address,
            "train",
            "local",
            "--node",
            "edge-2",
            "--steps",
            "20",
            "--batch-size",
            "64",
            "--lr",
            "0.02",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )

    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    row = re.search(r"(\d+\.\d+) → (\d+\.\d+)\s*│\s*(\d+\.\d+) \(1e-05\)", out.stdout)
    assert row, out.stdout[-3000:]
    before, after, epsilon = map(float, row.groups())
    assert after < before and 0 < epsilon <= 8.05, row.group(0)
    assert (tmp_path / "cache" / "data" / "edge-2" / "shard.jsonl").is_file()  # the node's own data dir


def test_train_local_names_an_unknown_node_in_one_line(tmp_path: Path):
    cfg_path = tmp_path / "fleet.yaml"
    cfg_path.write_text(yaml.safe_dump(make_test_config_dict(num_edge=2) | {"cache_dir": str(tmp_path)}))

    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "-c", str(cfg_path), "train", "local", "--node", "edge-7"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert out.returncode == 2 and "edge-7" in out.stderr and len(out.stderr.strip().splitlines()) == 1
