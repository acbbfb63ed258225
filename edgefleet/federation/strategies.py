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

A round applies one :class:`Strategy` (:func:`from_config` picks it): it gets the clients'
payloads read back (:mod:`edgefleet.federation.payload`: flat vectors of ``[n·Δ, n, n·loss]``, from
:func:`flatten` / :func:`unflatten`). Under secure aggregation that is only their sum, whose mean
comes from :func:`fedavg_from_sum`; the robust rules get every payload, in the clear.

LoRA: averaging A and B separately is not the average of the products BA. Exactness needs the
A matrices frozen (FFA-LoRA): then ΔW = B·A with one shared A, and averaging B is exact and
halves what clients send (``LocalHyper.freeze_a``, on by default).

Example:
    >>> import torch
    >>> ups = [ClientUpdate({"w": torch.tensor([1.0])}, 1), ClientUpdate({"w": torch.tensor([4.0])}, 3)]
    >>> fedavg(ups)["w"].item()
    3.25
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.config import STRATEGY_NEEDS_EACH_UPDATE

if TYPE_CHECKING:
    from edgefleet.federation.payload import Contribution

STRATEGIES = tuple(STRATEGY_NEEDS_EACH_UPDATE)  # the names, and what the config checks under secure aggregation


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

    def apply(self, delta: dict[str, Any]) -> dict[str, Any]:
        """The global model's change this round from the mean client delta: lr · m / (sqrt(v) + τ)."""
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


# ---------------------------------------------------------------- strategies as a round runs them


