"""A federated run's state, typed: what :mod:`run_store` persists after every step, and what a
restarted coordinator reads back to go on from there.

:class:`RunState` is the run: its settings, the committed rounds (:class:`RoundResult`), and the
round in progress (:class:`RoundState`), whose ``status`` is the last step persisted:

    sampled → keyed → training → revealed → aggregated → evaluated → committed
                          ↘ failed (the attempt is retried with fresh keys)

The JSON layout is the one runs were written in before these types existed (the same keys), so a
run directory from then still resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgefleet.eval.scores import Quality
from edgefleet.federation.secagg import AdvertisedKeys, RevealedShare
from edgefleet.train.accounting import Release

ASKS_CLIENTS = ("sampled", "keyed", "training", "failed")  # the next step is an attempt: it asks the clients


@dataclass(frozen=True)
class RoundResult:
    round: int
    attempt: int
    sampled: list[str]
    finished: list[str]
    stragglers: dict[str, str]  # client → why it was dropped
    train_loss: float  # mean over the finished clients' local updates
    held_out_loss: float  # of the new global model
    perplexity: float
    epsilon: dict[str, float]  # every client's composed ε so far (sample-level, DP-SGD)
    user_epsilon: float | None  # the user-level guarantee so far (DP-FedAvg), when on
    wall_s: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step
    client_train_s: dict[str, float] = field(default_factory=dict)  # pure compute per client
    client_step_s: dict[str, float] = field(default_factory=dict)  # the whole train step on the node
    ran_on: dict[str, str | None] = field(default_factory=dict)  # client → the node label its update ran on
    # What users get (eval/scores.py), when the sites have held-out questions: task score and guard
    quality: Quality | None = None

    def __post_init__(self) -> None:
        if isinstance(self.quality, dict):  # read back from the run's JSON state
            object.__setattr__(self, "quality", Quality.from_json(self.quality))


@dataclass(frozen=True)
class ClientReport:
    """What a finisher reported in the clear with its masked update."""

    release: Release
    train_s: float
    step_s: float
    ran_on: str | None


@dataclass
class RoundState:
    """The round in progress, as far as its ``status`` says it got."""

    round: int
    attempt: int
    status: str
    # sampled
    sampled: list[str] = field(default_factory=list)
    tag: str = ""  # "<run>/round-<r>/attempt-<a>": binds keys, masks and shares to this attempt
    excluded: dict[str, str] = field(default_factory=dict)  # left out of later attempts, and why
    failures: list[str] = field(default_factory=list)  # why earlier attempts failed
    unavailable: dict[str, str] = field(default_factory=dict)
    over_budget: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step
    wall_started: float = 0.0  # time.time() when the attempt began
    # keyed
    roster: list[AdvertisedKeys] = field(default_factory=list)
    # revealed: the masked vectors are in the run store; with these shares they unmask only the sum
    finished: list[str] = field(default_factory=list)
    stragglers: dict[str, str] = field(default_factory=dict)
    revealed: dict[str, list[RevealedShare]] = field(default_factory=dict)
    rejected: dict[str, list[str]] = field(default_factory=dict)  # revealer → senders whose share failed
    threshold: int = 0
    names: list[str] = field(default_factory=list)  # the adapter tensors the payloads cover, in order
    noise_seed: int = 0  # user-level DP: drawn once, so a re-aggregation draws the same noise
    clients: dict[str, ClientReport] = field(default_factory=dict)
    # aggregated, evaluated
    tampered: list[str] = field(default_factory=list)
    train_loss: float | None = None  # NaN under user-level DP: no loss is released
    held_out_loss: float | None = None
    quality: Quality | None = None
    # committed: the frozen result alone; everything above that could rebuild the sum is gone
    result: RoundResult | None = None

    @property
    def asks_clients(self) -> bool:
        """Whether the next step is an attempt at the round (it asks the clients), not one that
        finishes a revealed round from disk."""
        return self.status in ASKS_CLIENTS

    @classmethod
    def committed(cls, result: RoundResult) -> RoundState:
        return cls(result.round, result.attempt, "committed", result=result)

    def to_json(self) -> dict[str, Any]:
        if self.result is not None:  # nothing else survives the commit
            return {"round": self.round, "attempt": self.attempt, "status": self.status, "result": asdict(self.result)}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}
        out["roster"] = [{k: v.hex() if isinstance(v, bytes) else v for k, v in asdict(r).items()} for r in self.roster]
        out["revealed"] = {c: [asdict(s) for s in shares] for c, shares in self.revealed.items()}
        out["clients"] = {c: asdict(r) for c, r in self.clients.items()}
        out["quality"] = asdict(self.quality) if self.quality else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundState:
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.roster = [
            AdvertisedKeys(**{k: bytes.fromhex(v) if k != "client" else v for k, v in r.items()}) for r in state.roster
        ]
        state.revealed = {c: [RevealedShare(**s) for s in shares] for c, shares in state.revealed.items()}
        state.clients = {
            c: ClientReport(**{**r, "release": Release(**r["release"]), "ran_on": r.get("ran_on")})
            for c, r in state.clients.items()
        }
        if isinstance(state.quality, dict):
            state.quality = Quality.from_json(state.quality)
        if isinstance(state.result, dict):
            state.result = RoundResult(**state.result)
        return state


@dataclass
class RunState:
    run_id: str
    settings: dict[str, Any]  # what the run was started with: a resume with other settings is refused
    completed: list[RoundResult] = field(default_factory=list)
    current: RoundState | None = None
    initial_loss: float | None = None  # the base model's held-out loss
    initial_quality: Quality | None = None  # the base model's scores: what the first version must beat
    user_dp_history: list[Release] = field(default_factory=list)  # one DP-FedAvg release per round
    # The round whose global model the next round starts from: the last one the gate kept (0: the
    # start). A held round is published, but not built on: a model is kept only if it is better.
    kept_round: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "settings": self.settings,
            "completed": [asdict(r) for r in self.completed],
            "current": self.current.to_json() if self.current else None,
            "initial_loss": self.initial_loss,
            "initial_quality": asdict(self.initial_quality) if self.initial_quality else None,
            "user_dp_history": [[r.noise_multiplier, r.sample_rate, r.steps] for r in self.user_dp_history],
            "kept_round": self.kept_round,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        quality = data.get("initial_quality")
        return cls(
            run_id=data["run_id"],
            settings=data["settings"],
            completed=[RoundResult(**r) for r in data.get("completed", [])],
            current=RoundState.from_json(data["current"]) if data.get("current") else None,
            initial_loss=data.get("initial_loss"),
            initial_quality=Quality.from_json(quality) if quality else None,
            user_dp_history=[Release(*h) for h in data.get("user_dp_history", [])],
            # a state from before: every round was built on
            kept_round=data.get("kept_round", len(data.get("completed", []))),
        )
