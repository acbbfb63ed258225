"""One differentially private local update: LoRA on a frozen base, DP-SGD through Opacus.

:func:`local_update` is a plain function of (base model, current adapter, client data, privacy
settings, hyper-parameters); Ray Train jobs and the federation call it, tests call it directly.

- LoRA adapters from peft are the only trainable parameters; the base stays frozen and shared.
- Opacus' ``PrivacyEngine`` gives Poisson sampling, per-sample clipping at ``max_grad_norm`` and
  Gaussian noise, either ``noise_multiplier`` as given or solved for ``target_epsilon`` over this
  update's steps; ``BatchMemoryManager`` keeps physical batches small. RDP or PRV accounting.
- Per-sample gradients come from ``hooks`` mode, without wrapping the model (Opacus' advice for
  Hugging Face models). ``ghost`` clipping needs a per-sample loss and failed on the token-level
  loss here; ``functorch`` is offered for the benchmark. With only LoRA trainable, hooks cost
  little (``bench/dp.py``).
- The accountant's state comes in and goes out with the update, so ε is never under-counted
  across rounds or restarts.
- Guard against silent corruption (Opacus issue #820: unusable models with some peft versions):
  the update is checked to be finite and to touch only adapter weights, or it raises.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.config import PrivacyConfig
from edgefleet.errors import EdgefleetError
from edgefleet.train.accounting import composed_epsilon, noise_for

GradSampleMode = Literal["hooks", "functorch"]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class CorruptUpdate(EdgefleetError, RuntimeError):
    """The update is not usable (non-finite weights, or weights outside the adapter changed)."""


@dataclass(frozen=True)
class LocalHyper:
    lr: float = 5e-3
    epochs: float = 1.0  # passes over the client's blocks, in expectation (Poisson sampling)
    batch_size: int = 32  # expected logical batch
    physical_batch: int = 16  # what goes through the model at once
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = LORA_TARGETS
    max_steps: int | None = None  # cap on optimizer steps (short demo updates)
    seed: int = 0
    grad_sample_mode: GradSampleMode = "hooks"
    # Off only to compare with non-private training batch for batch; the DP guarantee assumes it on.
    poisson_sampling: bool = True
    # FFA-LoRA (Sun et al., ICLR 2024): A stays at its seeded init on every client, only B trains.
    # Then ΔW = ΔB·A with one shared A, so averaging B across clients is exactly averaging ΔW, and
    # a client sends half the adapter. With A trainable, averaging A and B apart is not the average of BA.
    freeze_a: bool = True
    # FedProx (Li et al., MLSys 2020): μ pulls the adapter towards the round's global one. Applied as a
    # decoupled step after each optimizer step (the proximal gradient μ(w − w_global) is data-free,
    # so it costs no privacy and never goes through Opacus' per-sample clipping).
    prox_mu: float = 0.0


DEFAULT_HYPER = LocalHyper()


@dataclass
class LocalUpdate:
    """What a client sends back: never its data, only the adapter's change and its cost."""

    delta: dict[str, Any]  # adapter tensor name → (new - current), CPU fp32
    adapter: dict[str, Any]  # the adapter after the update (current + delta)
    num_samples: int  # blocks in the client's data
    loss: float  # mean training loss over the update
    last_loss: float  # over its last physical batch
    steps: int  # optimizer steps (logical batches)
    epsilon: float  # spent by this update alone, at ``delta_privacy``
    epsilon_total: float  # over this client's whole accountant history, this update included
    delta_privacy: float
    noise_multiplier: float
    accountant_state: dict[str, Any] = field(default_factory=dict)
    sample_rate: float = 0.0  # Poisson sampling rate q of this update's batches (for the ledger)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    private: bool = True


