"""Routing under open-loop load: the SLA router against p2c, round robin, edge-only, cloud-only and
an oracle, on the real path (SDK → Serve gRPC proxy → Gateway → EdgeNode actors / Cloud).

The fleet is 6 edge nodes of three speeds plus a cloud, all synthetic backends
(:mod:`edgefleet.platform.synthetic`): the real engine's batching and streaming on a timing profile,
so the fleet fits on 2 cores. The simulated WAN adds each node's RTT at the Gateway.

For each arrival process (Poisson; bursty = gamma, CV 3) and load (0.5-1.5× the edge nodes'
aggregate capacity), one seeded trace of interactive (tight, strict) and long (looser,
best-effort) requests is replayed against every policy, each in its own Serve app, with the SDK
streaming over gRPC. A request *meets its SLA* when its last token reaches the client within its
deadline; the client gives up at the deadline. The oracle (:mod:`bench.routing_sim`) schedules the
same trace clairvoyantly with exact service times; *feasible* counts the requests some target could
meet on an idle fleet.

Targets (routing issue): at 1.0× bursty load `sla` meets ≥ 99% of the feasible requests and is
within 2% of the oracle; at 1.2× its goodput is ≥ 1.5× that of `p2c`.

``BENCH_ROUTING_SECONDS`` (default 20) sets each trace's length.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, free_port, print_table, write_result
from bench.routing_sim import (
    TargetModel,
    TraceRequest,
    edge_capacity_per_s,
    feasible,
    finish_times,
    make_trace,
    oracle,
    percentile,
)

# The env vars narrow a run (e.g. a quick look at one policy); `make bench` runs everything.
POLICIES = tuple(os.environ.get("BENCH_ROUTING_POLICIES", "sla,p2c,round_robin,edge_only,cloud_only").split(","))
LOADS = tuple(float(x) for x in os.environ.get("BENCH_ROUTING_LOADS", "0.5,0.8,1.0,1.2,1.5").split(","))
ARRIVALS = tuple(os.environ.get("BENCH_ROUTING_ARRIVALS", "poisson,bursty").split(","))
SECONDS = float(os.environ.get("BENCH_ROUTING_SECONDS", "20"))
SEED = 7

# Three classes of edge box, two of each, and a cloud GPU that decodes fast but sits 120 ms away.
# Decode speeds bracket SmolLM2 int8 on one core here (19.4 ms/step, `edgefleet bench calibrate`).
EDGE_MAX_BATCH, CLOUD_MAX_BATCH = 4, 16
FLEET = (
    TargetModel("edge-1", "edge", 1.0, 20.0, 0.06, EDGE_MAX_BATCH, 10.0),
    TargetModel("edge-2", "edge", 1.0, 20.0, 0.06, EDGE_MAX_BATCH, 10.0),
    TargetModel("edge-3", "edge", 1.5, 35.0, 0.06, EDGE_MAX_BATCH, 15.0),
    TargetModel("edge-4", "edge", 1.5, 35.0, 0.06, EDGE_MAX_BATCH, 15.0),
    TargetModel("edge-5", "edge", 3.0, 70.0, 0.08, EDGE_MAX_BATCH, 25.0),
    TargetModel("edge-6", "edge", 3.0, 70.0, 0.08, EDGE_MAX_BATCH, 25.0),
    TargetModel("cloud", "cloud", 0.2, 8.0, 0.02, CLOUD_MAX_BATCH, 120.0),
)
REFERENCE = FLEET[2]  # deadlines are set against a middle-speed edge node


def fleet_config(ports: dict[str, int] | None = None) -> Any:
    from edgefleet.config import parse_config

    edges = [
        {
            "id": t.target_id,
            "num_cpus": 1,
            "actor_cpus": 0.1,
            "model": {"source": t.source},
            "network": {"rtt_ms": t.rtt_ms, "jitter_ms": 0.0},
            "batching": {"max_batch": t.max_batch},
        }
        for t in FLEET
        if t.tier == "edge"
    ]
    cloud = FLEET[-1]
    return parse_config(
        {
            "fleet": {
                "edge_nodes": edges,
                "cloud": {
                    "num_cpus": 1,
                    "replica_cpus": 0.1,
                    "model": {"source": cloud.source},
                    "network": {"rtt_ms": cloud.rtt_ms, "jitter_ms": 0.0},
                    "batching": {"max_batch": cloud.max_batch},
                    "max_queued_requests": 256,
                },
            },
            "ray": {"head_cpus": 1, "object_store_mb": 100, "dashboard": False},
            "federation": {"clients_per_round": 1, "min_clients": 1},
            "ports": ports
            or {"grpc": free_port(), "http": free_port(), "dashboard": free_port(), "mlflow_ui": free_port()},
        }
    )


def policy_config(base: Any, policy: str) -> Any:
    # Hedging is part of the SLA router's plan; the baselines route as Ray Serve would, without it.
    routing = base.routing.model_copy(update={"policy": policy, "hedging": policy == "sla"})
    return base.model_copy(update={"app": f"routing-{policy.replace('_', '-')}", "routing": routing})


# ---------------------------------------------------------------- the load generator


async def _one(client: Any, r: TraceRequest, t0: float) -> dict[str, Any]:
    from edgefleet.client import DeadlineExceeded, EdgefleetClientError, Overloaded

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + r.at_s - loop.time()))
    lag_ms = (loop.time() - t0 - r.at_s) * 1000
    sent = time.perf_counter()
    out: dict[str, Any] = {"index": r.index, "kind": r.kind, "lag_ms": lag_ms}
    try:
        done = None
        async for chunk in client.stream(
            r.prompt, max_new_tokens=r.new_tokens, timeout=r.deadline_ms / 1000, mode=r.mode
        ):
            if chunk.final:
                done = chunk.completion
        ms = (time.perf_counter() - sent) * 1000
        return out | {
            "outcome": "met" if ms <= r.deadline_ms else "late",
            "ms": ms,
            "tier": done.tier,
            "node": done.node_id,
            "hedged": "hedged to" in done.route_reason,
            "predicted_ms": done.predicted_ms,
            "reason": done.route_reason,
        }
    except Overloaded as exc:
        return out | {"outcome": "rejected", "reason": str(exc)}
    except DeadlineExceeded:
        return out | {"outcome": "missed"}
    except EdgefleetClientError as exc:
        return out | {"outcome": "error", "error": f"{type(exc).__name__}: {exc}"}


async def replay(target: str, app: str, trace: list[TraceRequest]) -> list[dict[str, Any]]:
    from edgefleet.client import AsyncClient

    async with AsyncClient(target, application=app, max_retries=0) as client:
        t0 = asyncio.get_running_loop().time() + 0.2
        return list(await asyncio.gather(*(_one(client, r, t0) for r in trace)))


async def warm_up(target: str, app: str) -> list[tuple[str, float, float]]:
    """A few idle requests per edge node and the cloud, one at a time, so every target has
    reported measured speeds; returns (target, client ms, modelled ms) for the path estimate."""
    from edgefleet.client import AsyncClient, EdgefleetClientError

    seen = []
    async with AsyncClient(target, application=app) as client:
        for rep in range(3):
            for t in FLEET:
                route = {"route": "cloud"} if t.tier == "cloud" else {"route": "edge", "site": t.target_id}
                probe = TraceRequest(0, 0.0, 40, 8, 0.0, "long")
                start = time.perf_counter()
                try:
                    done = await client.generate(probe.prompt, max_new_tokens=probe.new_tokens, timeout=30, **route)
                except EdgefleetClientError:  # e.g. route=cloud under edge_only
                    continue
                if done.node_id == t.target_id and rep:
                    seen.append((t.target_id, (time.perf_counter() - start) * 1000, finish_times(t, [probe])[0]))
    await asyncio.sleep(0.3)  # two stats heartbeats
    return seen


# ---------------------------------------------------------------- summaries


def summarise(results: list[dict[str, Any]], n_feasible: int) -> dict[str, Any]:
    n = len(results)
    by = {k: [r for r in results if r["outcome"] == k] for k in ("met", "late", "missed", "rejected", "error")}
    completed = by["met"] + by["late"]
    latencies = [r["ms"] for r in completed]
    return {
        "requests": n,
        "feasible": n_feasible,
        "met": len(by["met"]),
        "attainment": len(by["met"]) / n if n else 0.0,
        "attainment_of_feasible": len(by["met"]) / n_feasible if n_feasible else 0.0,
        "goodput_rps": len(by["met"]) / SECONDS,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "cloud_share": sum(r["tier"] == "cloud" for r in completed) / len(completed) if completed else 0.0,
        "rejected": len(by["rejected"]),
        "missed": len(by["missed"]),
        "late": len(by["late"]),
        "errors": len(by["error"]),
        "error_examples": sorted({r["error"] for r in by["error"]})[:3],
        "hedge_rate": sum(r["hedged"] for r in completed) / n if n else 0.0,
        "max_send_lag_ms": max((r["lag_ms"] for r in results), default=0.0),
    }


def oracle_summary(trace: list[TraceRequest], path_ms: float, n_feasible: int) -> dict[str, Any]:
    o = oracle(trace, FLEET, path_ms)
    n = len(trace)
    return {
        "requests": n,
        "feasible": n_feasible,
        "met": o.met,
        "attainment": o.met / n if n else 0.0,
        "attainment_of_feasible": o.met / n_feasible if n_feasible else 0.0,
        "goodput_rps": o.met / SECONDS,
        "p50_ms": percentile(o.latencies_ms, 50),
        "p99_ms": percentile(o.latencies_ms, 99),
        "cloud_share": o.cloud / o.met if o.met else 0.0,
        "rejected": n - o.met,
        "missed": 0,
        "late": 0,
        "errors": 0,
        "hedge_rate": 0.0,
        "order": o.order,
    }


def plot(rows: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, arrivals in zip(axes, ARRIVALS, strict=True):
        for policy in ("oracle", *POLICIES):
            pts = sorted(
                (r["load"], r["attainment"]) for r in rows if r["arrivals"] == arrivals and r["policy"] == policy
            )
            style = {"color": "black", "linestyle": "--"} if policy == "oracle" else {"marker": "o"}
            ax.plot([p[0] for p in pts], [p[1] * 100 for p in pts], label=policy, **style)
        feas = sorted(
            (r["load"], r["feasible"] / r["requests"])
            for r in rows
            if r["arrivals"] == arrivals and r["policy"] == "oracle"
        )
        ax.plot([p[0] for p in feas], [p[1] * 100 for p in feas], color="grey", linestyle=":", label="feasible")
        ax.set_title(f"{arrivals} arrivals")
        ax.set_xlabel("offered load (× aggregate edge capacity)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("requests that met their SLA, %")
    axes[1].legend(loc="lower left", fontsize=8)
    fig.suptitle("SLO attainment against load: SLA router vs baselines vs oracle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main


def main() -> None:
    import ray
    from ray import serve
    from rich.progress import Progress

    from edgefleet.platform.cluster import start_local_fleet
    from edgefleet.serve.app import deploy

    edges = [t for t in FLEET if t.tier == "edge"]
    sample = make_trace("poisson", 50.0, 20.0, REFERENCE, seed=SEED)
    capacity = edge_capacity_per_s(edges, sample)
    print(f"edge capacity for this request mix: {capacity:.2f} requests/s (full batches of {EDGE_MAX_BATCH})")
    traces = {
        (a, load): make_trace(a, load * capacity, SECONDS, REFERENCE, seed=SEED + i)
        for a in ARRIVALS
        for i, load in enumerate(LOADS)
    }

    base = fleet_config()
    fleet = start_local_fleet(base)
    rows: list[dict[str, Any]] = []
    path_samples: list[float] = []
    try:
        with Progress() as progress:
            task = progress.add_task("routing benchmark", total=len(POLICIES) * len(traces))
            for policy in POLICIES:
                cfg = policy_config(base, policy)
                progress.update(task, description=f"deploying {policy}")
                deployment = deploy(cfg, timeout_s=300, log_level="WARNING")
                seen = asyncio.run(warm_up(deployment.grpc_address, cfg.app))
                if policy == "sla":  # site= is honoured by the SLA router only: that is where it is measured
                    path_samples = [actual - modelled for _, actual, modelled in seen]
                for (arrivals, load), trace in traces.items():
                    progress.update(task, description=f"{policy}: {arrivals} × {load}")
                    results = asyncio.run(replay(deployment.grpc_address, cfg.app, trace))
                    rows.append({"policy": policy, "arrivals": arrivals, "load": load, "_results": results})
                    progress.advance(task)
                    time.sleep(1.0)  # let the last cancelled batches drain
                serve.delete(cfg.app)
                for actor in deployment.edge_actors.values():
                    ray.kill(actor)
                del deployment
    finally:
        fleet.shutdown()

    path_ms = statistics.median(path_samples) if path_samples else 0.0
    if os.environ.get("BENCH_ROUTING_RAW"):  # every request's outcome, for a closer look
        Path(os.environ["BENCH_ROUTING_RAW"]).write_text(
            json.dumps(
                {
                    "path_ms": path_ms,
                    "rows": rows,
                    "traces": {f"{a}:{lo}": [r.__dict__ for r in t] for (a, lo), t in traces.items()},
                }
            )
        )
    feasible_count = {key: sum(feasible(r, FLEET, path_ms) for r in trace) for key, trace in traces.items()}
    summaries = []
    for row in rows:
        n_feasible = feasible_count[row["arrivals"], row["load"]]
        summaries.append({k: v for k, v in row.items() if k != "_results"} | summarise(row["_results"], n_feasible))
    for (arrivals, load), trace in traces.items():
        summaries.append(
            {"policy": "oracle", "arrivals": arrivals, "load": load}
            | oracle_summary(trace, path_ms, feasible_count[arrivals, load])
        )
    report(summaries, capacity, path_ms)


def headline(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three targets, as measured (None where this run did not cover them)."""
    at = {(s["policy"], s["arrivals"], s["load"]): s for s in summaries}
    sla_1, oracle_1 = at.get(("sla", "bursty", 1.0)), at.get(("oracle", "bursty", 1.0))
    ratios = {
        a: at[("sla", a, 1.2)]["goodput_rps"] / max(at[("p2c", a, 1.2)]["goodput_rps"], 1e-9)
        for a in ARRIVALS
        if ("sla", a, 1.2) in at and ("p2c", a, 1.2) in at
    }
    return {
        "sla_attainment_of_feasible_bursty_1.0": sla_1 and sla_1["attainment_of_feasible"],
        "sla_vs_oracle_bursty_1.0": sla_1 and oracle_1 and sla_1["met"] / max(oracle_1["met"], 1),
        "sla_over_p2c_goodput_1.2": ratios,
        "targets": {"attainment_of_feasible": 0.99, "vs_oracle": 0.98, "goodput_ratio": 1.5},
    }


