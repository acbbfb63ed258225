"""The platform's commands: up, demo, status, auth, bench, train, federate, audit, models.

They need the ``platform`` extra (rich, pydantic, Ray, torch, ...). ``edgefleet.cli`` is the entry
point; it registers these only when that extra is installed. Every expected failure (bad config,
unreachable cluster, failed fetch) raises an ``EdgefleetError``, which the entry point prints as one
line with exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet import cli_audit, cli_federate, cli_models, cli_status, cli_train, demo_deadlines, demo_federation
from edgefleet.cli_tables import show
from edgefleet.config import EdgefleetConfig, load_config
from edgefleet.errors import ConfigError, FleetError
from edgefleet.mlflow import server as mlflow_server

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
DEMO_QUESTION = "What is the capital of France?"


# ---------------------------------------------------------------- helpers


@contextmanager
def steps(title: str, total: int) -> Iterator:
    """A progress bar over named steps; yields ``on_step(name)`` that advances it."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(title, total=total)
        seen: list[str] = []

        def on_step(name: str) -> None:
            if seen:
                progress.advance(task)
            seen.append(name)
            progress.update(task, description=f"{title}: {name}")

        yield on_step
        progress.update(task, completed=total, description=f"{title}: done")


def _state_file(cfg: EdgefleetConfig) -> Path:
    return cfg.cache_dir / "run" / "fleet.json"


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def nodes_table(nodes: list) -> Table:
    table = Table(title="edgefleet nodes")
    for col in ("node", "role", "labels", "CPUs", "address", "alive"):
        table.add_column(col)
    for n in nodes:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"
        table.add_row(n.node_id, n.role, labels, f"{n.cpus:g}", n.address, "yes" if n.alive else "[red]no")
    return table


def _start_fleet(cfg: EdgefleetConfig, log_to_driver: bool = True):
    from edgefleet.platform.cluster import connect, start_local_fleet

    if cfg.ray.address:
        console.print(f"joining Ray cluster at {cfg.ray.address}")
        return connect(cfg.ray.address, log_to_driver=log_to_driver)
    with steps("embedded fleet", total=len(cfg.fleet.edge_nodes) + 3) as on_step:
        return start_local_fleet(cfg, on_step=on_step, log_to_driver=log_to_driver)


def _fetch_model(cfg: EdgefleetConfig, source: str = "smollm2") -> Path | None:
    from edgefleet.platform.model_cache import ensure_smollm2, is_cached, smollm2_dir

    if source != "smollm2":
        return None
    if is_cached(cfg.cache_dir):
        console.print(f"smollm2: cached at {smollm2_dir(cfg.cache_dir)}")
        return smollm2_dir(cfg.cache_dir)
    with steps("fetch smollm2", total=4) as on_step:
        path = ensure_smollm2(cfg.cache_dir, on_step=on_step)
    console.print(f"smollm2: cached at {path}")
    return path


# ---------------------------------------------------------------- commands


