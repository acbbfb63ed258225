"""The demo's last scenes: federated DP rounds across the edge nodes, the versions they left in the
MLflow registry, and the champion's canary rollout to the edge nodes."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any

from rich.console import Console
from rich.table import Table

from edgefleet.cli import federate
from edgefleet.cli.tables import show
from edgefleet.config import EdgefleetConfig

LIVE_QUESTIONS_PER_SITE = 12  # asked again while the canary is watched: enough ratings per group to judge on


def collect_feedback(cfg: EdgefleetConfig, client: Any, console: Console) -> None:
    """Each site's simulated users ask about their own domain and rate the answers through the API."""
    from rich.progress import Progress

    from edgefleet.eval.sites import site_domains
    from edgefleet.eval.users import ask_and_rate

    console.rule("users rate their answers: the feedback stays on their site's edge node")
    domains = site_domains([n.id for n in cfg.fleet.edge_nodes], seed=cfg.federation.seed)
    sites = {n.id: n.site for n in cfg.fleet.edge_nodes}
    total = sum(len(d.asked) for d in domains.values())
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("users asking and rating", total=total)
        said = ask_and_rate(client, domains, sites, on_answer=lambda: bar.advance(task))
    table = Table(title="feedback through the API (client.feedback → Gateway → the site's edge node, on disk)")
    for col in ("site", "questions", "rated good", "corrected", "kept on"):
        table.add_column(col)
    for s in said:
        table.add_row(s.site, str(s.asked), str(s.good), str(s.corrected), ", ".join(sorted(s.kept_on)))
    show(console, table)


def run(cfg: EdgefleetConfig, console: Console, client: Any = None) -> None:
    """Federated DP rounds across the edge nodes, on each site's documents and its users' feedback;
    then the champion's canary rollout, judged with the users (``client``) rating the answers."""
    from edgefleet.cli.models import open_registry, versions_table
    from edgefleet.eval.sites import write_site_data

    console.rule("federated learning: the edge nodes learn from their users; nothing they said leaves them")
    federate.prepare(cfg)
    write_site_data(cfg, seed=cfg.federation.seed)
    run_dir = cfg.cache_dir / "federation" / time.strftime("demo-%Y%m%d-%H%M%S")
    federate.run_rounds(cfg, run_dir, cfg.federation.rounds, out=console)
    registry = open_registry(cfg)
    show(console, versions_table(registry.versions(), cfg.mlflow.model_name))
    champion = registry.champion_version()
    if champion is not None:
        rollout(cfg, registry, champion, console, client)
        ask_the_champion(cfg, console, registry.champion_version())  # a rejected one hands it back
    console.print(
        f"MLflow UI: `edgefleet up` serves it on http://127.0.0.1:{cfg.ports.mlflow_ui} "
        f"(store: {cfg.tracking_uri}); load the champion with "
        f'mlflow.pyfunc.load_model("models:/{cfg.mlflow.model_name}@champion")'
    )


def ask_the_champion(cfg: EdgefleetConfig, console: Console, version: str | None) -> None:
    """The rolled-out champion, asked a general question its training never saw."""
    import ray

    from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name

    question = "What is the capital of France?"
    node = cfg.fleet.edge_nodes[0].id
    actor = ray.get_actor(actor_name(node, cfg.app), namespace=ACTOR_NAMESPACE)
    answer = ray.get(actor.generate.remote(question, max_new_tokens=24), timeout=120)
    serving = f"the champion, v{version}" if version else "the base model (no champion)"
    console.print(f"[bold]{node}, serving {serving}:[/] {question} → {answer.text.strip()}")


def rollout(cfg: EdgefleetConfig, registry: Any, version: str, console: Console, client: Any = None) -> None:
    """The champion goes to one canary edge node first, is judged against the rest, then everywhere.
    While the canary is watched, each site's users ask again and rate what they get (``client``)."""
    from edgefleet.eval.sites import probe_chats, site_domains
    from edgefleet.eval.users import ask_and_rate
    from edgefleet.serve.rollout import RolloutController
    from edgefleet.train.data import held_out_dir, read_texts

    canary = (cfg.mlflow.canary_nodes or [cfg.fleet.edge_nodes[0].id])[0]
    live_traffic = None
    if client is not None:
        domains = site_domains([n.id for n in cfg.fleet.edge_nodes], seed=cfg.federation.seed)
        again = {n: replace(d, asked=d.asked[:LIVE_QUESTIONS_PER_SITE]) for n, d in domains.items()}
        sites = {n.id: n.site for n in cfg.fleet.edge_nodes}
        live_traffic = partial(ask_and_rate, client, again, sites)
    ctl = RolloutController.from_config(
        cfg,
        registry,
        canaries=[canary],
        window_s=min(5.0, cfg.mlflow.rollout_window_s),
        probe=probe_chats(cfg) or read_texts(held_out_dir(cfg))[:4],
        deadline_ms=10_000,
        live_traffic=live_traffic,
    )
    with console.status(f"rolling out {cfg.mlflow.model_name} v{version}: canary {canary}, then the rest"):
        report = ctl.roll_out(version)
    table = Table(title=f"canary rollout of v{version}: {'promoted' if report.verdict.promote else 'rolled back'}")
    for col in ("group", "requests", "errors", "SLA met", "chat probe loss", "users' ratings good"):
        table.add_column(col)
    for name, g in (("canary " + ", ".join(report.canaries), report.canary), ("the rest", report.rest)):
        rated = f"{g.ratings.good}/{g.ratings.total}" if g.ratings.total else "-"
        table.add_row(name, str(g.requests), str(g.errors), f"{g.attainment:.0%}", f"{g.probe_loss:.3f}", rated)
    show(console, table)
    console.print(f"verdict: {report.verdict.reason}")
    for node, serving in report.serving.items():
        console.print(f"  {node} serves {serving}")
