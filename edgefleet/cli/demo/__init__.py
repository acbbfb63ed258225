"""``edgefleet demo``: the scripted tour on the embedded fleet.

Serving first (a streamed answer, questions routed by site and deadline, a rush hour that spills
over to the cloud, the deadline scene), then the learning loop (users rate answers, federated DP
rounds on their feedback, the registry, a canary rollout).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from rich.table import Table

from edgefleet.cli.demo import deadlines, federation
from edgefleet.cli.fleet import console, deploy, fetch_model, nodes_table, start_fleet
from edgefleet.cli.tables import show
from edgefleet.config import load_config
from edgefleet.errors import ConfigError

DEMO_QUESTION = "What is the capital of France?"
DEMO_QUESTIONS = [  # (question, the caller's site hint, route)
    ("What is the capital of France?", "edge-1", "auto"),
    ("Name three primary colours.", "edge-2", "auto"),
    ("What is the largest planet in the solar system?", "edge-3", "auto"),
    ("What is 12 times 12?", "edge-1", "auto"),
    ("Why is the sky blue? Answer in one sentence.", "", "cloud"),
]


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the scripted tour on the embedded fleet")
    demo.add_argument("--question", default=DEMO_QUESTION, help="the question streamed first")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgefleet.client import Client

    cfg = load_config(args.config, ray_address=args.address)
    for source in {n.model.source for n in cfg.fleet.edge_nodes} | {cfg.fleet.cloud.model.source}:
        fetch_model(cfg, source)
    fleet = start_fleet(cfg, log_to_driver=False)  # a clean tour: workers' logs stay in the dashboard
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # and Serve's own driver-side notices
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # "Passing a Python object ..." per version
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per registered version
    try:
        show(console, nodes_table(fleet.nodes()))
        served = deploy(cfg, log_level="WARNING")
        token = os.environ.get("EDGEFLEET_TOKEN")  # the config holds token hashes only
        if cfg.auth.tokens and not token:
            raise ConfigError("this config accepts only bearer tokens: set EDGEFLEET_TOKEN to one of them")
        console.print(f"Gateway up: gRPC {served.grpc_address}, OpenAI HTTP {served.http_url}/v1\n")
        with Client(served.grpc_address, token=token, default_timeout=120) as client:
            stream_one(client, args.question)
            ask_by_site(client)
            rush_hour(client)
            federation.collect_feedback(cfg, client, console)
        deadlines.run(cfg, token, console)
        with Client(served.grpc_address, token=token, default_timeout=120) as client:
            federation.run(cfg, console, client)
    finally:
        fleet.shutdown()
    console.print("fleet stopped")
    return 0


def stream_one(client: Any, question: str) -> None:
    console.print(f"[bold]streamed over gRPC:[/] {question}")
    for chunk in client.stream(question, max_new_tokens=48):
        console.print(chunk.text, end="", highlight=False, markup=False)
        if chunk.final:
            done = chunk.completion
            console.print(f"\n  [dim]{done.served_by}, TTFT {done.ttft_ms:.0f} ms, total {done.total_ms:.0f} ms[/]\n")


def ask_by_site(client: Any) -> None:
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


def rush_hour(client: Any) -> None:
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
