"""When does each request on a target finish? The engine's batching, as arithmetic. Pure: no Ray, no clock.

:class:`~edgefleet.platform.engine.GenerationEngine` runs a batch to completion: requests that
arrive while it runs wait, and form the next batch (up to ``max_batch``) the moment it ends; a
request that finds the target idle waits the quiet gap for company. Prefill covers the padded
prompt of every row; each decode step slows down with the batch size; a row finishes at its own
last token, and the batch one step after its longest row.

The router plans with this (measured speeds, its own in-flight requests) and the routing
benchmark's oracle schedules with it (exact speeds), so the two reason about the same machine.

Example:
    >>> timing = Timing(prefill_ms_per_token=1.0, step_ms=lambda batch: 10.0, max_batch=2)
    >>> schedule([(0.0, 10, 3), (0.0, 10, 5), (0.0, 10, 1)], timing)  # two share a batch, one waits
    [51.0, 71.0, 101.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

QUIET_GAP_MS = 1.0  # the engine's default batching.quiet_ms


@dataclass(frozen=True)
class Timing:
    prefill_ms_per_token: float  # per padded prompt token (rows × longest prompt)
    step_ms: Callable[[int], float]  # one decode step at a batch size
    max_batch: int
    servers: int = 1  # replicas that each run their own batches (the cloud)
    quiet_gap_ms: float = QUIET_GAP_MS


def schedule(arrivals: Sequence[tuple[float, int, int]], timing: Timing) -> list[float]:
    """Finish time (ms, same clock as the arrivals) of each ``(arrival ms, prompt tokens, new tokens)``.

    Results are in input order; requests arriving at the same time are served in input order.
    """
    order = sorted(range(len(arrivals)), key=lambda k: (arrivals[k][0], k))
    free = [-math.inf] * max(1, timing.servers)
    done = [0.0] * len(arrivals)
    i = 0
    while i < len(order):
        server = min(range(len(free)), key=free.__getitem__)
        first_at = arrivals[order[i]][0]
        # Idle: the batch opens after the quiet gap. Busy: whatever waits goes the moment it ends.
        start = first_at + timing.quiet_gap_ms if first_at >= free[server] else free[server]
        batch = []
        while i < len(order) and arrivals[order[i]][0] <= start and len(batch) < timing.max_batch:
            batch.append(order[i])
            i += 1
        step = timing.step_ms(len(batch))
        prefill = timing.prefill_ms_per_token * max(arrivals[k][1] for k in batch) * len(batch)
        for k in batch:
            done[k] = start + prefill + max(1, arrivals[k][2]) * step
        free[server] = start + prefill + (max(max(1, arrivals[k][2]) for k in batch) + 1) * step
    return done
