"""What the coordinator and a participant say to each other in a round: one typed message per phase.

Each request has one reply type. They cross the training session's mailbox (a Ray actor) pickled,
so they hold plain values, bytes and numpy arrays; the participant imports this module on the node.

    PlanRequest   → Plan          the DP-SGD release the next update would make (the ledger decides)
    KeysRequest   → Keys          secure aggregation step 1: this round's fresh public keys
    SharesRequest → Shares        step 2: encrypted Shamir shares, one per peer, relayed by the coordinator
    TrainRequest  → Trained       step 3: the private update, as a (masked) payload
    RevealRequest → Revealed      step 4: the shares that unmask only the sum
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.federation.secagg import AdvertisedKeys, RevealedShare
from edgefleet.train.accounting import Release
from edgefleet.train.dp import LocalHyper


@dataclass(frozen=True)
class PlanRequest:
    hp: LocalHyper
    # A new round starts: the session reloads its node's data first (users' feedback since the last one).
    reload_data = True


@dataclass(frozen=True)
class Plan:
    release: Release


@dataclass(frozen=True)
class KeysRequest:
    tag: str  # "<run>/round-<r>/attempt-<a>": binds every key, mask and share to one attempt


@dataclass(frozen=True)
class Keys:
    keys: AdvertisedKeys


@dataclass(frozen=True)
class SharesRequest:
    tag: str
    roster: list[AdvertisedKeys]
    threshold: int  # Shamir t


@dataclass(frozen=True)
class Shares:
    outbox: dict[str, bytes]  # recipient → its share, encrypted to it


@dataclass(frozen=True)
class TrainRequest:
    tag: str
    adapter: dict[str, Any] | None  # the global adapter the update starts from (None: a fresh LoRA)
    hp: LocalHyper
    secure: bool  # mask the payload (secure aggregation)
    user_clip: float | None = None  # user-level DP: clip the whole update to this L2 norm
    delay_s: float = 0.0  # a simulated slow site (one-machine runs), as the WAN is simulated


@dataclass(frozen=True)
class Trained:
    """A finished update. Only the payload is secret (masked under secure aggregation); the DP
    release, the timings and the node label leave in the clear."""

    payload: Any  # numpy: the payload (federation/payload.py), uint64 when masked
    names: list[str]  # the adapter tensors the payload covers, in order
    release: Release
    train_s: float  # inside the local update
    step_s: float  # the whole step on the node: setup, training, masking
    ran_on: str | None  # the node label it ran on (None outside Ray)


@dataclass(frozen=True)
class RevealRequest:
    tag: str
    inbox: dict[str, bytes]  # sender → the share it sent this client
    survivors: list[str]
    dropped: list[str]


@dataclass(frozen=True)
class Revealed:
    shares: list[RevealedShare]
    rejected: list[str] = field(default_factory=list)  # senders whose share failed authentication


Request = PlanRequest | KeysRequest | SharesRequest | TrainRequest | RevealRequest
Reply = Plan | Keys | Shares | Trained | Revealed
REPLY_TO: dict[type, type] = {
    PlanRequest: Plan,
    KeysRequest: Keys,
    SharesRequest: Shares,
    TrainRequest: Trained,
    RevealRequest: Revealed,
}


class WrongReply(EdgefleetError, TypeError):
    """A client answered a request with another phase's reply: its failure, not the coordinator's."""


def expect_reply(request: Request, reply: Any) -> Reply:
    """``reply`` if it is ``request``'s reply type.

    Raises:
        WrongReply: naming both types.
    """
    expected = REPLY_TO[type(request)]
    if not isinstance(reply, expected):
        raise WrongReply(f"answered {type(request).__name__} with {type(reply).__name__}, not {expected.__name__}")
    return reply
