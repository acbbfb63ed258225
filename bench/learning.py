"""Does the learning loop make the model better at what users ask, and how much of that does DP keep?

Three sites (the demo's: ``eval/sites.py``), each training on its documents as questions and
answers, the general rehearsal examples, and its users' corrections to the questions they asked
(the demo's simulated users rate every base answer bad and send the reference).
Three FedAvg rounds of the default local update
(``federation.local_steps`` DP-SGD steps of ``batch_size`` × ``block_size``), in one process with
the platform's own functions (``train/dp.py``, ``federation/payload.py`` and ``strategies.py``, ``eval/scores.py``):

- ``none``: no DP (the ceiling);
- ``sample``: DP-SGD per client at the default ε per round (``privacy.target_epsilon``);
- ``user``: user-level DP-FedAvg at the default ``federation.user_dp`` (clip C, noise σ·C on the sum), no DP-SGD.

After every round: the task score on the sites' held-out questions, the divergence from the base
on general chat and the facts kept. Reported: the share of the non-private task-score gain each
DP mode keeps (DP-LoRA on GPT-2 kept ~90% of the non-private BLEU at ε≈6.8: Yu et al., 2022).

``python -m bench learning [none sample user]`` (modes default to all three).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.common import RESULTS, print_table, write_result

ROUNDS = 3
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
MODES = ("none", "sample", "user")


def _sites(tok: Any, block: int) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    from edgefleet.eval.sites import GENERAL_EXAMPLES, document_examples, site_domains
    from edgefleet.platform.chat import ChatExample, render_chat
    from edgefleet.train.data import demo_topics

    texts = demo_topics()
    domains = site_domains(["edge-1", "edge-2", "edge-3"], seed=0)
    data = {}
    for node, d in domains.items():
        corrections = [ChatExample(q.question, q.reference) for q in d.asked]
        documents = document_examples([texts[t] for t in d.topics])
        data[node] = render_chat(documents + list(GENERAL_EXAMPLES) + corrections, tok, block)
    held = {node: [ChatExample(q.question, q.reference) for q in d.held_out] for node, d in domains.items()}
    return data, held


def run_mode(mode: str, base: Any, tok: Any, cfg: Any) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from edgefleet.config import UserDPConfig
    from edgefleet.eval.scores import QualityJudge
    from edgefleet.federation import payload
    from edgefleet.federation.run_setup import local_hyper
    from edgefleet.federation.strategies import DPFedAvg, FedAvg, flatten, unflatten
    from edgefleet.train.dp import adapter_state, load_adapter, local_update, lora_model, trainable_adapter_names

    fed = cfg.federation
    hp = local_hyper(cfg)
    data, held = _sites(tok, fed.block_size)
    judge = QualityJudge(base, tok, held, fed.block_size)
    user_dp = fed.user_dp or UserDPConfig()  # the defaults `federation.user_dp: {}` would give
    with torch.random.fork_rng():
        torch.manual_seed(hp.seed)
        adapter = adapter_state(lora_model(base, hp))

    def score(r: int, seconds: float) -> dict[str, Any]:
        with torch.random.fork_rng():
            torch.manual_seed(hp.seed)
            model = lora_model(base, hp)
        load_adapter(model, adapter)
        q = judge.score(model)
        row = {"mode": mode, "round": r, "task_score": q.task_score, "answer_match": q.answer_match}
        row |= {"divergence": q.divergence}
        return row | {"facts_kept": q.facts_kept, "facts_total": q.facts_total, "train_s": seconds}

    strategy = FedAvg()  # weighted by samples
    if mode == "user":
        strategy = DPFedAvg(strategy, clip=user_dp.clip_norm, noise_multiplier=user_dp.noise_multiplier)
    rows = [score(0, 0.0)]
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    for r in range(1, ROUNDS + 1):
        started = time.perf_counter()
        privacy = cfg.privacy if mode == "sample" else None
        updates = [local_update(base, adapter, samples, privacy, hp) for samples in data.values()]
        names = trainable_adapter_names(hp, updates[0].delta)
        # what the participants send and the coordinator aggregates (federation/payload.py, strategies.py)
        sent = [
            payload.encode_clipped(flatten(u.delta, names), clip=user_dp.clip_norm)
            if mode == "user"
            else payload.encode_weighted(flatten(u.delta, names), num_samples=u.num_samples, loss=u.loss)
            for u in updates
        ]
        mean = strategy.aggregate(payload.decode(sum(sent)), None, sampled=len(sent), rng=rng)
        step = unflatten(mean, updates[0].delta, names)
        adapter = {k: v + step[k] if k in step else v for k, v in adapter.items()}
        rows.append(score(r, time.perf_counter() - started))
        last = rows[-1]
        print(
            f"{mode} round {r}: task score {last['task_score']:.4f}, answers right {last['answer_match']:.0%}, "
            f"divergence {last['divergence']:.4f}",
            flush=True,
        )
    return rows


def kept_share(rows: list[dict[str, Any]], mode: str) -> float | None:
    """The share of the non-private task-score gain (base → last round) that ``mode`` keeps."""
    last = {m: max((r for r in rows if r["mode"] == m), key=lambda r: r["round"], default=None) for m in MODES}
    base = next((r["task_score"] for r in rows if r["round"] == 0), None)
    if base is None or last["none"] is None or last[mode] is None:
        return None
    gain = last["none"]["task_score"] - base
    return (last[mode]["task_score"] - base) / gain if gain > 0 else None


def plot(rows: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    for mode in MODES:
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["round"])
        if mine:
            rounds = [r["round"] for r in mine]
            left.plot(rounds, [r["task_score"] for r in mine], marker="o", label=mode)
            middle.plot(rounds, [100 * r.get("answer_match", float("nan")) for r in mine], marker="o", label=mode)
            right.plot(rounds, [r["divergence"] for r in mine], marker="o", label=mode)
    left.set(xlabel="round", ylabel="task score (log-lik / answer token, higher is better)", title="what users ask")
    middle.set(xlabel="round", ylabel="% of held-out questions", title="greedy answers a user rates good")
    right.set(xlabel="round", ylabel="KL from base per token", title="regression guard: general chat")
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend(title="DP")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(modes: tuple[str, ...] = MODES) -> None:
    import json

    import torch

    from edgefleet.config import EdgefleetConfig, ModelSpec, UserDPConfig
    from edgefleet.platform.models import load_trainable

    torch.set_num_threads(THREADS)
    cfg = EdgefleetConfig()
    base, tok = load_trainable(ModelSpec(source="smollm2"))
    path = RESULTS / "learning.json"
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = [r for r in earlier if r["mode"] not in modes]  # modes not rerun keep their last result
    for mode in modes:
        rows += run_mode(mode, base, tok, cfg)
    rows.sort(key=lambda r: (MODES.index(r["mode"]), r["round"]))
    shares = {m: kept_share(rows, m) for m in ("sample", "user")}
    print_table(
        f"learning loop on SmolLM2: {ROUNDS} FedAvg rounds of 3 sites (ε={cfg.privacy.target_epsilon:g}/round)",
        ["DP", "round", "task score", "answers right", "divergence", "facts kept", "train s"],
        [
            [
                r["mode"],
                r["round"],
                r["task_score"],
                f"{r['answer_match']:.0%}",
                r["divergence"],
                f"{r['facts_kept']}/{r['facts_total']}",
                r["train_s"],
            ]
            for r in rows
        ],
    )
    for mode, share in shares.items():
        print(f"{mode}-level DP keeps {share:.0%} of the non-private gain" if share is not None else f"{mode}: -")
    plot(rows, RESULTS / "learning.png")
    fed = cfg.federation
    write_result(
        "learning",
        {
            "rounds": ROUNDS,
            "settings": {
                "local_steps": fed.local_steps,
                "batch_size": fed.batch_size,
                "block_size": fed.block_size,
                "lr": fed.lr,
                "target_epsilon_per_round": cfg.privacy.target_epsilon,
                "delta": cfg.privacy.delta,
                "user_dp": (fed.user_dp or UserDPConfig()).model_dump(),
            },
            "kept_share": shares,
            "rows": rows,
            "plot": "learning.png",
        },
    )


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or MODES)
