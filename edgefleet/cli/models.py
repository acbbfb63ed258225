"""``edgefleet models list | show VERSION | promote VERSION | rollback``: the MLflow registry, for operators.

The same registry the MLflow UI shows (``mlflow.tracking_uri``, default a SQLite store in the
cache); these commands only move aliases and read tags, as MLflow's own tools would.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from edgefleet.cli.fleet import console, fetch_model
from edgefleet.cli.tables import show
from edgefleet.config import EdgefleetConfig, load_config
from edgefleet.errors import EdgefleetError


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="model cache and the MLflow registry").add_subparsers(
        dest="models_command", required=True
    )
    fetch = models.add_parser("fetch", help="download and convert SmolLM2 into the cache")
    fetch.add_argument("--source", default="smollm2", choices=["smollm2"])
    fetch.set_defaults(func=cmd_fetch)
    ls = models.add_parser("list", help="registered versions with their aliases, gate decision and lineage")
    ls.set_defaults(func=cmd_list, supports_json=True)
    show = models.add_parser("show", help="one version's tags")
    show.add_argument("version")
    show.set_defaults(func=cmd_show)
    promote = models.add_parser("promote", help="make VERSION the champion (its predecessor is remembered)")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by an operator")
    promote.set_defaults(func=cmd_promote)
    rollback = models.add_parser("rollback", help="move champion back to the version it replaced")
    rollback.add_argument("--reason", default="rolled back by an operator")
    rollback.set_defaults(func=cmd_rollback)
    outbox = models.add_parser("outbox", help="rounds waiting to be published, and quarantined ones")
    outbox.add_argument("--requeue", action="store_true", help="put quarantined rounds back to be published")
    outbox.set_defaults(func=cmd_outbox)


def cmd_fetch(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    fetch_model(cfg, args.source)
    return 0


def open_registry(cfg: EdgefleetConfig) -> Any:
    from edgefleet.mlflow.registry import ModelRegistry, TrackingUnavailable

    registry = ModelRegistry.from_config(cfg)
    try:
        registry.flush()  # anything a round left in the outbox while the server was down
    except TrackingUnavailable as exc:
        raise EdgefleetError(f"MLflow tracking server unreachable: {exc}") from None
    return registry


def _guard(call: Any) -> Any:
    try:
        return call()
    except KeyError as exc:
        raise EdgefleetError(str(exc.args[0]) if exc.args else str(exc)) from None


def versions_table(versions: list[dict[str, Any]], name: str) -> Table:
    table = Table(title=f"{name} in the MLflow registry")
    for col in ("version", "aliases", "run / round", "held-out loss", "ε max", "clients (data lineage)", "gate", "why"):
        table.add_column(col, overflow="fold")
    from edgefleet.mlflow.registry import GATE_REASON_TAG, GATE_TAG, ROLLED_BACK_TAG, ROUND_TAG, RUN_TAG

    for v in versions:
        t = v["tags"]
        gate = t.get(GATE_TAG, "-") + (" [red](rolled back)" if ROLLED_BACK_TAG in t else "")
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]) or "-",
            f"{t.get(RUN_TAG, '-')} / {t.get(ROUND_TAG, '-')}",
            t.get("edgefleet.held_out_loss", "-")[:6],
            t.get("edgefleet.epsilon_max", "-"),
            t.get("edgefleet.data_lineage", "-"),
            gate,
            t.get(ROLLED_BACK_TAG) or t.get(GATE_REASON_TAG, "-"),
        )
    return table


def cmd_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    versions = open_registry(cfg).versions()
    if args.json:
        print(json.dumps(versions, indent=1))
    else:
        show(console, versions_table(versions, cfg.mlflow.model_name))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    v = _guard(lambda: open_registry(cfg).show(args.version))
    console.print(f"{cfg.mlflow.model_name} version {v['version']}  aliases: {', '.join(v['aliases']) or '-'}")
    for key, value in sorted(v["tags"].items()):
        console.print(f"  {key} = {value}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    _guard(lambda: open_registry(cfg).promote(args.version, args.reason))
    console.print(f"{cfg.mlflow.model_name}@champion → version {args.version}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from edgefleet.mlflow.registry import ModelRegistry

    registry = ModelRegistry.from_config(load_config(args.config, ray_address=args.address))
    if args.requeue:
        for key in registry.outbox.requeue():
            console.print(f"requeued {key.run} round {key.round}")
    table = Table(title=f"outbox of {registry.outbox.destination}")
    for col in ("run / round", "state", "failed attempts", "last error"):
        table.add_column(col, overflow="fold")
    for state, entries in (("waiting", registry.outbox.entries()), ("quarantined", registry.quarantined())):
        for e in entries:
            table.add_row(f"{e.key.run} / {e.key.round}", state, str(e.state.attempts), e.state.last_error or "-")
    show(console, table)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address)
    previous = _guard(lambda: open_registry(cfg).rollback(args.reason))
    console.print(f"{cfg.mlflow.model_name}@champion rolled back to version {previous} ({args.reason})")
    return 0
