"""The demo's last scenes: federated DP rounds across the edge nodes, the versions they left in the
MLflow registry, and the champion's canary rollout to the edge nodes."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from edgefleet import cli_federate
from edgefleet.cli_tables import show
from edgefleet.config import EdgefleetConfig


def run(cfg: EdgefleetConfig, fetch_model: Any, console: Console) -> None:
    """Federated DP rounds across the edge nodes, on the documentation topics each one holds."""
    from edgefleet.cli_models import _registry, versions_table

    console.rule("federated learning: the edge nodes improve the model on text that never leaves them")
    cli_federate.prepare(cfg, fetch_model)
    run_dir = cfg.cache_dir / "federation" / time.strftime("demo-%Y%m%d-%H%M%S")
    cli_federate.run_rounds(cfg, run_dir, cfg.federation.rounds, out=console)
    registry = _registry(cfg)
    show(console, versions_table(registry.versions(), cfg.mlflow.model_name))
    champion = registry.champion_version()
    if champion is not None:
        rollout(cfg, registry, champion, console)
    console.print(
        f"MLflow UI: `edgefleet up` serves it on http://127.0.0.1:{cfg.ports.mlflow_ui} "
        f"(store: {cfg.tracking_uri}); load the champion with "
        f'mlflow.pyfunc.load_model("models:/{cfg.mlflow.model_name}@champion")'
    )


def rollout(cfg: EdgefleetConfig, registry: Any, version: str, console: Console) -> None:
    """The champion goes to one canary edge node first, is judged against the rest, then everywhere."""
    from edgefleet.serve.rollout import RolloutController
    from edgefleet.train.data import held_out_dir, read_texts

    canary = (cfg.mlflow.canary_nodes or [cfg.fleet.edge_nodes[0].id])[0]
    ctl = RolloutController(
        cfg,
        registry,
        canaries=[canary],
        window_s=min(5.0, cfg.mlflow.rollout_window_s),
        probe_texts=read_texts(held_out_dir(cfg))[:4],
        deadline_ms=10_000,
    )
    with console.status(f"rolling out {cfg.mlflow.model_name} v{version}: canary {canary}, then the rest"):
        report = ctl.roll_out(version)
    table = Table(title=f"canary rollout of v{version}: {'promoted' if report.verdict.promote else 'rolled back'}")
    for col in ("group", "requests", "errors", "SLA met", "probe loss"):
        table.add_column(col)
    for name, g in (("canary " + ", ".join(report.canaries), report.canary), ("the rest", report.rest)):
        table.add_row(name, str(g.requests), str(g.errors), f"{g.attainment:.0%}", f"{g.probe_loss:.3f}")
    show(console, table)
    console.print(f"verdict: {report.verdict.reason}")
    for node, serving in report.serving.items():
        console.print(f"  {node} serves {serving}")
