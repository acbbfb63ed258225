"""``edgefleet status``: the live fleet, one row per node, refreshed in place (``--json`` for scripts).

Four sources, each the authority on its part:
- Ray's node table: which raylets exist, their labels, alive or not;
- the Gateway (``fleet_status`` over a Serve handle): health as routing sees it, queue, tokens/s
  and SLA attainment over the last minute, the model version each node serves;
- the MLflow registry (``mlflow.tracking_uri``): the last federated run, its round and each
  client's ε, and the champion. Durable: it outlives the ``edgefleet federate`` driver, whose
  gauges Ray drops when that process ends. With what each edge node serves, it gives the version
  each should serve (desired vs actual), as the champion reconciler decides it
  (:func:`edgefleet.serve.convergence.decide`);
- the metrics endpoints (what Prometheus scrapes): the rollout state of the running reconciler.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table

from edgefleet import metrics
from edgefleet.config import EdgefleetConfig
from edgefleet.serve.convergence import FleetState, champion_marks, decide, describe, off_champion, served_version

if TYPE_CHECKING:  # the rows arrive unpickled from the Gateway; this module only reads them
    from edgefleet.serve.fleet_tracker import TargetStatus

GATEWAY_TIMEOUT_S = 5.0
REGISTRY_EVERY_S = 15.0


def build_status(
    nodes: list[Any],
    gateway: Sequence[TargetStatus] | None,
    samples: dict[str, list],
    registry: dict[str, Any],
    *,
    gateway_error: str = "",
) -> dict[str, Any]:
    """The status document (pure): ``nodes`` from topology.describe_nodes, ``gateway`` from
    ``Gateway.fleet_status`` (None if it did not answer), ``samples`` from :func:`metrics.scrape`,
    ``registry`` from :func:`registry_view`."""
    rows = []
    desired = _desired(nodes, gateway, registry)
    wanted = decide(desired, canary_timeout_s=float("inf")).desired if desired is not None else {}
    live = {n.node_id for n in nodes if n.alive}
    seen = {t.target_id: t for t in gateway or ()}
    # Ray keeps a dead raylet in its node table; once the site is back on a new raylet, that old
    # entry is history, not a second node.
    for n in (n for n in nodes if n.alive or n.node_id not in live):
        g = seen.get(n.node_id)
        row = {"node": n.node_id, "role": n.role, "labels": n.labels, "alive": n.alive, "health": _health(n, g)}
        if g is not None:
            row |= {
                "queue_depth": g.queue_depth,
                "in_flight": g.in_flight,
                "model": g.model,
                "model_version": g.model_version,
                **dataclasses.asdict(g.recent),  # requests, tokens_per_s, sla_met, sla_judged, sla_attainment
            }
        if n.node_id in wanted:  # desired vs actual: the registry version (None: the base model) it should serve
            serves = desired.serving.get(n.node_id, "no answer")
            row |= {"desired_version": wanted[n.node_id], "on_desired": serves == wanted[n.node_id]}
        rows.append(row)
    run = registry.get("run") or {}
    budget = run.get("budget")
    return {
        "time": time.time(),
        "nodes": rows,
        "gateway": "ok" if gateway is not None else gateway_error,
        "registry": registry.get("error", "ok"),
        "run": run.get("run"),
        "round": run.get("round"),
        "epsilon": {c: {"spent": e, "budget": budget} for c, e in run.get("epsilon", {}).items()},
        "champion_version": registry.get("champion"),
        "rollout_state": _rollout_state(samples),
        **({"nodes_off_champion": off_champion(desired)} if desired is not None else {}),
    }


def _desired(nodes: list[Any], gateway: Sequence[TargetStatus] | None, registry: dict[str, Any]) -> FleetState | None:
    """The edge nodes as the champion reconciler sees them (None without the registry's or the
    Gateway's view): what each serves, by the Gateway, and the champion's marks."""
    if gateway is None or "model_name" not in registry:
        return None
    edges = tuple(sorted({n.node_id for n in nodes if n.role == "edge" and n.alive}))
    seen = {t.target_id: t for t in gateway if t.healthy and t.model_version}
    serving = {n: served_version(seen[n].model_version, registry["model_name"]) for n in edges if n in seen}
    canaries = tuple(registry.get("canaries") or edges[:1])
    return FleetState(edges, canaries, registry.get("marks"), serving, now=time.time())


def _health(node: Any, g: TargetStatus | None) -> str:
    if not node.alive:
        return "down"
    if g is None:
        return "up" if node.role not in ("edge", "cloud") else "up (no Gateway view)"
    if g.circuit_open:
        return "circuit open"
    if not g.healthy:
        return "unreachable"
    return "draining" if g.draining else "serving"


def _rollout_state(samples: dict[str, list]) -> str | None:
    states = [labels["state"] for labels, value in samples.get("ray_edgefleet_rollout_state", []) if value == 1]
    return states[-1] if states else None


def render(status: dict[str, Any]) -> Group:
    table = Table(title="edgefleet fleet", caption="tokens/s and SLA over the last minute, as the Gateway saw them")
    desired = any("desired_version" in r for r in status["nodes"])
    columns = ("node", "role", "labels", "health", "queue", "tokens/s", "model version", "SLA (1 min)")
    for col in (*columns, "should serve") if desired else columns:
        table.add_column(col, justify="right" if col in ("queue", "tokens/s") else "left")
    colour = {"serving": "green", "down": "red", "unreachable": "red", "circuit open": "red", "draining": "yellow"}
    for r in status["nodes"]:
        labels = ", ".join(f"{k.removeprefix('edgefleet.io/')}={v}" for k, v in sorted(r["labels"].items())) or "-"
        health = f"[{colour[r['health']]}]{r['health']}" if r["health"] in colour else r["health"]
        if "queue_depth" in r:
            met = r["sla_attainment"]
            sla = "-" if met is None else f"{met:.0%} ({r['sla_met']}/{r['sla_judged']})"
            serving = [str(r["queue_depth"]), f"{r['tokens_per_s']:.1f}", r["model_version"] or r["model"], sla]
        else:
            serving = ["-"] * 4
        if desired:  # desired vs actual, as the champion reconciler sees it
            want = describe(r["desired_version"]) if "desired_version" in r else "-"
            serving.append(want if "desired_version" not in r or r["on_desired"] else f"[yellow]{want} (not yet)")
        table.add_row(r["node"], r["role"], labels, health, *serving)
    summary = Table(show_header=False, box=None)
    summary.add_row("Gateway", status["gateway"] if status["gateway"] == "ok" else f"[red]{status['gateway']}")
    run = f"round {status['round']} of run {status['run']}" if status["run"] else "no federated round yet"
    summary.add_row("federation", run)
    for client, e in status["epsilon"].items():
        spent, budget = e.get("spent", 0.0), e.get("budget")
        summary.add_row(f"  ε {client}", f"{spent:.2f} of {budget:g}" if budget else f"{spent:.2f}")
    champion = status["champion_version"]
    if status["registry"] != "ok":
        summary.add_row("registry", f"[red]{status['registry']}")
    summary.add_row("champion", f"version {champion}" if champion is not None else "none registered yet")
    if status["rollout_state"]:
        summary.add_row("rollout", status["rollout_state"])
    if status.get("nodes_off_champion"):
        summary.add_row("off the champion", f"{status['nodes_off_champion']} edge node(s)")
    return Group(table, summary)


def registry_view(cfg: EdgefleetConfig) -> dict[str, Any]:
    """The last federated run and the champion, from MLflow; ``{"error": ...}`` when it cannot be read."""
    from edgefleet.mlflow.registry import ModelRegistry

    try:
        registry = ModelRegistry.from_config(cfg)
        champion = registry.champion_version()
        marks = champion_marks(registry)
        return {
            "run": registry.latest_run(),
            "champion": int(champion) if champion else None,
            "marks": marks,  # the reconciler's: with what nodes serve, what each should serve
            "model_name": registry.name,
            "canaries": cfg.mlflow.canary_nodes,
        }
    except Exception as exc:  # noqa: BLE001 - an unreachable server must not hide the fleet
        return {"error": f"MLflow at {cfg.tracking_uri} unreadable ({type(exc).__name__})"}


def collect(cfg: EdgefleetConfig, registry: dict[str, Any] | None = None) -> dict[str, Any]:
    """One status document from the cluster this process is connected to."""
    import ray
    from ray import serve

    from edgefleet.platform.topology import describe_nodes

    raw = ray.nodes()
    gateway, error = None, ""
    try:
        gateway = serve.get_app_handle(cfg.app).fleet_status.remote().result(timeout_s=GATEWAY_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - no Serve app, or it is down: show the rest
        error = f"not answering ({type(exc).__name__})"
    samples = metrics.scrape(metrics.endpoints(raw))
    return build_status(
        describe_nodes(raw),
        gateway,
        samples,
        registry if registry is not None else registry_view(cfg),
        gateway_error=error,
    )


def show(cfg: EdgefleetConfig, args: argparse.Namespace, console: Console) -> None:
    if args.json:
        print(json.dumps(collect(cfg), indent=2, default=str))
        return
    if args.once or not sys.stdout.isatty():
        console.print(render(collect(cfg)))
        return
    from rich.live import Live

    registry, read_at = registry_view(cfg), time.monotonic()
    with Live(render(collect(cfg, registry)), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(args.interval)
                if time.monotonic() - read_at > REGISTRY_EVERY_S:  # rounds take minutes: spare the server
                    registry, read_at = registry_view(cfg), time.monotonic()
                live.update(render(collect(cfg, registry)))
        except KeyboardInterrupt:
            pass


def cmd_status(args: argparse.Namespace) -> int:
    import ray

    from edgefleet.cli.fleet import console, running_address
    from edgefleet.config import load_config
    from edgefleet.errors import FleetError
    from edgefleet.platform.cluster import connect

    cfg = load_config(args.config, ray_address=args.address)
    address = running_address(cfg)
    if not address:
        raise FleetError("no running fleet found: start one with `edgefleet up`, or pass --address")
    connect(address, log_to_driver=False)
    try:
        show(cfg, args, console)
    finally:
        ray.shutdown()  # only disconnect: status never stops a fleet
    return 0


def add_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="the live fleet: health, queues, tokens/s, SLA, round, champion, ε")
    add_arguments(status)
    status.set_defaults(func=cmd_status, supports_json=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print the table once instead of refreshing it")
    parser.add_argument("--interval", type=_positive, default=2.0, help="seconds between refreshes (default 2)")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