class Strategy(ABC):
    """One aggregation rule as a round applies it: Flower's ``Strategy``, cut to what our round needs.

    The arithmetic stays in the functions above. A strategy picks which of them to call on a round's
    contributions (payloads read back by :mod:`edgefleet.federation.payload`) and may carry server
    state from round to round, which the coordinator persists so a resumed run replays it.
    """

    name: str = ""
    needs_each_update = False  # True: it cannot run on a secure-aggregated sum (config.STRATEGY_NEEDS_EACH_UPDATE)
    reports_loss = True  # False: the payloads carry no loss (user-level DP)
    stateful = False  # True: :meth:`server_step` reads and returns server state

    @abstractmethod
    def aggregate(self, total: Contribution, each: Sequence[Contribution] | None, *, sampled: int, rng: Any) -> Any:
        """The round's mean update as a flat vector, from the sum of payloads ``total`` and, in the
        clear only, every payload ``each``; ``sampled`` clients were asked, ``rng`` draws any noise."""

    def server_step(self, delta: dict[str, Any], state: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
        """The global model's change from the mean update, and the server state after this round."""
        return delta, None


class FedAvg(Strategy):
    """McMahan et al. 2017: the sample-weighted mean, from the sums alone (fedprox runs it too)."""

    name = "fedavg"
    needs_each_update = STRATEGY_NEEDS_EACH_UPDATE[name]

    def aggregate(self, total: Contribution, each: Sequence[Contribution] | None, *, sampled: int, rng: Any) -> Any:
        return fedavg_from_sum(total.weighted_delta, total.weight)


class FedOpt(FedAvg):
    """Reddi et al. 2021: FedAvg's mean is a pseudo-gradient for a server Adam or Yogi step."""

    stateful = True

    def __init__(self, kind: str, *, lr: float) -> None:
        ServerOptimizer(kind, lr=lr)  # refuses an unknown kind now, not at the first round's end
        self.name, self.kind, self.lr = f"fed{kind}", kind, lr
        self.needs_each_update = STRATEGY_NEEDS_EACH_UPDATE[self.name]

    def server_step(self, delta: dict[str, Any], state: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
        opt = ServerOptimizer(self.kind, lr=self.lr)
        if state is not None:
            opt.load_state_dict(state)
        return opt.apply({k: v.float() for k, v in delta.items()}), opt.state_dict()


class FedMedian(Strategy):
    """Yin et al. 2018: the coordinate-wise median of the updates, robust to a minority of bad ones."""

    name = "fedmedian"
    needs_each_update = STRATEGY_NEEDS_EACH_UPDATE[name]

    def aggregate(self, total: Contribution, each: Sequence[Contribution] | None, *, sampled: int, rng: Any) -> Any:
        return coordinate_median(_updates(self.name, each))["v"].numpy()


class TrimmedMean(Strategy):
    """Yin et al. 2018: per coordinate, the mean after cutting ``trim`` of the values at each end."""

    name = "trimmed_mean"
    needs_each_update = STRATEGY_NEEDS_EACH_UPDATE[name]

    def __init__(self, *, trim: float = 0.2) -> None:
        if not 0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        self.trim = trim

    def aggregate(self, total: Contribution, each: Sequence[Contribution] | None, *, sampled: int, rng: Any) -> Any:
        return trimmed_mean(_updates(self.name, each), self.trim)["v"].numpy()


class DPFedAvg(Strategy):
    """McMahan et al. 2018: the clipped updates' sum plus N(0, (σC)²), over the number sampled;
    ``inner``'s server step (FedAdam, say) then applies to that noised mean."""

    reports_loss = False

    def __init__(self, inner: Strategy, *, clip: float, noise_multiplier: float) -> None:
        if clip <= 0 or noise_multiplier < 0:
            raise ValueError("DP-FedAvg needs clip > 0 and noise_multiplier >= 0")
        self.inner, self.clip, self.noise_multiplier = inner, clip, noise_multiplier
        self.name, self.stateful = f"dp-{inner.name}", inner.stateful

    def aggregate(self, total: Contribution, each: Sequence[Contribution] | None, *, sampled: int, rng: Any) -> Any:
        return dp_fedavg_from_sum(total.weighted_delta, sampled, self.clip, self.noise_multiplier, rng)

    def server_step(self, delta: dict[str, Any], state: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
        return self.inner.server_step(delta, state)


def make_strategy(
    name: str, *, server_lr: float = 1e-2, trim: float = 0.2, user_dp: tuple[float, float] | None = None
) -> Strategy:
    """The strategy called ``name`` (``federation.strategy``), wrapped in DP-FedAvg when ``user_dp``
    = (clip C, noise multiplier σ) is given."""
    if name in ("fedavg", "fedprox"):  # FedProx's μ acts in the client's update; the server averages
        strategy: Strategy = FedAvg()
    elif name in ("fedadam", "fedyogi"):
        strategy = FedOpt(name.removeprefix("fed"), lr=server_lr)
    elif name == "fedmedian":
        strategy = FedMedian()
    elif name == "trimmed_mean":
        strategy = TrimmedMean(trim=trim)
    else:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if user_dp is not None:
        if STRATEGY_NEEDS_EACH_UPDATE[name]:  # DP-FedAvg replaces the rule by a noised mean
            raise ValueError(f"{name} cannot run under user-level DP (DP-FedAvg releases only a noised mean)")
        clip, sigma = user_dp
        strategy = DPFedAvg(strategy, clip=clip, noise_multiplier=sigma)
    return strategy


def from_config(fed: Any) -> Strategy:
    """The strategy a :class:`~edgefleet.config.FederationConfig` names."""
    udp = fed.user_dp
    return make_strategy(
        fed.strategy,
        server_lr=fed.server_lr,
        trim=fed.trim,
        user_dp=(udp.clip_norm, udp.noise_multiplier) if udp else None,
    )


def _updates(name: str, each: Sequence[Contribution] | None) -> list[ClientUpdate]:
    """Every client's own mean update, for the rules that need them apart."""
    if each is None:
        raise ValueError(f"{name} needs every client's update in the clear (not under secure aggregation)")
    import torch

    return [ClientUpdate({"v": torch.from_numpy(c.mean_delta.copy())}, int(c.weight)) for c in each]