def report(summaries: list[dict[str, Any]], capacity: float, path_ms: float) -> None:
    order = {p: i for i, p in enumerate(("oracle", *POLICIES))}
    summaries.sort(key=lambda s: (s["arrivals"], s["load"], order[s["policy"]]))
    header = [
        "arrivals",
        "load",
        "policy",
        "reqs",
        "feasible",
        "SLA met %",
        "of feasible %",
        "goodput/s",
        "p50 ms",
        "p99 ms",
        "cloud %",
        "rejected",
        "hedge %",
        "errors",
    ]
    table = [
        [
            s["arrivals"],
            s["load"],
            s["policy"],
            s["requests"],
            s["feasible"],
            s["attainment"] * 100,
            s["attainment_of_feasible"] * 100,
            s["goodput_rps"],
            s["p50_ms"],
            s["p99_ms"],
            s["cloud_share"] * 100,
            s["rejected"],
            s["hedge_rate"] * 100,
            s["errors"],
        ]
        for s in summaries
    ]
    print_table(f"Routing, open loop, {SECONDS:.0f} s per trace, edge capacity {capacity:.2f} req/s", header, table)
    head = headline(summaries)
    print(head)
    png = RESULTS / "routing_attainment.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(summaries, png)
    write_result(
        "routing",
        {
            "seconds_per_trace": SECONDS,
            "seed": SEED,
            "edge_capacity_rps": capacity,
            "path_ms": path_ms,
            "fleet": [t.__dict__ for t in FLEET],
            "headline": head,
            "rows": summaries,
            "plot": png.name,
        },
    )


if __name__ == "__main__":
    main()
