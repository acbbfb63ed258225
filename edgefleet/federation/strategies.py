"""Aggregation strategies: many clients' adapter deltas in, one global step out. Pure torch, no Ray.

An update is a dict of tensors (adapter name → delta) with the client's sample count. Rules:

- ``fedavg``: the sample-weighted mean of the deltas (McMahan et al.).
- ``fedadam`` / ``fedyogi``: the mean delta is a pseudo-gradient for a server optimiser with
  momentum and an adaptive second moment (Reddi et al., "Adaptive Federated Optimization").
- ``median`` / ``trimmed_mean``: coordinate-wise, so a minority of bad or malicious clients (one
  sending a 1e6-scaled update, say) cannot drag the result. They need every update in the clear, so
  they cannot run under secure aggregation (the coordinator only sees the sum there).
- ``fedprox``: FedAvg on the server; its proximal term μ lives in the client's local update.
- DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018):
  each client clips its update to norm C (:func:`clip_to_norm`, on the client, before masking); the
  server adds Gaussian noise σC to the unweighted sum and divides by the number sampled
  (:func:`dp_fedavg_from_sum`).

Under secure aggregation the coordinator never holds a client's update, only sums: flat vectors
(:func:`flatten` / :func:`unflatten`) of ``[n·Δ, n]`` for FedAvg, whose mean comes from
:func:`fedavg_from_sum`.

LoRA: averaging A and B separately is not the average of the products BA. Exactness needs the
A matrices frozen (FFA-LoRA): then ΔW = B·A with one shared A, and averaging B is exact and
halves what clients send. :func:`lora_a_moved` tells a coordinator when that does not hold.

Example:
    >>> import torch
    >>> ups = [ClientUpdate({"w": torch.tensor([1.0])}, 1), ClientUpdate({"w": torch.tensor([4.0])}, 3)]
    >>> fedavg(ups)["w"].item()
    3.25
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "trimmed_mean")
NEEDS_EACH_UPDATE = ("fedmedian", "trimmed_mean")  # cannot run on a secure-aggregated sum


@dataclass(frozen=True)
class ClientUpdate:
    delta: dict[str, Any]  # name → tensor
    num_samples: int


def _check(updates: Sequence[ClientUpdate]) -> list[str]:
    if not updates:
        raise ValueError("no client updates to aggregate")
    names = sorted(updates[0].delta)
    for u in updates[1:]:
        if sorted(u.delta) != names:
            raise ValueError("client updates carry different tensors")
    if any(u.num_samples <= 0 for u in updates):
        raise ValueError("every client update needs num_samples > 0")
    return names


def fedavg(updates: Sequence[ClientUpdate]) -> dict[str, Any]:
    names = _check(updates)
    total = sum(u.num_samples for u in updates)
    return {
        n: sum(u.delta[n].double() * (u.num_samples / total) for u in updates).to(updates[0].delta[n].dtype)
        for n in names
    }


def coordinate_median(updates: Sequence[ClientUpdate]) -> dict[str, Any]:
    import torch

    names = _check(updates)
    return {n: torch.stack([u.delta[n] for u in updates]).median(dim=0).values for n in names}


def trimmed_mean(updates: Sequence[ClientUpdate], trim: float = 0.2) -> dict[str, Any]:
    """Per coordinate, drop the ``floor(trim · n)`` largest and smallest values, average the rest."""
    import torch

    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    names = _check(updates)
    k = int(trim * len(updates))
    out = {}
    for n in names:
        ordered = torch.stack([u.delta[n] for u in updates]).sort(dim=0).values
        out[n] = ordered[k : len(updates) - k].mean(dim=0)
    return out


@dataclass
class ServerOptimizer:
    """FedAdam / FedYogi on the pseudo-gradient (the mean client delta); state persists across rounds."""

    kind: str = "adam"  # "adam" or "yogi"
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: the floor of the denominator
    m: dict[str, Any] = field(default_factory=dict)
    v: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("adam", "yogi"):
            raise ValueError(f"kind must be 'adam' or 'yogi', got {self.kind!r}")

    def step(self, updates: Sequence[ClientUpdate]) -> dict[str, Any]:
        """The global model's change this round: lr · m / (sqrt(v) + τ)."""
        return self.apply(fedavg(updates))

    def apply(self, delta: dict[str, Any]) -> dict[str, Any]:
        """The same step from an already averaged pseudo-gradient (what secure aggregation yields)."""
        import torch

        out = {}
        for n, d in delta.items():
            m = self.m.get(n, torch.zeros_like(d))
            v = self.v.get(n, torch.full_like(d, self.tau**2))
            m = self.beta1 * m + (1 - self.beta1) * d
            if self.kind == "adam":
                v = self.beta2 * v + (1 - self.beta2) * d * d
            else:  # Yogi: v moves towards d² additively, so it cannot blow up on one large round
                v = v - (1 - self.beta2) * d * d * torch.sign(v - d * d)
            self.m[n], self.v[n] = m, v
            out[n] = self.lr * m / (v.sqrt() + self.tau)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m, self.v = dict(state["m"]), dict(state["v"])