def cmd_models_fetch(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    _fetch_model(cfg, args.source)
    return 0


DEMO_QUESTIONS = [  # (question, the caller's site hint, route)
    ("What is the capital of France?", "edge-1", "auto"),
    ("Name three primary colours.", "edge-2", "auto"),
    ("What is the largest planet in the solar system?", "edge-3", "auto"),
    ("What is 12 times 12?", "edge-1", "auto"),
    ("Why is the sky blue? Answer in one sentence.", "", "cloud"),
]


def _deploy(cfg: EdgefleetConfig, log_level: str = "INFO"):
    from edgefleet.serve.app import deploy

    n = len(cfg.fleet.edge_nodes)
    with console.status(f"loading models on {n} edge nodes and the cloud, starting the Gateway"):
        return deploy(cfg, log_level=log_level)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgefleet.client import Client

    cfg = load_config(args.config, ray_address=args.address)
    for source in {n.model.source for n in cfg.fleet.edge_nodes} | {cfg.fleet.cloud.model.source}:
        _fetch_model(cfg, source)
    fleet = _start_fleet(cfg, log_to_driver=False)  # a clean tour: workers' logs stay in the dashboard
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # and Serve's own driver-side notices
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # "Passing a Python object ..." per version
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per registered version
    try:
        show(console, nodes_table(fleet.nodes()))
        served = _deploy(cfg, log_level="WARNING")
        token = os.environ.get("EDGEFLEET_TOKEN")  # the config holds token hashes only
        if cfg.auth.tokens and not token:
            raise ConfigError("this config accepts only bearer tokens: set EDGEFLEET_TOKEN to one of them")
        console.print(f"Gateway up: gRPC {served.grpc_address}, OpenAI HTTP {served.http_url}/v1\n")
        with Client(served.grpc_address, token=token, default_timeout=120) as client:
            console.print(f"[bold]streamed over gRPC:[/] {args.question}")
            for chunk in client.stream(args.question, max_new_tokens=48):
                console.print(chunk.text, end="", highlight=False, markup=False)
                if chunk.final:
                    done = chunk.completion
                    console.print(
                        f"\n  [dim]{done.served_by}, TTFT {done.ttft_ms:.0f} ms, total {done.total_ms:.0f} ms[/]\n"
                    )
            table = Table(title="questions through the SDK (gRPC → Serve → Gateway → node)")
            for col in ("question", "site hint", "answer", "served_by", "TTFT ms", "total ms", "why there"):
                table.add_column(col, overflow="fold")
            for question, site, route in DEMO_QUESTIONS:
                done = client.generate(question, max_new_tokens=40, site=site, route=route, timeout=30)
                table.add_row(
                    question,
                    site or f"route={route}",
                    done.text.strip(),
                    done.served_by,
                    f"{done.ttft_ms:.0f}",
                    f"{done.total_ms:.0f}",
                    done.route_reason,
                )
            show(console, table)
            _rush_hour(client)
            demo_federation.collect_feedback(cfg, client, console)
        demo_deadlines.run(cfg, token, console)
        with Client(served.grpc_address, token=token, default_timeout=120) as client:
            demo_federation.run(cfg, _fetch_model, console, client)
    finally:
        fleet.shutdown()
    console.print("fleet stopped")
    return 0


def _rush_hour(client) -> None:
    """Nine requests at once from one site, 2.5 s deadline each: watch the router spill them over."""
    from concurrent.futures import ThreadPoolExecutor

    from edgefleet.client import EdgefleetClientError

    def ask(i: int):
        try:
            return client.generate(
                f"Write one sentence about the number {i}.",
                max_new_tokens=32,
                site="edge-1",
                timeout=2.5,
                mode="best_effort",
            )
        except EdgefleetClientError as exc:  # the client stops waiting at its deadline: show it, go on
            return exc

    with ThreadPoolExecutor(max_workers=9) as pool:
        answers = list(pool.map(ask, range(9)))
    table = Table(title="rush hour: 9 requests at once from site edge-1, deadline 2.5 s each")
    for col in ("#", "served_by", "predicted ms", "total ms", "SLA", "why there"):
        table.add_column(col, overflow="fold")
    for i, d in enumerate(answers):
        if isinstance(d, Exception):
            table.add_row(str(i), "-", "-", "-", "[red]missed", f"client gave up: {d}")
            continue
        table.add_row(
            str(i),
            d.served_by,
            f"{d.predicted_ms:.0f}",
            f"{d.total_ms:.0f}",
            "met" if d.sla_met else "[red]missed",
            d.route_reason,
        )
    show(console, table)


def _start_mlflow_ui(cfg: EdgefleetConfig) -> tuple[subprocess.Popen | None, str]:
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


def cmd_up(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    stop = {"now": False}

    def _request_stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    fleet = _start_fleet(cfg)
    # After the fleet: the embedded fleet's Ray node installs its own SIGTERM handler (exit 1 after
    # draining); ours stops the way Ctrl-C does, with every step below.
    signal.signal(signal.SIGTERM, _request_stop)
    mlflow_proc = None
    state = _state_file(cfg)
    try:
        served = _deploy(cfg)
        mlflow_url = "(disabled: --no-mlflow-ui)"
        if not args.no_mlflow_ui:
            mlflow_proc, mlflow_url = _start_mlflow_ui(cfg)
        show(console, nodes_table(fleet.nodes()))
        endpoints = Table(title="endpoints", show_header=False)
        grpc_note = "edgefleet.v1.InferenceService (metadata application=edgefleet)"
        if cfg.grpc_front:
            grpc_note += (", TLS" if cfg.auth.tls_cert else "") + f", requests ≤ {cfg.max_request_bytes} bytes"
        endpoints.add_row("gRPC", served.grpc_address, grpc_note)
        endpoints.add_row("HTTP", served.http_url + "/v1", "OpenAI-compatible: /chat/completions, /completions")
        endpoints.add_row(
            "Ray dashboard", fleet.dashboard_url or "(disabled in config)", "Serve app, nodes, actors, jobs"
        )
        endpoints.add_row(
            "metrics",
            f"http://{_node_ip()}:{cfg.ports.metrics}/metrics"
            if fleet.embedded
            else "each node's --metrics-export-port",
            "Prometheus: infra/prometheus/prometheus.yml",
        )
        endpoints.add_row("MLflow UI", mlflow_url, cfg.tracking_uri)
        endpoints.add_row("Ray address", fleet.address, "ray.init(address=...) / edgefleet status")
        show(console, endpoints)
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"address": fleet.address, "pid": os.getpid(), "raylet_pids": fleet.raylet_pids()}))
        console.print(f"try:  edgefleet generate 'What is the capital of France?' --target {served.grpc_address}")
        watcher_stop = cli_models.watch_champion(cfg, console, err_console)
        print("edgefleet is up; Ctrl-C stops it", flush=True)  # plain line: scripts and tests wait on it
        while not stop["now"]:
            time.sleep(0.2)
        if watcher_stop is not None:
            watcher_stop.set()
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


