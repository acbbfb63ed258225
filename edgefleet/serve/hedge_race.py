"""Run a request on its target and, if the first token is late, race a hedge against it.

Works on plain async iterators of engine events (:mod:`edgefleet.platform.events`), so it is
tested without Ray. The first side to produce a decisive event (a token, the end, or an
error) wins; the other is closed, which cancels its remote call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from edgefleet.platform.events import Delta, EngineEvent, Failed, Finished, FirstToken
from edgefleet.serve.events import Hedged
from edgefleet.serve.hedging import HedgeBudget

DECISIVE = (FirstToken, Delta, Finished, Failed)
_DONE = object()


async def race(
    primary: AsyncIterator[EngineEvent],
    start_hedge: Callable[[], AsyncIterator[EngineEvent]],
    *,
    after_s: float,
    budget: HedgeBudget,
    hedge_name: str,
) -> AsyncIterator[EngineEvent | Hedged]:
    """Events of the winner, after a :class:`Hedged` note when a hedge was sent.

    Raises whatever the winning side raised (a failed primary stays the caller's to fail over).
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(name: str, events: AsyncIterator[EngineEvent]) -> None:
        try:
            async for event in events:
                await queue.put((name, event))
            await queue.put((name, _DONE))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which decides
            await queue.put((name, exc))

    loop = asyncio.get_running_loop()
    tasks = {"primary": loop.create_task(pump("primary", primary))}
    buffered: dict[str, list[Any]] = {"primary": [], "hedge": []}
    timer_at: float | None = loop.time() + after_s
    hedged = False
    winner = None
    try:
        while winner is None:
            timeout = None if timer_at is None else max(0.0, timer_at - loop.time())
            try:
                name, item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                timer_at = None  # the timer fires once
                if budget.try_spend():
                    hedged = True
                    tasks["hedge"] = loop.create_task(pump("hedge", start_hedge()))
                continue
            buffered[name].append(item)
            failed = item is _DONE or isinstance(item, Exception)
            if failed and _other(name) in tasks and name in tasks:
                tasks.pop(name)  # this side died before its first token while the other still runs
                continue
            if failed or isinstance(item, DECISIVE):
                winner = name
        loser = _other(winner)
        if loser in tasks:
            tasks.pop(loser).cancel()
        if hedged:
            side = "the hedge" if winner == "hedge" else "the original"
            yield Hedged(
                hedge_name, f"hedged to {hedge_name} after {after_s * 1000:.0f} ms without a first token; {side} won"
            )
        for item in buffered[winner]:
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item
        while True:
            name, item = await queue.get()
            if name != winner:
                continue
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        for task in tasks.values():
            task.cancel()


def _other(name: str) -> str:
    return "hedge" if name == "primary" else "primary"
