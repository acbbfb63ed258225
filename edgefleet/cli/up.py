"""``edgefleet up``: the fleet in the foreground, its endpoints in a table; Ctrl-C stops it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from edgefleet.cli.fleet import console, deploy, err_console, node_ip, nodes_table, start_fleet, state_file
from edgefleet.cli.tables import show
from edgefleet.config import EdgefleetConfig, load_config
from edgefleet.errors import FleetError
from edgefleet.mlflow import server as mlflow_server


def add_parser(sub: Any) -> None:
    up = sub.add_parser("up", help="start the fleet in the foreground; Ctrl-C stops it")
    up.add_argument("--no-mlflow-ui", action="store_true", help="do not start a local MLflow server")
    up.set_defaults(func=cmd_up)


def start_mlflow_ui(cfg: EdgefleetConfig) -> tuple[subprocess.Popen | None, str]:
    uri = cfg.tracking_uri
    if uri.startswith(("http://", "https://")):
        return None, uri  # a real tracking server already serves its own UI
    (cfg.cache_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    port = cfg.ports.mlflow_ui
    log = (cfg.cache_dir / "mlflow" / "server.log").open("ab")
    proc = mlflow_server.spawn(uri, cfg.cache_dir / "mlflow" / "artifacts", port, log=log)
    url = f"http://127.0.0.1:{port}"
    with console.status("starting MLflow UI"):
        mlflow_server.wait_healthy(proc, url, timeout_s=60)
    if proc.poll() is not None:
        raise FleetError(f"mlflow server exited with code {proc.returncode}; see {log.name}")
    return proc, url


def start_reconciler(cfg: EdgefleetConfig, out: Console, err: Console) -> threading.Event | None:
    """While the fleet is up, keep every edge node on the champion, canary-first (a canary needs 2+
    edge nodes to compare, none of them synthetic). Returns the event that stops it, or None without one."""
    synthetic = [n.id for n in cfg.fleet.edge_nodes if n.model.source.split(":")[0] == "synthetic"]
    if len(cfg.fleet.edge_nodes) < 2 or synthetic:  # a timing profile takes no adapter
        return None
    from edgefleet.serve.reconciler import Reconciler, Step
    from edgefleet.serve.rollout import RolloutController

    ctl = RolloutController.from_config(cfg)

    def report(step: Step | Exception) -> None:
        if isinstance(step, Exception):
            err.print(f"[yellow]champion reconciler: {type(step).__name__}: {step}")
            return
        for line in step.describe():
            out.print(f"champion reconciler: {line}")

    stop = threading.Event()
    reconciler = Reconciler(ctl, on_step=report)
    threading.Thread(target=reconciler.run, args=(stop,), name="champion-reconciler", daemon=True).start()
    out.print(
        f"reconciling the edge nodes with {cfg.mlflow.model_name}@champion: a new champion goes to "
        f"{', '.join(ctl.canaries)} first, then everywhere (or is rolled back); restarted nodes get it back"
    )
    return stop


def cmd_up(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    stop = {"now": False}

    def _request_stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    fleet = start_fleet(cfg)
    # After the fleet: the embedded fleet's Ray node installs its own SIGTERM handler (exit 1 after
    # draining); ours stops the way Ctrl-C does, with every step below.
    signal.signal(signal.SIGTERM, _request_stop)
    mlflow_proc = None
    state = state_file(cfg)
    try:
        served = deploy(cfg)
        mlflow_url = "(disabled: --no-mlflow-ui)"
        if not args.no_mlflow_ui:
            mlflow_proc, mlflow_url = start_mlflow_ui(cfg)
        show(console, nodes_table(fleet.nodes()))
        show(console, endpoints_table(cfg, fleet, served, mlflow_url))
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"address": fleet.address, "pid": os.getpid(), "raylet_pids": fleet.raylet_pids()}))
        console.print(f"try:  edgefleet generate 'What is the capital of France?' --target {served.grpc_address}")
        reconciler_stop = start_reconciler(cfg, console, err_console)
        print("edgefleet is up; Ctrl-C stops it", flush=True)  # plain line: scripts and tests wait on it
        while not stop["now"]:
            time.sleep(0.2)
        if reconciler_stop is not None:
            reconciler_stop.set()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the MLflow UI
        print("stopping...", flush=True)
        state.unlink(missing_ok=True)
        if mlflow_proc is not None:
            mlflow_proc.terminate()
            try:
                mlflow_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                mlflow_proc.kill()
        fleet.shutdown()
    print("edgefleet stopped", flush=True)
    return 0


def endpoints_table(cfg: EdgefleetConfig, fleet: Any, served: Any, mlflow_url: str) -> Table:
    endpoints = Table(title="endpoints", show_header=False)
    grpc_note = "edgefleet.v1.InferenceService (metadata application=edgefleet)"
    if cfg.grpc_front:
        grpc_note += (", TLS" if cfg.auth.tls_cert else "") + f", requests ≤ {cfg.max_request_bytes} bytes"
    endpoints.add_row("gRPC", served.grpc_address, grpc_note)
    endpoints.add_row("HTTP", served.http_url + "/v1", "OpenAI-compatible: /chat/completions, /completions")
    endpoints.add_row("Ray dashboard", fleet.dashboard_url or "(disabled in config)", "Serve app, nodes, actors, jobs")
    endpoints.add_row(
        "metrics",
        f"http://{node_ip()}:{cfg.ports.metrics}/metrics" if fleet.embedded else "each node's --metrics-export-port",
        "Prometheus: infra/prometheus/prometheus.yml",
    )
    endpoints.add_row("MLflow UI", mlflow_url, cfg.tracking_uri)
    endpoints.add_row("Ray address", fleet.address, "ray.init(address=...) / edgefleet status")
    return endpoints
