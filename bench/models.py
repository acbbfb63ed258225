"""SmolLM2 on this CPU: cold start from the cache, and greedy decode speed by format and batch.

What is measured:
- *cached load*: ``load_model`` in a fresh Python process (imports included, as an actor pays),
  and again in-process (weights only), for fp32 and int8. Median of 3.
- *EdgeNode cold start*: from ``spawn_edge_node`` on the embedded fleet until the actor answers
  ``info`` (worker process start + imports + load + quantisation).
- *decode*: new tokens per second, greedy, 64 new tokens, chat-template prompts, batch 1 and 8,
  for fp32, int8 (dynamic, torch.ao) and bf16. The reference numbers from the probe were
  fp32 23/101, int8 72/402, bf16 35/232 tok/s (batch 1/8).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench.common import RESULTS, print_table, write_result

NEW_TOKENS = 64
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What does a CPU do?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
    "What is 12 times 12?",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
]
COLD_LOAD = (
    "import time; t=time.perf_counter();"
    "from edgefleet.config import ModelSpec; from edgefleet.platform.models import load_model;"
    "load_model(ModelSpec(source='smollm2', quantization='{q}', threads=2)); print(time.perf_counter()-t)"
)


def cold_process_load(quantization: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", COLD_LOAD.format(q=quantization)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def decode_rate(loaded, batch: int) -> float:
    import torch

    tok = loaded.tokenizer
    chats = [[{"role": "user", "content": q}] for q in (QUESTIONS * 2)[:batch]]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True)  # left padding, set by load_model
    with torch.inference_mode():
        loaded.model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
        started = time.perf_counter()
        out = loaded.model.generate(
            **enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id
        )
        seconds = time.perf_counter() - started
    new = (out.shape[1] - enc["input_ids"].shape[1]) * batch  # (B, T_prompt + T_new) → tokens made
    return new / seconds


def edge_node_cold_start() -> float:
    import ray

    from edgefleet.config import EdgefleetConfig, parse_config
    from edgefleet.platform.cluster import start_local_fleet
    from edgefleet.platform.edge_node import spawn_edge_node

    cfg = parse_config({"ray": {"dashboard": False}, "ports": EdgefleetConfig().ports.model_dump()})
    with start_local_fleet(cfg):
        started = time.perf_counter()
        actor = spawn_edge_node(cfg.fleet.edge_nodes[0], cache_dir=cfg.cache_dir)
        ray.get(actor.info.remote(), timeout=300)
        return time.perf_counter() - started


def plot(decode: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = sorted({d["format"] for d in decode}, key=["fp32", "int8", "bf16"].index)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for i, batch in enumerate((1, 8)):
        rates = [next(d["tok_per_s"] for d in decode if d["format"] == f and d["batch"] == batch) for f in formats]
        bars = ax.bar([x + (i - 0.5) * width for x in range(len(formats))], rates, width, label=f"batch {batch}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(formats)), formats)
    ax.set_ylabel("new tokens / s (greedy)")
    ax.set_title("SmolLM2-135M decode on 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import torch

    from edgefleet.config import ModelSpec
    from edgefleet.platform.models import load_model

    torch.set_num_threads(2)
    loads = []
    for q in ("none", "int8"):
        cold = statistics.median(cold_process_load(q) for _ in range(3))
        warm = statistics.median(
            load_model(ModelSpec(source="smollm2", quantization=q, threads=2)).load_seconds for _ in range(3)
        )
        loads.append({"format": "fp32" if q == "none" else q, "cold_process_s": cold, "in_process_s": warm})
    actor_s = edge_node_cold_start()
    decode = []
    for q, label in (("none", "fp32"), ("int8", "int8"), ("bf16", "bf16")):
        loaded = load_model(ModelSpec(source="smollm2", quantization=q, threads=2))
        for batch in (1, 8):
            decode.append({"format": label, "batch": batch, "tok_per_s": decode_rate(loaded, batch)})

    print_table(
        "SmolLM2 cached load (median of 3), s",
        ["format", "fresh process", "in process"],
        [[d["format"], d["cold_process_s"], d["in_process_s"]] for d in loads],
    )
    print(f"EdgeNode actor cold start on edge-1 (spawn → ready, int8): {actor_s:.2f} s")
    print_table(
        f"greedy decode, {NEW_TOKENS} new tokens, 2 threads",
        ["format", "batch", "tok/s"],
        [[d["format"], d["batch"], d["tok_per_s"]] for d in decode],
    )
    png = RESULTS / "models_decode.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(decode, png)
    path = write_result(
        "models",
        {
            "new_tokens": NEW_TOKENS,
            "cached_load": loads,
            "edge_node_cold_start_s": actor_s,
            "decode": decode,
            "plot": png.name,
        },
    )
    print(f"wrote {path} and {png}")
