"""What differential privacy costs a local update, and what a Ray Train job adds around it.

- *DP overhead*: samples/s of :func:`edgefleet.train.dp.local_update` on SmolLM2 with LoRA, the
  same data, batch and steps, without DP and with DP in each per-sample-gradient mode Opacus
  offers (a mode that fails is reported with its error). Median of the measured steps' rate
  after one warm-up update.
- *Job overhead*: a Ray Train job running the same private update on an edge node of a one-node
  embedded fleet: its wall time against the time spent inside the update.

Target (private-training issue): DP at most 1.1× slower than non-private.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any

from bench.common import free_port, print_table, write_result

BLOCK, BATCH, STEPS, REPEATS = 64, 8, 4, 3
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
MODES = ("none", "hooks", "functorch", "ghost")


def _data(tok: Any) -> Any:
    from edgefleet.train.data import chunk_for_causal_lm, demo_topics, split_topics

    texts = demo_topics()
    split = split_topics(["edge-1", "edge-2", "edge-3"], topics=list(texts), seed=0)
    return chunk_for_causal_lm([texts[t] for t in split.shards["edge-1"]], tok, BLOCK)


def dp_overhead() -> list[dict[str, Any]]:
    import torch

    from edgefleet.config import ModelSpec, PrivacyConfig
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.dp import LocalHyper, local_update

    torch.set_num_threads(THREADS)
    base, tok = load_trainable(ModelSpec(source="smollm2"))
    blocks = _data(tok)
    privacy = PrivacyConfig(target_epsilon=8.0)
    rows = []
    for mode in MODES:
        hp = LocalHyper(
            lr=1e-3,
            batch_size=BATCH,
            physical_batch=BATCH,
            max_steps=STEPS,
            epochs=100.0,
            grad_sample_mode="hooks" if mode == "none" else mode,
        )  # type: ignore[arg-type]
        try:
            local_update(base, None, blocks, None if mode == "none" else privacy, dataclasses.replace(hp, max_steps=1))
            rates = [
                local_update(base, None, blocks, None if mode == "none" else privacy, hp).samples_per_s
                for _ in range(REPEATS)
            ]
            rows.append(
                {
                    "mode": mode,
                    "private": mode != "none",
                    "samples_per_s": statistics.median(rates),
                    "runs": rates,
                    "error": "",
                }
            )
        except Exception as exc:  # noqa: BLE001 - a mode that does not work here is a result too
            rows.append(
                {
                    "mode": mode,
                    "private": True,
                    "samples_per_s": None,
                    "runs": [],
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                }
            )
    plain = next(r["samples_per_s"] for r in rows if r["mode"] == "none")
    for r in rows:
        r["slowdown"] = plain / r["samples_per_s"] if r["samples_per_s"] else None
    return rows


def job_overhead() -> dict[str, Any]:
    from edgefleet.config import parse_config
    from edgefleet.platform.cluster import start_local_fleet
    from edgefleet.train.data import write_demo_shards
    from edgefleet.train.dp import LocalHyper
    from edgefleet.train.jobs import run_local_update

    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(
            {
                "fleet": {
                    "edge_nodes": [
                        {
                            "id": "edge-1",
                            "num_cpus": 2,
                            "actor_cpus": 0.1,
                            "data_dir": f"{tmp}/edge-1",
                            "model": {"source": "smollm2", "quantization": "none"},
                        }
                    ],
                    "cloud": {"num_cpus": 1, "model": {"source": "tiny", "quantization": "none"}},
                },
                "ray": {"dashboard": False},
                "federation": {"clients_per_round": 1, "min_clients": 1},
                "ports": {"grpc": free_port(), "http": free_port(), "dashboard": free_port(), "mlflow_ui": free_port()},
            }
        )
        write_demo_shards(cfg)
        fleet = start_local_fleet(cfg)
        try:
            hp = LocalHyper(lr=1e-3, batch_size=BATCH, physical_batch=BATCH, max_steps=STEPS, epochs=100.0)
            started = time.perf_counter()
            result = run_local_update(cfg, "edge-1", hp=hp, block_size=BLOCK, cpus_per_worker=1.0, threads=THREADS)
            wall = time.perf_counter() - started
        finally:
            fleet.shutdown()
    return {
        "wall_s": wall,
        "train_s": result.train_s,
        "overhead_s": wall - result.train_s,
        "epsilon": result.update.epsilon,
        "steps": result.update.steps,
    }


def main() -> None:
    rows = dp_overhead()
    print_table(
        f"DP local update, SmolLM2 + LoRA, block {BLOCK}, batch {BATCH}, {THREADS} threads, "
        f"median of {REPEATS}×{STEPS} steps",
        ["mode", "private", "samples/s", "× slower than non-private", "error"],
        [[r["mode"], r["private"], r["samples_per_s"] or "-", r["slowdown"] or "-", r["error"]] for r in rows],
    )
    job = job_overhead()
    print_table(
        "Ray Train job on an edge node (same private update)",
        ["job wall s", "inside the update s", "overhead s"],
        [[job["wall_s"], job["train_s"], job["overhead_s"]]],
    )
    write_result(
        "dp",
        {
            "block": BLOCK,
            "batch": BATCH,
            "steps": STEPS,
            "repeats": REPEATS,
            "threads": THREADS,
            "modes": rows,
            "job": job,
            "target_slowdown": 1.1,
        },
    )


if __name__ == "__main__":
    main()