def lora_model(base: Any, hp: LocalHyper) -> Any:
    """A peft LoRA model over a copy of ``base`` (the caller's base is never modified)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        target_modules=list(hp.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if hp.freeze_a:
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return model


def trainable_adapter_names(hp: LocalHyper, adapter: dict[str, Any]) -> list[str]:
    """The adapter tensors an update can change (and a client needs to send): B only under FFA-LoRA."""
    return sorted(k for k in adapter if not (hp.freeze_a and "lora_A" in k))


def adapter_state(model: Any) -> dict[str, Any]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().float().cpu() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model: Any, state: dict[str, Any] | None) -> None:
    from peft import set_peft_model_state_dict

    if state:
        result = set_peft_model_state_dict(model, state)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ValueError(f"adapter keys do not fit this model: {unexpected[:3]}")


def _loader(blocks: Any, batch_size: int, seed: int) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(blocks), batch_size=batch_size, shuffle=True, generator=gen)


def planned_steps(num_blocks: int, hp: LocalHyper) -> tuple[float, int]:
    """(sample rate q, optimizer steps) an update on ``num_blocks`` samples will take: known before it
    runs, so the privacy ledger can refuse a client the update would take past its budget."""
    per_epoch = math.ceil(num_blocks / min(hp.batch_size, num_blocks))  # the DataLoader's length
    steps = max(1, math.ceil(hp.epochs * per_epoch))
    return 1 / per_epoch, min(steps, hp.max_steps) if hp.max_steps else steps


def local_update(
    base: Any,
    adapter: dict[str, Any] | None,
    blocks: Any,
    privacy: PrivacyConfig | None,
    hp: LocalHyper = DEFAULT_HYPER,
    accountant_state: dict[str, Any] | None = None,
    distributed: bool = False,
) -> LocalUpdate:
    """Train the adapter on ``blocks`` (LongTensor ``(N, T)``); ``privacy=None`` trains without DP.

    ``distributed``: this process is one rank of an initialised ``torch.distributed`` group (a Ray
    Train job with several workers on the node). Private: Opacus ``DPDDP`` all-reduces the noised
    gradients and its distributed Poisson sampler splits the data. Non-private: torch DDP.

    Raises:
        ValueError: no data, or an adapter that does not fit the model.
        CorruptUpdate: the trained adapter is non-finite, or a base weight moved.
    """
    import torch

    if len(blocks) == 0:
        raise ValueError("the client has no training blocks")
    if hp.grad_sample_mode not in ("hooks", "functorch"):
        raise ValueError(
            f"grad_sample_mode={hp.grad_sample_mode!r}: ghost clipping needs a per-sample loss "
            "criterion, this update uses the model's token-level loss; use hooks or functorch"
        )
    with torch.random.fork_rng():  # the fresh LoRA init: the same on every client with the same seed
        torch.manual_seed(hp.seed)
        model = lora_model(base, hp)
    load_adapter(model, adapter)
    before = adapter_state(model)
    frozen_probe = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    net = model  # what the optimizer and Opacus see; `model` stays the peft model for reading the adapter
    if distributed:
        if privacy is not None:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

            net = DPDDP(model)
        else:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if hp.prox_mu > 0 else None
    optimizer = torch.optim.AdamW(trainable, lr=hp.lr, weight_decay=0.0)
    batch = min(hp.batch_size, len(blocks))
    # The seed fixes the LoRA init (the same on every client) and non-private runs. A private run
    # draws its batches and its noise from OS entropy: an adversary who knows the seed must not be
    # able to replay the sampling or subtract the noise.
    secret = privacy is not None and hp.poisson_sampling
    loader = _loader(blocks, batch, int.from_bytes(os.urandom(8), "little") if secret else hp.seed)
    if secret:
        torch.seed()
    sample_rate, steps = planned_steps(len(blocks), hp)

    engine = hooks = None
    noise = 0.0
    if privacy is not None:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant=privacy.accountant)
        if accountant_state:
            engine.accountant.load_state_dict(accountant_state)
        noise = noise_for(privacy, sample_rate, steps)
        hooks, optimizer, loader = engine.make_private(
            module=net,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise,
            max_grad_norm=privacy.max_grad_norm,
            poisson_sampling=hp.poisson_sampling,
            grad_sample_mode=hp.grad_sample_mode,
            # Unwrapped hooks for Hugging Face models, as Opacus advises; DPDDP needs its wrapper.
            wrap_model=distributed,
        )

    losses: list[float] = []
    done = seen = 0
    started = time.perf_counter()
    try:
        while done < steps:
            done, seen = _epoch(
                hooks if distributed and hooks is not None else net,
                optimizer,
                loader,
                hp,
                privacy is not None,
                steps,
                done,
                seen,
                losses,
                _proximal(trainable, anchor, hp),
            )
    finally:
        if hooks is not None and hasattr(hooks, "cleanup"):
            hooks.cleanup()
    seconds = time.perf_counter() - started

    after = adapter_state(model)
    _check(before, after, frozen_probe, model)
    delta_eps = eps_total = 0.0
    state: dict[str, Any] = {}
    if engine is not None:
        state = dict(engine.accountant.state_dict())
        # this update alone, then the accountant's whole history (earlier rounds and restarts included)
        delta_eps = composed_epsilon([(noise, sample_rate, done)], privacy.delta, privacy.accountant)
        eps_total = composed_epsilon(engine.accountant.history, privacy.delta, privacy.accountant)
    return LocalUpdate(
        delta={k: after[k] - before[k] for k in after},
        adapter=after,
        num_samples=len(blocks),
        loss=sum(losses) / len(losses) if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        steps=done,
        epsilon=delta_eps,
        epsilon_total=eps_total,
        delta_privacy=privacy.delta if privacy else 0.0,
        noise_multiplier=noise,
        accountant_state=state,
        sample_rate=sample_rate,
        seconds=seconds,
        samples_per_s=seen / seconds if seconds else 0.0,
        private=privacy is not None,
    )


def _proximal(trainable: list[Any], anchor: list[Any] | None, hp: LocalHyper) -> Any:
    """FedProx's pull towards the global adapter, as a step after each optimizer step (or None)."""
    if anchor is None:
        return None
    import torch

    def step() -> None:
        with torch.no_grad():
            for p, p0 in zip(trainable, anchor, strict=True):
                p.sub_(hp.lr * hp.prox_mu * (p - p0))

    return step


