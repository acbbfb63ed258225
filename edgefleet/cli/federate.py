"""``edgefleet federate``: federated rounds on the fleet, one table row per round.

It joins the fleet ``edgefleet up`` started, ``--address`` of any cluster (or ``$RAY_ADDRESS``, as
under ``ray job submit -- edgefleet federate …``), or starts the embedded one for the run. Each
client trains in a long-lived Ray Train session on its own node. The run directory
(``<cache>/federation/<run>``) holds everything; ``--run NAME`` of an interrupted run resumes it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from edgefleet.cli.fleet import console, fetch_model, join_or_start
from edgefleet.cli.tables import show
from edgefleet.config import EdgefleetConfig, load_config
from edgefleet.errors import ConfigError

if TYPE_CHECKING:
    from edgefleet.eval.scores import Quality
    from edgefleet.federation.round_state import RoundResult

CRASH_ENV = "EDGEFLEET_CRASH_AFTER"  # "<round>:<step>": fault injection for the resume tests


def add_parser(sub: Any) -> None:
    fed = sub.add_parser("federate", help="federated DP rounds across the edge nodes (secure aggregation, ledger)")
    fed.add_argument("--rounds", type=int, default=None, help="rounds to complete (default: federation.rounds)")
    fed.add_argument("--run", help="run name under <cache>/federation/; an existing run is resumed")
    fed.set_defaults(func=cmd_federate)


def cmd_federate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, ray_address=args.address or os.environ.get("RAY_ADDRESS"))
    rounds = args.rounds if args.rounds is not None else cfg.federation.rounds
    if rounds < 1:
        raise ConfigError("--rounds must be >= 1")
    crash = _crash_point(os.environ.get(CRASH_ENV))
    run_dir = cfg.cache_dir / "federation" / (args.run or time.strftime("run-%Y%m%d-%H%M%S"))
    prepare(cfg)
    fleet, owned = join_or_start(cfg, log_to_driver=False)
    try:
        run_rounds(cfg, run_dir, rounds, crash_after=crash)
    finally:
        if owned:
            fleet.shutdown()
    return 0


def prepare(cfg: EdgefleetConfig) -> None:
    """The clients' data directories and the base model, before any round."""
    from edgefleet.train.data import write_demo_shards

    write_demo_shards(cfg)  # a node with its own data_dir keeps its data
    for source in {n.model.source for n in cfg.fleet.edge_nodes}:
        fetch_model(cfg, source)


def run_rounds(
    cfg: EdgefleetConfig,
    run_dir: Path,
    rounds: int,
    *,
    crash_after: tuple[int, str] | None = None,
    out: Console = console,
) -> list[Any]:
    """Run (or resume) ``rounds`` rounds in ``run_dir``, printing a row as each one commits."""
    from edgefleet.federation.coordinator import Coordinator
    from edgefleet.federation.publication import RoundPublisher

    fed, priv = cfg.federation, cfg.privacy
    dp = f"DP-SGD ε={priv.target_epsilon:g}/round" if priv.target_epsilon else f"DP-SGD σ={priv.noise_multiplier:g}"
    if fed.user_dp:
        dp += f" + user-level DP (C={fed.user_dp.clip_norm:g}, σ={fed.user_dp.noise_multiplier:g})"
    out.print(
        f"federated run {run_dir.name}: {fed.strategy}, {fed.clients_per_round} of "
        f"{len(cfg.fleet.edge_nodes)} clients per round, {dp}, δ={priv.delta:g}, "
        f"secure aggregation {'on' if fed.secure_aggregation else 'off'}, budget ε={priv.client_budget_epsilon:g}"
        f" per client\n  state: {run_dir}"
    )
    status = out.status("starting")
    publisher = RoundPublisher.from_config(cfg, run=run_dir.name)

    def on_round(result: RoundResult, version: str | None) -> None:
        where = f"model version {version}" if version else "MLflow unreachable: kept in the outbox"
        if version:
            try:  # display only: the round is published whatever this says
                where += f" ({publisher.gate(version)})"
            except Exception:  # noqa: BLE001
                pass
        out.print(_round_line(result) + f" → {where}")

    coordinator = Coordinator(
        cfg, run_dir, crash_after=crash_after, publisher=publisher, on_step=status.update, on_round=on_round
    )
    done, current = len(coordinator.completed), coordinator.state.current
    if done or current:
        out.print(
            (f"resuming after round {done}" if done else "resuming")
            + (f" (round {done + 1} was in progress)" if current else "")
        )
    with status:
        results = coordinator.run(rounds)
    state = coordinator.state
    show(out, rounds_table(results, state.initial_loss, cfg, state.initial_quality))
    return results


def _round_line(r: Any) -> str:
    late = f", stragglers: {', '.join(f'{c} ({why})' for c, why in r.stragglers.items())}" if r.stragglers else ""
    q = r.quality
    users = (
        f", task score {q.task_score:.3f}, answers right {q.answer_match:.0%}, divergence {q.divergence:.4f}, "
        f"facts {q.facts_kept}/{q.facts_total}"
        if q is not None
        else ""
    )
    return (
        f"round {r.round}: {len(r.finished)}/{len(r.sampled)} clients, train loss {r.train_loss:.3f}, "
        f"held-out perplexity {r.perplexity:.2f}{users}, {r.wall_s:.1f} s{late}"
    )


def rounds_table(
    results: list[RoundResult], initial_loss: float, cfg: EdgefleetConfig, initial_quality: Quality | None = None
) -> Table:
    import math

    nodes = [n.id for n in cfg.fleet.edge_nodes]
    before = f"held-out perplexity before round 1: {math.exp(initial_loss):.2f}"
    if initial_quality:
        before += f"; the base model's task score {initial_quality.task_score:.3f}"
        match = initial_quality.answer_match
        before += f", answers right {match:.0%}" if math.isfinite(match) else ""
    table = Table(title=f"federated rounds ({before})")
    users = ("task score", "answers right", "divergence") if any(r.quality for r in results) else ()
    for col in ("round", "clients", "train loss", "held-out ppl", *users, *(f"ε {n}" for n in nodes), "user-level ε"):
        table.add_column(col, justify="right")
    table.add_column("wall s", justify="right")
    for r in results:
        clients = ", ".join(r.finished) + (f" [yellow](dropped {', '.join(r.stragglers)})" if r.stragglers else "")
        eps = [f"{r.epsilon[n]:.2f}" + ("" if n in r.finished else " [dim](sat out)") for n in nodes]
        user = f"{r.user_epsilon:.2f}" if r.user_epsilon is not None else "-"
        q = r.quality
        scores = (f"{q.task_score:.3f}", f"{q.answer_match:.0%}", f"{q.divergence:.4f}") if q else ("-",) * 3
        table.add_row(
            str(r.round),
            clients,
            f"{r.train_loss:.3f}",
            f"{r.perplexity:.2f}",
            *(scores if users else ()),
            *eps,
            user,
            f"{r.wall_s:.1f}",
        )
    return table


def _crash_point(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    round_id, _, step = value.partition(":")
    if not round_id.isdigit() or not step:
        raise ConfigError(f"{CRASH_ENV}={value!r}: expected <round>:<step>, e.g. 2:aggregated")
    return int(round_id), step
