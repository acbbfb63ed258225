"""What a model server streams back for one request: typed events, the same from edge and cloud.

They cross a process boundary (a Ray streaming generator, a Serve response), so they are frozen
dataclasses: one shape, written by the engine and read by the Gateway. In order:

  :class:`Started` once; :class:`Delta` zero or more times (or one :class:`FirstToken` when the
  request asked for ``stream=False``); :class:`Finished` once;
  or a single :class:`Failed` when the request is refused or the batch broke.

A unary call (``complete``) gets the whole request as one :class:`Completed`, or a :class:`Failed`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Started:
    """The request's batch began: where, on what, after how long a wait."""

    queue_ms: float  # from the engine receiving it to its batch starting
    prompt_tokens: int
    batch_size: int
    model: str
    model_version: str
    node_id: str = ""  # named by the model server, not the engine
    tier: str = ""  # "edge" or "cloud"


@dataclass(frozen=True)
class FirstToken:
    """The first token exists (unary requests send no deltas, but TTFT is still measured)."""

    at: float | None = None  # perf_counter s in the Gateway, when it estimates better than arrival


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int  # completion tokens so far on this target (a count, not this chunk's)


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
    text: str  # the whole answer on this target


@dataclass(frozen=True)
class Failed:
    code: str  # a gRPC status name: INVALID_ARGUMENT, UNAVAILABLE (draining), INTERNAL (broke)
    message: str
    param: str | None = None  # the field at fault, for INVALID_ARGUMENT


@dataclass(frozen=True)
class Completed:
    """A unary request's result: its start and end, timed in the engine's process."""

    started: Started
    finished: Finished
    first_token_ms: float  # from the engine receiving the request
    engine_ms: float  # the same, to the end


EngineEvent = Started | FirstToken | Delta | Finished | Failed