def _epoch(
    model: Any,
    optimizer: Any,
    loader: Any,
    hp: LocalHyper,
    private: bool,
    steps: int,
    done: int,
    seen: int,
    losses: list[float],
    after_step: Any = None,
) -> tuple[int, int]:
    """One pass over the loader, stopping at ``steps`` optimizer steps. Returns (steps done, samples seen)."""
    from contextlib import nullcontext

    from edgefleet.platform.chat import sample_losses

    if private:
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        context = BatchMemoryManager(data_loader=loader, max_physical_batch_size=hp.physical_batch, optimizer=optimizer)
    else:
        context = nullcontext(loader)
    with context as batches:
        for (ids,) in batches:  # (N, T) text blocks or (N, 2, T) chat samples (platform/chat.py)
            if len(ids) == 0:  # Poisson sampling can draw an empty batch: nothing to release
                continue
            if private:
                optimizer.zero_grad(set_to_none=True)
                loss = sample_losses(model, ids).mean()
                loss.backward()
                optimizer.step()  # a no-op until the logical batch's last physical chunk
                stepped = not optimizer._is_last_step_skipped
            else:
                stepped = True
                optimizer.zero_grad(set_to_none=True)
                loss = 0.0
                for chunk in ids.split(hp.physical_batch):  # the same memory bound, accumulated
                    part = sample_losses(model, chunk).mean() * (len(chunk) / len(ids))
                    part.backward()
                    loss += part.detach()
                optimizer.step()
            seen += len(ids)
            losses.append(float(loss.detach()) if hasattr(loss, "detach") else float(loss))
            if stepped:
                if after_step is not None:
                    after_step()
                done += 1
                if done >= steps:
                    break
    return done, seen


def _check(before: dict[str, Any], after: dict[str, Any], frozen: dict[str, Any], model: Any) -> None:
    import torch

    bad = [k for k, v in after.items() if not torch.isfinite(v).all()]
    if bad:
        raise CorruptUpdate(f"non-finite adapter weights after the update: {bad[:3]}")
    if set(after) != set(before):
        raise CorruptUpdate("the adapter's tensors changed names during the update")
    params = dict(model.named_parameters())
    moved = [n for n, p in frozen.items() if not torch.equal(params[n].detach(), p)]
    if moved:
        raise CorruptUpdate(f"frozen base weights moved: {moved[:3]}")


def export_adapter(base: Any, adapter: dict[str, Any], hp: LocalHyper, out_dir: Any) -> Any:
    """Write ``adapter`` as a peft LoRA directory (adapter_config.json + weights): what serving and
    ``ModelSpec.adapter`` load, and what the registry versions."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(hp.seed)
        model = lora_model(base, hp)
    load_adapter(model, adapter)
    model.save_pretrained(str(out_dir))
    return out_dir


def held_out_loss(
    base: Any, adapter: dict[str, Any] | None, blocks: Any, hp: LocalHyper = DEFAULT_HYPER, batch: int = 32
) -> float:
    """Mean next-token loss of base + adapter on ``blocks`` (no gradients): per sample over its
    labelled tokens, then over samples."""
    import torch

    from edgefleet.platform.chat import sample_losses

    with torch.random.fork_rng():
        torch.manual_seed(hp.seed)
        model = lora_model(base, hp)
    load_adapter(model, adapter)
    model.eval()
    total = n = 0.0
    with torch.no_grad():
        for chunk in blocks.split(batch):
            total += float(sample_losses(model, chunk).sum())
            n += len(chunk)
    return total / n
