"""Rewrite README.md's performance section from bench/results/*.json (``make bench`` runs it).

The README quotes only what the benchmarks measured: this writes the tables between the
``<!-- perf:start -->`` and ``<!-- perf:end -->`` markers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"


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

![decode speed](bench/results/{r["plot"]})
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

![served vs in-process throughput](bench/results/{r["plot"]})
"""


def main() -> None:
    parts = [s for s in (_load("models") and models_section(_load("models")),
                         _load("overhead") and overhead_section(_load("overhead"))) if s]  # fmt: skip
    text = README.read_text()
    block = "<!-- perf:start -->\n" + "\n".join(parts) + "<!-- perf:end -->"
    text, n = re.subn(r"<!-- perf:start -->.*?<!-- perf:end -->", lambda _m: block, text, flags=re.S)
    if n != 1:
        raise SystemExit("README.md needs exactly one <!-- perf:start --> ... <!-- perf:end --> block")
    README.write_text(text)
    print(f"README.md performance section rewritten from {RESULTS}")


if __name__ == "__main__":
    main()
