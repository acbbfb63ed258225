"""Privacy audit: does the claimed ε hold against a real membership attack, and does it visibly break without DP?

Secret-Sharer canaries (Carlini et al., USENIX Security 2019) meet the auditing method of Jagielski
et al. 2020 and Nasr et al. 2021 (the statistics are in :mod:`edgefleet.audit.stats`):

1. Per repeat, draw 2k random canaries ``"my PIN is 4821-0937-…"`` from a seeded RNG, all from one
   distribution. k are inserted into one client's data (its ordinary text blocks stay there too),
   k are held out and never trained on. Each canary is exactly one training block, seen once per epoch.
2. Train with the platform's own code: :func:`edgefleet.train.dp.local_update` (LoRA on the frozen
   tiny Llama, Opacus DP-SGD) and, for user-level DP, the participant's payload
   (:mod:`edgefleet.federation.payload`) and the coordinator's DP-FedAvg strategy
   (:class:`edgefleet.federation.strategies.DPFedAvg`), the same code a round runs. In-process, no Ray.
3. Score every canary: its loss on the secret digits after training minus before (lower: more
   likely a member). Pool the repeats; report the ROC AUC and the ε the scores prove.

Settings:

- ``no_dp``: the control. Many epochs on few blocks, so the model memorises its canaries.
- ``record_dp``: DP-SGD with the noise solved for ``epsilon``; the claim is the accountant's
  ``LocalUpdate.epsilon_total``. The clip C is far below the canaries' per-sample gradient norms
  (~1–3 here), so a clip that is not applied shows.
- ``user_dp``: several clients, the canary client among them, train without DP-SGD; each update is
  clipped to C as a whole, the sum gets N(0, (σC)²) (DP-FedAvg). Inserting a canary changes one
  client's data, not whether the client takes part: a *replacement* of its clipped update, with
  sensitivity 2C, not the add/remove C of the coordinator's user-level ε. So the claim checked is
  the project's accountant at σ/2 (q = 1 as the coordinator accounts it), and σ is solved from that.

Fault injection (for the audit's own tests; never set in a real audit): ``noise_scale`` scales the
noise actually added and ``clip_override`` is the norm actually clipped to, while the noise
calibration and the accountant keep the configured σ and C, so the claimed ε is unchanged. For
DP-SGD they act inside Opacus' ``DPOptimizer`` (its own clip and noise code runs, with the changed
value, for the length of one update); for DP-FedAvg on the clip the payload is encoded with and
the σ the strategy draws its noise with.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.audit.stats import SettingResult, Verdict, epsilon_lower_bound, roc_auc, verdict
from edgefleet.config import PrivacyConfig
from edgefleet.train.accounting import noise_for
from edgefleet.train.dp import (
    LocalHyper,
    adapter_state,
    load_adapter,
    local_update,
    lora_model,
    planned_steps,
    trainable_adapter_names,
)

SETTINGS = ("no_dp", "record_dp", "user_dp")
PREFIX = "my PIN is "
SECRET_GROUPS = 4  # of 4 digits: 16 random digits, log2(10^16) ≈ 53 bits per canary
BLOCK = len(PREFIX) + 5 * SECRET_GROUPS  # tokens: prefix, 4 digits and a dash per group less one, end-of-sequence

Progress = Callable[[int, str], None]  # (optimizer steps just done, what is training)


@dataclass(frozen=True)
class AuditConfig:
    """Sizes and privacy targets of one audit. The defaults run in a few minutes on 2 CPU cores."""

    epsilon: float = 1.0  # target ε of each DP setting: small enough that a broken run must exceed it
    delta: float = 1e-5
    canaries: int = 32  # inserted per repeat; as many are held out
    repeats: int = 4  # independent trainings, fresh canaries each; their scores are pooled
    seed: int = 0
    filler_blocks: int = 32  # the canary client's ordinary text blocks (pydoc topics)
    lr: float = 2e-2
    epochs: float = 60.0  # passes over the client's blocks: enough for the control to memorise
    batch_size: int = 32
    max_grad_norm: float = 1e-3  # DP-SGD's C: ≪ the canaries' per-sample gradient norms (~1–3)
    clients: int = 4  # user_dp: the canary client and clients − 1 others
    rounds: int = 2  # user_dp: DP-FedAvg rounds, every client in each (q = 1)
    user_clip: float = 1e-3  # user_dp's C on a whole update: ≪ the canary client's update norm
    auc_margin: float = 0.2  # how far the control's AUC must clear the private runs'
    settings: tuple[str, ...] = SETTINGS
    threads: int = 1  # torch intra-op threads

    def __post_init__(self) -> None:
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
        if self.canaries < 1 or self.repeats < 1 or self.clients < 2 or self.rounds < 1:
            raise ValueError("canaries and repeats must be >= 1, clients >= 2, rounds >= 1")
        if self.epsilon <= 0 or not 0 < self.delta < 1:
            raise ValueError("epsilon must be > 0 and delta in (0, 1)")


@dataclass(frozen=True)
class AuditReport:
    config: AuditConfig
    results: tuple[SettingResult, ...]
    verdict: Verdict
    scores: dict[str, tuple[list[float], list[float]]]  # setting → (members, non-members), pooled
    details: dict[str, dict[str, Any]]  # setting → σ, C, per-repeat ε and train loss
    seconds: float
    faults: dict[str, Any] = field(default_factory=dict)  # the injected faults, empty in a real audit

    @property
    def passed(self) -> bool:
        return self.verdict.passed


def run_audit(
    cfg: AuditConfig = AuditConfig(),
    *,
    on_progress: Progress | None = None,
    noise_scale: float = 1.0,
    clip_override: float | None = None,
) -> AuditReport:
    """Train every setting ``cfg.repeats`` times on fresh canaries, attack, and judge the claims.

    Args:
        cfg: sizes and targets.
        on_progress: called after each local update with its optimizer steps (see :func:`planned_total`).
        noise_scale: fault injection: × the noise actually added (accounting unchanged). 1 in a real audit.
        clip_override: fault injection: the norm actually clipped to, ``math.inf`` for none (noise and
            accounting keep the configured C). None in a real audit.
    """
    import torch

    from edgefleet.platform.models import build_tiny

    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        base, tok = build_tiny(seed=0)
        fillers = _filler(tok, cfg)
        pooled: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in cfg.settings}
        details: dict[str, dict[str, Any]] = {s: {"epsilon": [], "train_loss": []} for s in cfg.settings}
        for repeat in range(cfg.repeats):
            # the first half is inserted, the second held out: the canaries are i.i.d., so the split is random
            blocks, span = canary_blocks(tok, 2 * cfg.canaries, seed=f"{cfg.seed}/{repeat}")
            hp = _hyper(cfg, seed=cfg.seed + repeat)
            reference = canary_losses(base, None, blocks, span, hp)  # the untrained model: LoRA's B = 0
            train = torch.cat([fillers[0], blocks[: cfg.canaries]])
            for setting in cfg.settings:
                if setting == "user_dp":
                    adapter, eps, loss, info = _user_dp(
                        base, [train, *fillers[1:]], hp, cfg, on_progress, noise_scale, clip_override
                    )
                else:
                    adapter, eps, loss, info = _one_client(
                        base, train, setting, hp, cfg, on_progress, noise_scale, clip_override
                    )
                score = [a - b for a, b in zip(canary_losses(base, adapter, blocks, span, hp), reference, strict=True)]
                pooled[setting][0].extend(score[: cfg.canaries])
                pooled[setting][1].extend(score[cfg.canaries :])
                details[setting]["epsilon"].append(eps)
                details[setting]["train_loss"].append(loss)
                details[setting].update(info)
    finally:
        torch.set_num_threads(threads)
    results = tuple(_result(s, pooled[s], max(details[s]["epsilon"]), cfg) for s in cfg.settings)
    faults: dict[str, Any] = {"noise_scale": noise_scale} if noise_scale != 1.0 else {}
    if clip_override is not None:
        faults["clip_override"] = clip_override
    return AuditReport(
        cfg,
        results,
        verdict(results, auc_margin=cfg.auc_margin),
        pooled,
        details,
        time.perf_counter() - started,
        faults,
    )


def planned_total(cfg: AuditConfig) -> int:
    """The optimizer steps the audit will take (the progress bar's total)."""
    hp = _hyper(cfg, cfg.seed)
    one = planned_steps(cfg.filler_blocks + cfg.canaries, hp)[1]
    per_setting = {"no_dp": one, "record_dp": one, "user_dp": one * cfg.clients * cfg.rounds}
    return cfg.repeats * sum(per_setting[s] for s in cfg.settings)


# ---------------------------------------------------------------- canaries and their scores


def canary_text(rng: random.Random) -> str:
    return PREFIX + "-".join("".join(rng.choice("0123456789") for _ in range(4)) for _ in range(SECRET_GROUPS))


def canary_blocks(tokenizer: Any, count: int, *, seed: int | str) -> tuple[Any, tuple[int, int]]:
    """``count`` distinct canaries as one block each, ``(count, T)``, and the secret's token span [start, end).

    Each canary and its end-of-sequence token fill one block exactly (the byte-level tokenizer: one
    token per ASCII character), so a canary is one sample to DP-SGD: the unit its ε is about.
    """
    from edgefleet.train.data import chunk_for_causal_lm

    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < count:
        text = canary_text(rng)
        if text not in texts:  # 10^16 secrets: a repeat is all but impossible, and would be a group of two
            texts.append(text)
    blocks = chunk_for_causal_lm(texts, tokenizer, BLOCK)
    if blocks.shape != (count, BLOCK):
        raise ValueError("canaries do not tokenise to one block each (expected one token per character)")
    start = len(tokenizer(PREFIX, add_special_tokens=False)["input_ids"])
    return blocks, (start, BLOCK - 1)  # the secret runs to just before the end-of-sequence token


def canary_losses(
    base: Any, adapter: dict[str, Any] | None, blocks: Any, span: tuple[int, int], hp: LocalHyper
) -> list[float]:
    """Per canary, the mean next-token loss (nats) on its secret tokens ``span``, under base + adapter."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(hp.seed)
        model = lora_model(base, hp)
    load_adapter(model, adapter)
    model.eval()
    start, end = span
    with torch.no_grad():
        logits = model(input_ids=blocks).logits  # (N, T, vocab)
        # the token at position t is predicted from position t − 1
        nll = torch.nn.functional.cross_entropy(
            logits[:, start - 1 : end - 1].transpose(1, 2), blocks[:, start:end], reduction="none"
        )  # (N, secret)
    return nll.mean(dim=1).tolist()


# ---------------------------------------------------------------- the settings


def _hyper(cfg: AuditConfig, seed: int) -> LocalHyper:
    batch = min(cfg.batch_size, cfg.filler_blocks + cfg.canaries)
    return LocalHyper(lr=cfg.lr, epochs=cfg.epochs, batch_size=batch, physical_batch=batch, seed=seed)


def _record_privacy(cfg: AuditConfig) -> PrivacyConfig:
    return PrivacyConfig(target_epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm)


def _filler(tokenizer: Any, cfg: AuditConfig) -> list[Any]:
    """Each client's ordinary text: its own pydoc topics (as the demo splits them), as many blocks as
    the canary client holds in all, so every client's update is comparable. Index 0: the canary client."""
    from edgefleet.train.data import chunk_for_causal_lm, demo_topics, split_topics

    texts = demo_topics()
    ids = [f"client-{i}" for i in range(cfg.clients)]
    split = split_topics(ids, topics=list(texts), seed=cfg.seed)
    block = BLOCK  # the canaries' block size, for every sample
    sizes = [cfg.filler_blocks] + [cfg.filler_blocks + cfg.canaries] * (cfg.clients - 1)
    out = []
    for node, size in zip(ids, sizes, strict=True):
        blocks = chunk_for_causal_lm([texts[t] for t in split.shards[node]], tokenizer, block)
        if len(blocks) < size:
            raise ValueError(f"{node}'s topics make {len(blocks)} blocks, {size} needed")
        out.append(blocks[:size])
    return out


def _one_client(
    base: Any,
    train: Any,
    setting: str,
    hp: LocalHyper,
    cfg: AuditConfig,
    on_progress: Progress | None,
    noise_scale: float,
    clip_override: float | None,
) -> tuple[dict[str, Any], float, float, dict[str, Any]]:
    """The canary client's local update alone: without DP (the control) or with DP-SGD. Returns
    (adapter, claimed ε, mean train loss, σ and C)."""
    privacy = _record_privacy(cfg) if setting == "record_dp" else None
    with _opacus_fault(noise_scale, clip_override) if privacy else contextlib.nullcontext():
        update = local_update(base, None, train, privacy, hp)
    if on_progress:
        on_progress(update.steps, setting)
    claimed = update.epsilon_total if privacy else math.inf  # the accountant's, over the whole history
    return (
        update.adapter,
        claimed,
        update.loss,
        {
            "noise_multiplier": update.noise_multiplier,
            "sample_rate": update.sample_rate,
            "steps": update.steps,
            "max_grad_norm": privacy.max_grad_norm if privacy else None,
        },
    )


def _user_dp(
    base: Any,
    datasets: Sequence[Any],
    hp: LocalHyper,
    cfg: AuditConfig,
    on_progress: Progress | None,
    noise_scale: float,
    clip_override: float | None,
) -> tuple[dict[str, Any], float, float, dict[str, Any]]:
    """DP-FedAvg rounds over ``datasets`` (the canary client first): the coordinator's user-level
    arithmetic, in-process. Returns (final adapter, claimed ε, mean train loss, σ and C)."""
    import numpy as np
    import torch

    # the code the federation runs: the participant's payload, the coordinator's strategy and accounting
    from edgefleet.federation import payload
    from edgefleet.federation.strategies import DPFedAvg, FedAvg, flatten, unflatten
    from edgefleet.train.accounting import Release, composed_epsilon

    # σ for a replacement (sensitivity 2C) at the target ε is twice the add/remove one (sensitivity C)
    sigma = 2 * noise_for(PrivacyConfig(target_epsilon=cfg.epsilon, delta=cfg.delta), 1.0, cfg.rounds)
    with torch.random.fork_rng():  # every client's LoRA init, from the shared seed (A stays frozen)
        torch.manual_seed(hp.seed)
        adapter = adapter_state(lora_model(base, hp))
    strategy = DPFedAvg(FedAvg(), clip=cfg.user_clip, noise_multiplier=sigma * noise_scale)
    clip = cfg.user_clip if clip_override is None else clip_override
    losses = []
    for _ in range(cfg.rounds):
        total = names = None
        for blocks in datasets:
            update = local_update(base, adapter, blocks, None, hp)
            if on_progress:
                on_progress(update.steps, "user_dp")
            losses.append(update.loss)
            names = trainable_adapter_names(hp, update.delta)  # B only under FFA-LoRA, as a client sends
            sent = payload.encode_clipped(flatten(update.delta, names), clip=clip)
            total = sent if total is None else total + sent  # what secure aggregation would unmask
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # as the coordinator: unguessable
        mean = strategy.aggregate(payload.decode(total), None, sampled=len(datasets), rng=rng)
        delta = unflatten(mean, adapter, names)
        adapter = {k: v + delta[k].to(v.dtype) if k in delta else v for k, v in adapter.items()}
    claimed = composed_epsilon([Release(sigma / 2, 1.0, cfg.rounds)], cfg.delta)
    return (
        adapter,
        claimed,
        sum(losses) / len(losses),
        {"noise_multiplier": sigma, "clip": cfg.user_clip, "rounds": cfg.rounds, "clients": len(datasets)},
    )


@contextlib.contextmanager
def _opacus_fault(noise_scale: float, clip_override: float | None) -> Iterator[None]:
    """Within: Opacus' DP-SGD adds ``noise_scale`` × its noise and clips to ``clip_override``, while
    the optimizer's ``noise_multiplier`` and ``max_grad_norm`` (which the accountant hook and the
    noise's σ·C read) keep their values. A no-op at (1, None)."""
    if noise_scale == 1.0 and clip_override is None:
        yield
        return
    from unittest import mock

    from opacus.optimizers.optimizer import DPOptimizer

    add_noise, clip = DPOptimizer.add_noise, DPOptimizer.clip_and_accumulate

    def scaled_noise(self: Any) -> None:
        nominal = self.noise_multiplier
        self.noise_multiplier = nominal * noise_scale
        try:
            add_noise(self)
        finally:
            self.noise_multiplier = nominal

    def other_clip(self: Any) -> None:
        nominal = self.max_grad_norm
        self.max_grad_norm = clip_override if clip_override is not None else nominal
        try:
            clip(self)
        finally:
            self.max_grad_norm = nominal

    with (
        mock.patch.object(DPOptimizer, "add_noise", scaled_noise),
        mock.patch.object(DPOptimizer, "clip_and_accumulate", other_clip),
    ):
        yield


def _result(name: str, scores: tuple[list[float], list[float]], claimed: float, cfg: AuditConfig) -> SettingResult:
    members, non_members = scores
    return SettingResult(
        name=name,
        private=name != "no_dp",
        epsilon_claimed=claimed,
        delta=cfg.delta,
        auc=roc_auc(members, non_members),
        bound=epsilon_lower_bound(members, non_members, cfg.delta),
        members=len(members),
        non_members=len(non_members),
    )