def cmd_status(args: argparse.Namespace) -> int:
    from edgefleet.platform.cluster import connect

    cfg = load_config(args.config, ray_address=args.address)
    address = cfg.ray.address
    if not address:
        state = _state_file(cfg)
        if not state.is_file():
            raise FleetError("no running fleet found: start one with `edgefleet up`, or pass --address")
        address = json.loads(state.read_text())["address"]
    connect(address, log_to_driver=False)
    try:
        cli_status.show(cfg, args, console)
    finally:
        import ray

        ray.shutdown()  # only disconnect: status never stops a fleet
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    from edgefleet.security import hash_token, new_token

    if args.auth_command == "cert":
        args.host = args.host or ["localhost", "127.0.0.1"]
        return _write_self_signed(args)
    if args.auth_command == "new":
        token = new_token()
        print(f"token (give to the caller, store nowhere else): {token}")
        print(f"hash (put under auth.tokens):                  {hash_token(token)}")
        return 0
    token = sys.stdin.readline().strip()  # stdin, not argv: argv shows in `ps` and shell history
    try:
        print(hash_token(token))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def _write_self_signed(args: argparse.Namespace) -> int:
    from edgefleet.tls import self_signed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(args.host, days=args.days)
    (out / "cert.pem").write_bytes(cert)
    key_path = out / "key.pem"
    key_path.touch(mode=0o600)  # the key is a secret: owner-only before it holds anything
    key_path.write_bytes(key)
    print(f"wrote {out / 'cert.pem'} and {key_path} for {', '.join(args.host)} ({args.days} days)")
    print(f"config: auth: {{tls_cert: {out / 'cert.pem'}, tls_key: {key_path}}}")
    print("clients: Client(target, tls=True, root_certificates=open('cert.pem', 'rb').read())")
    return 0


def cmd_bench_calibrate(args: argparse.Namespace) -> int:
    from edgefleet.config import ModelSpec
    from edgefleet.platform.calibrate import calibrate

    cfg = load_config(args.config, ray_address=args.address)
    spec = ModelSpec(source=args.source, quantization=args.quantization, threads=args.threads)
    _fetch_model(cfg, spec.source)
    with console.status(f"measuring {spec.source} {spec.quantization} on this machine"):
        profile = calibrate(spec)
    table = Table(title=f"timing profile: {profile['model']}")
    table.add_column("measure")
    table.add_column("ms")
    table.add_row("prefill per prompt token", f"{profile['prefill_ms_per_token']:.2f}")
    for batch, ms in profile["decode_ms_per_step"].items():
        table.add_row(f"decode step at batch {batch}", f"{ms:.1f}")
    show(console, table)
    console.print(f"synthetic backend that behaves like it: model: {{source: {profile['synthetic_source']}}}")
    if args.out:
        Path(args.out).write_text(json.dumps(profile, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------- registration


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the platform's commands on the entry point's subparsers."""
    up = sub.add_parser("up", help="start the fleet in the foreground; Ctrl-C stops it")
    up.add_argument("--no-mlflow-ui", action="store_true", help="do not start a local MLflow server")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="the scripted tour on the embedded fleet")
    demo.add_argument("--question", default=DEMO_QUESTION, help="the question streamed first")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="the live fleet: health, queues, tokens/s, SLA, round, champion, ε")
    cli_status.add_arguments(status)
    status.set_defaults(func=cmd_status, supports_json=True)

    auth = sub.add_parser("auth", help="bearer tokens: the config stores their hashes only").add_subparsers(
        dest="auth_command", required=True
    )
    new = auth.add_parser("new", help="make a random token and print it with its hash")
    new.set_defaults(func=cmd_auth, uses_config=False, uses_address=False)
    hashed = auth.add_parser("hash", help="read a token on stdin, print the hash for auth.tokens")
    hashed.set_defaults(func=cmd_auth, uses_config=False, uses_address=False)
    cert = auth.add_parser("cert", help="write a self-signed TLS certificate and key for the gRPC front (testing)")
    cert.add_argument("--host", action="append", default=None, help="DNS name or IP it is for (repeatable)")
    cert.add_argument("--out", default="tls", help="folder for cert.pem and key.pem")
    cert.add_argument("--days", type=int, default=30)
    cert.set_defaults(func=cmd_auth, uses_config=False, uses_address=False)
    bench = sub.add_parser("bench", help="measurements").add_subparsers(dest="bench_command", required=True)
    cal = bench.add_parser("calibrate", help="measure a model's timing profile for synthetic backends")
    cal.add_argument("--source", default="smollm2")
    cal.add_argument("--quantization", default="int8", choices=["none", "int8", "bf16"])
    cal.add_argument("--threads", type=int, default=1)
    cal.add_argument("--out", help="also write the profile as JSON here")
    cal.set_defaults(func=cmd_bench_calibrate)

    cli_train.add_parser(sub, _fetch_model, _start_fleet, _state_file)
    cli_federate.add_parser(sub, _fetch_model, _start_fleet, _state_file)
    cli_audit.add_parser(sub)

    models = sub.add_parser("models", help="model cache and the MLflow registry").add_subparsers(
        dest="models_command", required=True
    )
    fetch = models.add_parser("fetch", help="download and convert SmolLM2 into the cache")
    fetch.add_argument("--source", default="smollm2", choices=["smollm2"])
    fetch.set_defaults(func=cmd_models_fetch)
    cli_models.add_commands(models)
