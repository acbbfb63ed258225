"""Soak: a bounded loopback load for N minutes (default 10) on the embedded fleet; does anything grow?

    make soak                      # or: .venv/bin/python -m bench.soak --minutes 10

Tiny models on 3 edge nodes and the cloud, 8 streams at a time, every request with a deadline.
Every 15 s it samples the fleet's processes (this driver and every process it started: raylets,
GCS, dashboard, workers, replicas): total RSS, thread count, process count, and Ray's live actors.
After a warm-up (the first 2 minutes, or a fifth of a shorter run) RSS may grow at most 10% and
actors and threads not at all beyond warm-up noise. Prints a table, writes bench/results/soak.json
and soak.png, and exits 1 if a bound is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

from bench.common import RESULTS, free_port, print_table, write_result

RSS_GROWTH_LIMIT = 0.10
SAMPLE_EVERY_S = 15.0


def soak_config() -> Any:
    from edgefleet.config import parse_config

    tiny = {"source": "tiny", "quantization": "none"}
    return parse_config(
        {
            "fleet": {
                "edge_nodes": [
                    {"id": f"edge-{i}", "num_cpus": 1, "actor_cpus": 0.25, "model": tiny} for i in (1, 2, 3)
                ],
                "cloud": {"num_cpus": 1, "replica_cpus": 0.25, "model": tiny},
            },
            "ray": {"head_cpus": 1, "object_store_mb": 100, "dashboard": True},
            "ports": {
                "grpc": free_port(),
                "http": free_port(),
                "dashboard": free_port(),
                "mlflow_ui": free_port(),
                "metrics": free_port(),
            },
        },
        source="soak",
    )


def sample(started: float, dashboard: str) -> dict[str, float]:
    import psutil
    from ray.util.state import list_actors

    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    rss = threads = 0
    by_process: dict[str, float] = {}  # what each process is (its Ray title) → MB, to find what grows
    for p in procs:
        try:
            mb = p.memory_info().rss / 2**20
            threads += p.num_threads()
            name = _role(p.cmdline(), p.name())
        except psutil.NoSuchProcess:
            continue
        rss += mb * 2**20
        by_process[name] = by_process.get(name, 0.0) + mb
    # The address explicitly: without it Ray picks "the latest cluster on this machine", maybe another one.
    actors = len(
        list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False)
    )
    return {
        "t_s": time.monotonic() - started,
        "rss_mb": rss / 2**20,
        "threads": threads,
        "processes": len(procs),
        "actors": actors,
        "rss_mb_by_process": by_process,
    }


def _role(cmdline: list[str], name: str) -> str:
    """A stable label for a fleet process: Ray's title (``ray::ServeReplica:edgefleet:Gateway``), or the
    binary (``raylet``, ``gcs_server``); the PID changes on restarts, the role does not."""
    title = " ".join(cmdline)
    if title.startswith("ray::"):  # "ray::EdgeNode.generate_stream": the method changes, the actor does not
        return title.split()[0].split(".")[0]
    for known in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "bench.soak"):
        if known in title:
            return known
    return name


def growers(samples: list[dict], warmup_s: float, top: int = 6) -> list[tuple[str, float, float]]:
    """(process role, MB after warm-up, MB at the end) of the roles that grew most."""
    base = next(s for s in samples if s["t_s"] >= warmup_s)["rss_mb_by_process"]
    end = samples[-1]["rss_mb_by_process"]
    rows = [(role, base.get(role, 0.0), mb) for role, mb in end.items()]
    return sorted(rows, key=lambda r: r[2] - r[1], reverse=True)[:top]


async def load(target: str, stop: threading.Event, counts: dict[str, int], concurrency: int = 8) -> None:
    from edgefleet.client import AsyncClient, EdgefleetClientError

    async def worker(client: AsyncClient, w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                async for _ in client.stream(
                    f"worker {w} request {i}", max_new_tokens=16, site=f"edge-{i % 3 + 1}", timeout=20
                ):
                    pass
                counts["ok"] += 1
            except EdgefleetClientError as e:
                counts[e.code or "client"] = counts.get(e.code or "client", 0) + 1

    async with AsyncClient(target) as client:
        await asyncio.gather(*(worker(client, w) for w in range(concurrency)))


def growth(samples: list[dict], warmup_s: float) -> dict[str, float]:
    """Growth of each measure from the end of warm-up to the end (means of 3 samples at each end,
    so one sample caught mid-garbage-collection does not decide)."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    base, last = after[:3], after[-3:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {
        "rss_growth": mean(last, "rss_mb") / mean(base, "rss_mb") - 1,
        "threads_delta": mean(last, "threads") - mean(base, "threads"),
        "actors_delta": mean(last, "actors") - mean(base, "actors"),
        "rss_mb_after_warmup": mean(base, "rss_mb"),
        "rss_mb_end": mean(last, "rss_mb"),
    }


