"""`edgefleet up` runs a fleet in the foreground; Ctrl-C stops it and leaves no raylet behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import make_test_config_dict

pytestmark = pytest.mark.slow


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen within {timeout}s; output:\n" + "\n".join(lines[-40:]))


def test_up_then_ctrl_c_leaves_no_raylets_and_frees_ports(tmp_path: Path):
    data = make_test_config_dict(num_edge=2)
    data["cache_dir"] = str(tmp_path / "cache")
    cfg_path = tmp_path / "fleet.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "--config", str(cfg_path), "up", "--no-mlflow-ui"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    try:
        output = _wait_for_line(proc, "edgefleet is up", timeout=180)
        raylets = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "raylet"]
        status = subprocess.run([sys.executable, "-m", "edgefleet.cli", "--config", str(cfg_path), "status"],
                                capture_output=True, text=True, env=env, timeout=120)  # fmt: skip

        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()

    text = "\n".join(output)
    assert f"127.0.0.1:{data['ports']['grpc']}" in text and "Ray address" in text
    assert len(raylets) == 4  # head + 2 edge + cloud
    assert status.returncode == 0, status.stderr
    assert "edge-1" in status.stdout and "edge-2" in status.stdout and "cloud" in status.stdout
    assert proc.returncode == 0 and "edgefleet stopped" in rest
    assert psutil.wait_procs(raylets, timeout=30)[1] == []  # every raylet it started is gone
    assert not (tmp_path / "cache" / "run" / "fleet.json").exists()
    with pytest.raises(ConnectionRefusedError):
        import socket

        socket.create_connection(("127.0.0.1", data["ports"]["http"]), timeout=1).close()
