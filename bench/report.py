"""Rewrite docs/performance.md's tables from bench/results/*.json (``make bench`` runs it).

The docs quote only what the benchmarks measured: this writes the tables between the
``<!-- perf:start -->`` and ``<!-- perf:end -->`` markers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.common import RESULTS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def models_section(r: dict) -> str:
    load = {d["format"]: d for d in r["cached_load"]}
    dec = {(d["format"], d["batch"]): d["tok_per_s"] for d in r["decode"]}
    return f"""**Model** (`bench/models.py`, {r["machine"]["date"]}, SmolLM2-135M, {r["new_tokens"]} new tokens, greedy)

| measurement | fp32 | int8 (edge) | bf16 |
|---|---|---|---|
| cached load, fresh process (imports included), s | {load["fp32"]["cold_process_s"]:.1f} | {load["int8"]["cold_process_s"]:.1f} | |
| cached load, in process (weights only), s | {load["fp32"]["in_process_s"]:.2f} | {load["int8"]["in_process_s"]:.2f} | |
| decode, batch 1, tok/s | {dec["fp32", 1]:.0f} | {dec["int8", 1]:.0f} | {dec["bf16", 1]:.0f} |
| decode, batch 8, tok/s | {dec["fp32", 8]:.0f} | {dec["int8", 8]:.0f} | {dec["bf16", 8]:.0f} |

**Cold start:** an EdgeNode actor goes from spawn to serving SmolLM2 int8 in
**{r["edge_node_cold_start_s"]:.1f} s** (worker start, imports, cached load, quantisation). The first-ever
fetch and GGUF conversion adds ~25 s once per machine.

![decode speed](../bench/results/{r["plot"]})
"""


def overhead_section(r: dict) -> str:
    path, e2e = r["path_overhead_tiny"], r["latency"]
    rows = "\n".join(
        f"| {t['format']} | {t['batch']} | {t['in_process_tok_s']:.0f} | {t['served_tok_s']:.0f} | "
        f"{t['served_fraction']:.0%} | {t['served_batches']:.1f} |"
        for t in r["throughput"]
    )
    return f"""**Serving path** (`bench/overhead.py`, {r["machine"]["date"]}; one edge node, {r["threads"]} torch thread;
in-process = the same `GenerationEngine` called directly)

| what the path adds (SDK → gRPC proxy → Gateway → EdgeNode), ms | p50 | p99 | target |
|---|---|---|---|
| one-token requests on the tiny model (pure path cost) | {path["p50"]["added_ms"]:.1f} | {path["p99"]["added_ms"]:.1f} | ≤ 5 at p50 |
| SmolLM2 int8, 16 new tokens, end to end | {e2e["p50"]["added_ms"]:.1f} | {e2e["p99"]["added_ms"]:.1f} | |

| format | batch | in-process tok/s | served tok/s | served / in-process (target ≥ 90%) | served batches |
|---|---|---|---|---|---|
{rows}

![served vs in-process throughput](../bench/results/{r["plot"]})
"""


def _met(value: float | None, target: float, fmt: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:{fmt}} ({'met' if value >= target else 'not met'}; target ≥ {target:{fmt}})"


def routing_section(r: dict) -> str:
    rows = r["rows"]
    policies = ["oracle", "sla", "p2c", "round_robin", "edge_only", "cloud_only"]
    at = {(x["policy"], x["arrivals"], x["load"]): x for x in rows}
    loads = sorted({x["load"] for x in rows})
    tables = []
    for arrivals in ("poisson", "bursty"):
        lines = [
            f"| {arrivals}, load | feasible | " + " | ".join(policies) + " | sla cloud share | sla rejected |",
            "|---" * (len(policies) + 4) + "|",
        ]
        for load in loads:
            o, sla = at.get(("oracle", arrivals, load)), at.get(("sla", arrivals, load))
            if not o:
                continue
            cells = [
                f"{at[(p, arrivals, load)]['attainment']:.0%}" if (p, arrivals, load) in at else "" for p in policies
            ]
            tail = f" | {sla['cloud_share']:.0%} | {sla['rejected']} |" if sla else " | | |"
            lines.append(f"| {load:.1f}× | {o['feasible'] / o['requests']:.0%} | " + " | ".join(cells) + tail)
        tables.append("\n".join(lines))
    sla_rows = [x for x in rows if x["policy"] == "sla"]
    refused, missed = sum(x["rejected"] for x in sla_rows), sum(x["missed"] + x["late"] for x in sla_rows)
    h = r["headline"]
    ratios = ", ".join(f"{a} {v:.2f}×" for a, v in h["sla_over_p2c_goodput_1.2"].items()) or "not measured"
    return f"""**Routing** (`bench/routing.py`, {r["machine"]["date"]}; 6 synthetic edge nodes of three speeds + a
GPU-class cloud 120 ms away, through the real SDK → gRPC proxy → Gateway path; {r["seconds_per_trace"]:.0f} s open-loop
trace per cell, the same trace for every policy; load in units of the edge nodes' aggregate capacity,
{r["edge_capacity_rps"]:.1f} requests/s). Cells: share of all requests that met their SLA.

{tables[0]}

{tables[1]}

- `sla` at 1.0× bursty: {_met(h["sla_attainment_of_feasible_bursty_1.0"], 0.99, ".1%")} of the feasible requests;
  {_met(h["sla_vs_oracle_bursty_1.0"], 0.98, ".1%")} of what the oracle met.
