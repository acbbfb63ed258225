"""`mlflow server` as edgefleet starts it: on loopback, for the registry and its UI.

MLflow's server also starts a job runner by default (huey consumers, one process per job kind,
for its GenAI evaluation jobs). edgefleet submits no MLflow jobs, and on 2 cores those idle
processes cost ~30 s of CPU over the test suite, so it is switched off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

# MLflow reads this in the server process: no job runner, no huey consumers.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def spawn(
    backend_uri: str, artifacts: Path, port: int, *, log: IO[bytes] | int, workers: int | None = None
) -> subprocess.Popen:
    """Start ``mlflow server`` on 127.0.0.1:``port`` in its own session (Ctrl-C is ours to forward;
    ``os.killpg(proc.pid, ...)`` reaches its uvicorn workers too)."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--default-artifact-root",
        str(artifacts),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**NO_JOB_RUNNER, **os.environ}  # a user who set it explicitly keeps their setting
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> bool:
    """True once ``url``/health answers; False if the server exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return True
        except OSError:
            time.sleep(0.5)
    return False
