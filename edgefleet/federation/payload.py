"""The update payload: the one layout a participant sends and everyone else reads back. No Ray.

A participant's update travels as one flat float64 vector, ``[w·Δ…, w, w·loss]``:

- FedAvg weighting (:func:`encode_weighted`): ``w`` is the client's sample count, so the *sum* of
  payloads holds Σ nᵢΔᵢ, Σ nᵢ and Σ nᵢ·lossᵢ: the weighted mean update and the weighted mean loss.
- User-level DP (:func:`encode_clipped`): Δ is clipped to L2 norm C as a whole, ``w = 1`` and the
  loss is 0, since an un-noised sum of losses would sit outside the user-level guarantee.

Secure aggregation masks the vector as it is and reveals only the sum of the vectors, which
:func:`decode` reads exactly like one payload. The participant on the node, the coordinator and the
privacy audit all use this module, so the audit checks the arithmetic that runs.

Example:
    >>> import numpy as np
    >>> a = encode_weighted(np.array([1.0, 2.0]), num_samples=2, loss=3.0)
    >>> b = encode_weighted(np.array([0.0, 4.0]), num_samples=1, loss=6.0)
    >>> total = decode(a + b)
    >>> total.mean_delta.tolist(), total.weight, total.mean_loss
    ([0.6666666666666666, 2.6666666666666665], 3.0, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.federation.strategies import clip_to_norm

TRAILER = 2  # the weight and the weighted loss after the update's coordinates


@dataclass(frozen=True)
class Contribution:
    """One payload, or the sum of several, read back."""

    weighted_delta: np.ndarray  # Σ wᵢΔᵢ, flat (the adapter's trainable tensors, in ``names`` order)
    weight: float  # Σ wᵢ: samples under FedAvg weighting, clients under user-level DP
    weighted_loss: float  # Σ wᵢ·lossᵢ (0 under user-level DP)

    @property
    def mean_delta(self) -> np.ndarray:
        """Σ wᵢΔᵢ / Σ wᵢ: the weighted mean update (FedAvg)."""
        if self.weight <= 0:
            raise ValueError("the clients' total weight must be > 0")
        return self.weighted_delta / self.weight

    @property
    def mean_loss(self) -> float:
        """The weighted mean training loss (NaN without weight)."""
        return self.weighted_loss / self.weight if self.weight > 0 else math.nan


def encode_weighted(delta: np.ndarray, *, num_samples: int, loss: float) -> np.ndarray:
    """``[n·Δ…, n, n·loss]``: a FedAvg update weighted by the client's sample count."""
    weight = float(num_samples)
    return np.concatenate([np.asarray(delta, dtype=np.float64) * weight, [weight, weight * loss]])


def encode_clipped(delta: np.ndarray, *, clip: float) -> np.ndarray:
    """``[clip_C(Δ)…, 1, 0]``: a user-level DP update, bounded by C whatever the client's data."""
    clipped, _ = clip_to_norm(np.asarray(delta, dtype=np.float64), clip)
    return np.concatenate([clipped, [1.0, 0.0]])


def decode(payload: Any) -> Contribution:
    """A payload, or the sum of payloads (what secure aggregation unmasks), as a :class:`Contribution`."""
    vector = np.asarray(payload, dtype=np.float64)
    if vector.ndim != 1 or len(vector) <= TRAILER:
        raise ValueError(f"a payload is a flat vector of more than {TRAILER} numbers, got shape {vector.shape}")
    return Contribution(vector[:-TRAILER], float(vector[-2]), float(vector[-1]))