def plot(samples: list[dict], warmup_s: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    t = [s["t_s"] / 60 for s in samples]
    ax1.plot(t, [s["rss_mb"] for s in samples], marker=".")
    ax1.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    ax1.set_ylabel("fleet RSS (MB)")
    ax1.legend()
    ax2.plot(t, [s["threads"] for s in samples], marker=".", label="threads")
    ax2.plot(t, [s["actors"] * 10 for s in samples], marker=".", label="actors × 10")
    ax2.set_xlabel("minutes under load")
    ax2.legend()
    fig.suptitle("soak: loopback load on the embedded fleet (tiny models)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    from rich.progress import Progress

    from edgefleet.platform.cluster import start_local_fleet
    from edgefleet.serve.app import deploy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    duration_s = args.minutes * 60
    warmup_s = min(120.0, duration_s / 5)
    cfg = soak_config()
    samples: list[dict] = []
    counts = {"ok": 0}
    with start_local_fleet(cfg, log_to_driver=False):
        served = deploy(cfg, log_level="WARNING")
        dashboard = f"http://127.0.0.1:{cfg.ports.dashboard}"
        stop = threading.Event()
        loader = threading.Thread(target=lambda: asyncio.run(load(served.grpc_address, stop, counts)), daemon=True)
        started = time.monotonic()
        loader.start()
        with Progress() as progress:
            task = progress.add_task("soak", total=duration_s)
            while (elapsed := time.monotonic() - started) < duration_s:
                samples.append(sample(started, dashboard))
                progress.update(task, completed=elapsed, description=f"soak: {counts['ok']} answers")
                time.sleep(min(SAMPLE_EVERY_S, max(0.0, duration_s - elapsed)))
            samples.append(sample(started, dashboard))
        stop.set()
        loader.join(timeout=60)
    g = growth(samples, warmup_s)
    failed = {k: v for k, v in counts.items() if k != "ok"}
    verdict = {
        "rss": g["rss_growth"] <= RSS_GROWTH_LIMIT,
        "actors": g["actors_delta"] <= 0.5,
        "threads": g["threads_delta"] <= 0.05 * samples[-1]["threads"],
    }
    print_table(
        f"soak: {args.minutes:g} min, {counts['ok']} answers, {sum(failed.values())} failed {failed or ''}",
        ["measure", "after warm-up", "end", "growth", "bound", "met"],
        [
            [
                "fleet RSS (MB)",
                g["rss_mb_after_warmup"],
                g["rss_mb_end"],
                f"{g['rss_growth']:+.1%}",
                f"≤ {RSS_GROWTH_LIMIT:.0%}",
                verdict["rss"],
            ],
            ["live actors", "", samples[-1]["actors"], f"{g['actors_delta']:+.1f}", "0", verdict["actors"]],
            ["threads", "", samples[-1]["threads"], f"{g['threads_delta']:+.1f}", "≤ 5%", verdict["threads"]],
        ],
    )
    grew = growers(samples, warmup_s)
    print_table(
        "RSS growth by process role (MB)",
        ["process", "after warm-up", "end", "growth"],
        [[role, round(a, 1), round(b, 1), f"{b - a:+.1f}"] for role, a, b in grew],
    )
    write_result(
        "soak",
        {
            "minutes": args.minutes,
            "warmup_s": warmup_s,
            "answers": counts["ok"],
            "failed": failed,
            "growth": g,
            "growers": grew,
            "verdict": verdict,
            "samples": samples,
        },
    )
    plot(samples, warmup_s, RESULTS / "soak.png")
    return 0 if all(verdict.values()) and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
