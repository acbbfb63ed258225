"""The update payload: the one layout a participant sends and everyone else reads back. No Ray.

A participant's update travels as one flat float64 vector, ``[w·Δ…, w, w·loss]``:

- FedAvg weighting (:func:`encode_weighted`): ``w`` is the client's sample count, so the *sum* of
  payloads holds Σ nᵢΔᵢ, Σ nᵢ and Σ nᵢ·lossᵢ: the weighted mean update and the weighted mean loss.
- User-level DP (:func:`encode_clipped`): Δ is clipped to L2 norm C as a whole, ``w = 1`` and the
  loss is 0, since an un-noised sum of losses would sit outside the user-level guarantee.

Secure aggregation masks the vector as it is and reveals only the sum of the vectors, which
:func:`decode` reads exactly like one payload. The participant on the node, the coordinator and the
privacy audit all use this module, so the audit checks the arithmetic that runs.

What a client sends is checked against the coordinator's own :class:`Layout` (its adapter's tensors),
never against another client's word: :func:`check` and :func:`decode` refuse, naming the client, a
payload of the wrong length or tensors, NaN or infinite numbers, or a weight that is not > 0.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.errors import EdgefleetError
from edgefleet.federation.strategies import clip_to_norm

TRAILER = 2  # the weight and the weighted loss after the update's coordinates


class MalformedPayload(EdgefleetError, ValueError):
    """A payload no honest client sends; ``client`` sent it (None: a sum, whose senders are unknown)."""

    def __init__(self, reason: str, client: str | None = None) -> None:
        super().__init__(f"{client}'s update is refused: {reason}" if client else reason)
        self.client = client


@dataclass(frozen=True)
class Layout:
    """The tensors a payload covers, in order, and their sizes: taken from the coordinator's own adapter."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, adapter: Mapping[str, Any], names: Sequence[str]) -> Layout:
        """``names`` of ``adapter`` (name → tensor), in that order."""
        return cls(tuple(names), tuple(int(adapter[n].numel()) for n in names))

    @property
    def length(self) -> int:
        """Numbers in one payload: the update's coordinates, then the trailer."""
        return sum(self.sizes) + TRAILER


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


def decode(payload: Any, layout: Layout | None = None, *, client: str | None = None) -> Contribution:
    """A payload, or the sum of payloads (what secure aggregation unmasks), as a :class:`Contribution`.

    Raises:
        MalformedPayload: not a flat vector (of ``layout.length`` numbers, when given), a NaN or
            infinite number, or a weight that is not > 0; the message names ``client``.
    """
    vector = _flat(payload, np.float64, client)
    if layout is not None and len(vector) != layout.length:
        raise MalformedPayload(f"{len(vector)} numbers where the layout holds {layout.length}", client)
    if not np.isfinite(vector).all():
        raise MalformedPayload("it holds NaN or infinite values", client)
    weight = float(vector[-2])
    if weight <= 0:  # a sample count, or a count of clients: the mean divides by it
        raise MalformedPayload(f"weight {weight} is not > 0", client)
    return Contribution(vector[:-TRAILER], weight, float(vector[-1]))


def check(payload: Any, names: Sequence[str], layout: Layout, *, masked: bool, client: str) -> None:
    """Refuse what ``client`` sent unless it fits ``layout``: the same tensors, the same length and,
    in the clear, a readable payload (:func:`decode`). A masked vector looks uniform by design, so
    only its type and length can be checked before the sum is revealed.

    Raises:
        MalformedPayload: naming ``client`` and what does not fit.
    """
    if tuple(names) != layout.names:
        extra, missing = sorted(set(names) - set(layout.names)), sorted(set(layout.names) - set(names))
        differ = f"names tensors {extra} and lacks {missing}" if extra or missing else "orders the tensors otherwise"
        raise MalformedPayload(f"its tensors do not match the model's layout: it {differ}", client)
    if not masked:
        decode(payload, layout, client=client)
        return
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint64:
        raise MalformedPayload(f"not a masked vector (uint64), got {type(payload).__name__}", client)
    vector = _flat(payload, np.uint64, client)
    if len(vector) != layout.length:
        raise MalformedPayload(f"{len(vector)} numbers where the layout holds {layout.length}", client)


def refusals(sent: Mapping[str, tuple[Any, Sequence[str]]], layout: Layout, *, masked: bool) -> dict[str, str]:
    """Client → why its update is refused, for each (payload, tensor names) it sent that :func:`check` refuses."""
    refused = {}
    for client, (vector, names) in sent.items():
        try:
            check(vector, names, layout, masked=masked, client=client)
        except MalformedPayload as exc:
            refused[client] = str(exc)
    return refused


def _flat(payload: Any, dtype: Any, client: str | None) -> np.ndarray:
    try:
        vector = np.asarray(payload, dtype=dtype)
    except (TypeError, ValueError):  # not numbers at all
        vector = np.empty(0)
    if vector.ndim != 1 or len(vector) <= TRAILER:
        raise MalformedPayload(f"not a flat vector of more than {TRAILER} numbers (shape {vector.shape})", client)
    return vector