- `sla` goodput over `p2c` at 1.2×: {ratios} (target ≥ 1.5×).
- Over all cells, of the requests `sla` did not serve in time {refused} were strict ones it refused
  up front (predicted late) and {missed} ran late: its shortfall against the oracle is mostly a
  margin too wide after long requests ran late, not lateness.

![SLO attainment against load](../bench/results/{r["plot"]})
"""


def dp_section(r: dict) -> str:
    rows = "\n".join(
        f"| {m['mode'] if m['private'] else 'no DP'} | "
        + (f"{m['samples_per_s']:.1f} | {m['slowdown']:.2f}× |" if m["samples_per_s"] else f"fails | {m['error']} |")
        for m in r["modes"]
    )
    job = r["job"]
    return f"""**Private training** (`bench/dp.py`, {r["machine"]["date"]}; SmolLM2 + LoRA, block {r["block"]}, batch {r["batch"]},
{r["threads"]} threads; target: DP at most {r["target_slowdown"]}× slower than no DP)

| per-sample gradients | samples/s | DP overhead (× slower than no DP) |
|---|---|---|
{rows}

A Ray Train job running the same private update ({job["steps"]} steps) on an edge node takes
**{job["wall_s"]:.1f} s** wall, of which {job["train_s"]:.1f} s is the update itself: {job["overhead_s"]:.1f} s is the
job (scheduling, worker start, imports, model load).
"""


def federation_section(r: dict) -> str:
    rows = "\n".join(
        f"| {x['model']} | {x['clients']} | {x['round_s']:.1f} | {x['slowest_client_s']:.1f} | {x['aggregate_s']:.2f} | "
        f"**{x['ratio']:.2f}×** | {x['client_setup_s']:.2f} | {x['train_wait_s']:.2f} | {x['keys_s']:.2f} | "
        f"{x['reveal_s']:.2f} | {x['sample_s']:.2f} | "
        f"{x['other_s']:.2f} | {x['evaluate_s']:.1f} | {x['warmup_round_s']:.0f} |"
        for x in r["rows"]
    )
    models = ", ".join(
        f"{m}: {v['steps']} steps of batch {v['batch']} × {v['block']} tokens" for m, v in r["models"].items()
    )
    return f"""**Federated rounds** (`bench/federation.py`, {r["machine"]["date"]}; secure aggregation + DP-SGD, one edge raylet
per client, all on 2 cores; {models}; median of {r["rounds"]} rounds after a warm-up round; target ≤ {r["target_ratio"]}×)

| model | clients | round s | slowest client s | aggregate s | round / (slowest + aggregate) | client setup + masking s | queues s | keys s | reveal s | sample s | other s | eval s (apart) | warm-up round s |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

The warm-up round pays for the clients' Ray Train sessions to start, once per run; every later
round reuses them.

![where a round's time goes](../bench/results/{r["plot"]})
"""


def learning_section(r: dict) -> str:
    rows = "\n".join(
        f"| {x['mode']} | {x['round']} | {x['task_score']:.3f} | {x['answer_match']:.0%} | {x['divergence']:.4f} | "
        f"{x['facts_kept']}/{x['facts_total']} |"
        for x in r["rows"]
    )
    st = r["settings"]
    shares = ", ".join(
        f"{mode}-level DP **{share:.0%}**" if share is not None else f"{mode}-level DP: -"
        for mode, share in r["kept_share"].items()
    )
    return f"""**Learning loop** (`bench/learning.py`, {r["machine"]["date"]}; SmolLM2, 3 sites' documents as Q&A, general
rehearsal and their users' corrections; {r["rounds"]} FedAvg rounds of {st["local_steps"]} local steps of batch
{st["batch_size"]} × {st["block_size"]} tokens; sample-level DP ε={st["target_epsilon_per_round"]:g} per round,
δ={st["delta"]:g}; user-level DP clip {st["user_dp"]["clip_norm"]}, σ={st["user_dp"]["noise_multiplier"]})

| DP | round | task score (higher is better) | answers right | divergence from base | facts kept |
|---|---|---|---|---|---|
{rows}

Share of the non-private task-score gain kept after round {r["rounds"]}: {shares} (DP-LoRA on GPT-2
kept ~90% of the non-private BLEU at ε≈6.8, Yu et al. 2022).

![task score, answers right and divergence against rounds](../bench/results/{r["plot"]})
"""


def main() -> None:
    parts = [
        s
        for s in (
            _load("models") and models_section(_load("models")),
            _load("overhead") and overhead_section(_load("overhead")),
            _load("routing") and routing_section(_load("routing")),
            _load("dp") and dp_section(_load("dp")),
            _load("federation") and federation_section(_load("federation")),
            _load("learning") and learning_section(_load("learning")),
        )
        if s
    ]
    text = PAGE.read_text()
    block = "<!-- perf:start -->\n" + "\n".join(parts) + "<!-- perf:end -->"
    text, n = re.subn(r"<!-- perf:start -->.*?<!-- perf:end -->", lambda _m: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{PAGE} needs exactly one <!-- perf:start --> ... <!-- perf:end --> block")
    PAGE.write_text(text)
    print(f"{PAGE} performance tables rewritten from {RESULTS}")


if __name__ == "__main__":
    main()
