"""The demo's deadline-routing scene: a tight request stays on the edge, a long one goes to the cloud.

On this one machine the "cloud" is another CPU process, no faster than an edge node, so the scene
runs on synthetic backends (:mod:`edgefleet.platform.synthetic`) in its own Serve app on the same
fleet: edge nodes with the timing of SmolLM2 bf16 (the edge format) measured here, and a cloud with a GPU's decode
speed 60 ms away. The routing, the Gateway and the SDK are the real ones; only the tokens are not.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from edgefleet.cli.tables import show
from edgefleet.config import EdgefleetConfig

APP = "demo-deadlines"
EDGE_PROFILE = "synthetic:4.35:60.3:0.129"  # SmolLM2 bf16, 1 thread, `edgefleet bench calibrate` here
CLOUD_PROFILE = "synthetic:0.1:6:0.01"  # a GPU-class decode, ~10× an edge CPU's
# (what, max_new_tokens, deadline s): short and urgent, then long with room to spare.
SCENE = (("a tight deadline", 8, 1.0), ("a long answer", 200, 2.5))


def scene_config(cfg: EdgefleetConfig) -> EdgefleetConfig:
    edges = [
        n.model_copy(update={"model": n.model.model_copy(update={"source": EDGE_PROFILE})})
        for n in cfg.fleet.edge_nodes
    ]
    cloud = cfg.fleet.cloud.model_copy(
        update={"model": cfg.fleet.cloud.model.model_copy(update={"source": CLOUD_PROFILE})}
    )
    fleet = cfg.fleet.model_copy(update={"edge_nodes": edges, "cloud": cloud})
    routing = cfg.routing.model_copy(update={"policy": "sla"})
    return cfg.model_copy(update={"app": APP, "fleet": fleet, "routing": routing})


def run(cfg: EdgefleetConfig, token: str | None, console: Console) -> list[Any]:
    """Deploy the scene's app, send its two requests one after the other, print where each went and why."""
    from ray import serve

    from edgefleet.client import Client
    from edgefleet.serve.app import deploy

    scene = scene_config(cfg)
    with console.status("deadline routing: starting synthetic edge nodes and a GPU-class cloud"):
        deployment = deploy(scene, log_level="WARNING")
    site = cfg.fleet.edge_nodes[0].site or cfg.fleet.edge_nodes[0].id
    table = Table(
        title=f"deadline routing (synthetic timing: edge = SmolLM2 bf16 here, cloud = GPU-class, "
        f"{cfg.fleet.cloud.network.rtt_ms:.0f} ms away)"
    )
    for col in ("request", "tokens", "deadline ms", "served_by", "predicted ms", "total ms", "SLA", "why there"):
        table.add_column(col, overflow="fold")
    done = []
    try:
        with Client(deployment.grpc_address, token=token, application=APP) as client:
            for route in ("edge", "cloud"):  # every target reports measured speeds before the scene
                client.generate("warm up", max_new_tokens=4, route=route, site=site, timeout=30)
            time.sleep(0.3)  # two stats heartbeats
            for what, tokens, deadline_s in SCENE:
                d = client.generate(f"Please write {what}.", max_new_tokens=tokens, site=site, timeout=deadline_s)
                done.append(d)
                table.add_row(
                    what,
                    str(tokens),
                    f"{deadline_s * 1000:.0f}",
                    d.served_by,
                    f"{d.predicted_ms:.0f}",
                    f"{d.total_ms:.0f}",
                    "met" if d.sla_met else "[red]missed",
                    d.route_reason,
                )
        show(console, table)
    finally:
        serve.delete(APP)
        del deployment
    return done