def flatten(delta: dict[str, Any], names: Sequence[str]) -> Any:
    """Tensors ``names`` of ``delta`` as one float64 numpy vector, in that order."""
    import numpy as np

    return np.concatenate([delta[n].detach().double().reshape(-1).cpu().numpy() for n in names])


def unflatten(vector: Any, like: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The inverse of :func:`flatten`: shapes and dtypes come from ``like``."""
    import torch

    total = sum(like[n].numel() for n in names)
    if total != len(vector):
        raise ValueError(f"vector of length {len(vector)} does not fit tensors of total size {total}")
    out, i = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = torch.as_tensor(vector[i : i + size]).reshape(like[n].shape).to(like[n].dtype)
        i += size
    return out


def clip_to_norm(vector: Any, clip: float) -> tuple[Any, float]:
    """``vector`` scaled down to L2 norm ``clip`` if longer; (clipped, norm before)."""
    import numpy as np

    if clip <= 0:
        raise ValueError(f"clip norm must be > 0, got {clip}")
    norm = float(np.linalg.norm(vector))
    return (vector * (clip / norm) if norm > clip else vector), norm


def fedavg_from_sum(weighted_sum: Any, total_weight: float) -> Any:
    """Σ nᵢΔᵢ / Σ nᵢ: sample-weighted FedAvg from the two sums secure aggregation reveals."""
    if total_weight <= 0:
        raise ValueError("the clients' total sample count must be > 0")
    return weighted_sum / total_weight


def dp_fedavg_from_sum(clipped_sum: Any, sampled: int, clip: float, noise_multiplier: float, rng: Any) -> Any:
    """(Σ clipped Δᵢ + N(0, (σC)²)) / K: user-level DP-FedAvg with a fixed denominator.

    The denominator is the number *sampled*, not the number that finished, so one client's presence
    changes the result by at most C/K whatever the others do.
    """
    if sampled <= 0:
        raise ValueError("sampled must be > 0")
    noise = rng.normal(0.0, noise_multiplier * clip, size=clipped_sum.shape)
    return (clipped_sum + noise) / sampled


def lora_a_moved(delta: dict[str, Any], atol: float = 0.0) -> list[str]:
    """Names of LoRA A tensors a client changed: if any, averaging B alone is not exact."""
    return [n for n, t in delta.items() if "lora_A" in n and float(t.abs().max()) > atol]


def aggregate(
    name: str, updates: Sequence[ClientUpdate], *, server: ServerOptimizer | None = None, trim: float = 0.2
) -> dict[str, Any]:
    """The global delta under strategy ``name`` (the config's ``federation.strategy``)."""
    if name in ("fedavg", "fedprox"):
        return fedavg(updates)
    if name in ("fedadam", "fedyogi"):
        if server is None:
            raise ValueError(f"{name} needs the ServerOptimizer that carries its state across rounds")
        return server.step(updates)
    if name == "fedmedian":
        return coordinate_median(updates)
    if name == "trimmed_mean":
        return trimmed_mean(updates, trim)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
