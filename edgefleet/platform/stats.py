"""A model server's live state, as the Gateway polls it (10 times a second while requests come).

It crosses a process boundary (an actor call, a Serve handle), so it is a frozen dataclass, like
the request events of :mod:`edgefleet.platform.events`: one shape, written by the engine, named by
the model server, read by the Gateway's fleet view and by ``edgefleet bench calibrate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineStats:
    """The defaults describe a target not heard from yet: idle, unmeasured, serving nothing known."""

    queue_depth: int = 0  # requests waiting for a batch
    in_flight: int = 0  # requests the engine holds, waiting or generating
    forward_passes: int = 0  # since start: one per generated token of a batch, the prefill's included
    batches: int = 0  # since start
    requests_done: int = 0  # since start
    prefill_ms_per_token: float | None = None  # EWMA per padded prompt token; None: no batch ran yet
    decode_ms_per_step: dict[int, float] = field(default_factory=dict)  # EWMA by batch size
    model: str = ""
    model_version: str = ""
    quantization: str = ""
    context_length: int = 0  # tokens
    draining: bool = False
    node_id: str = ""  # named by the model server, not the engine
    tier: str = ""  # "edge" or "cloud"
