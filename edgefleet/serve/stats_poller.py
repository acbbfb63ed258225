"""When the Gateway asks its targets for stats: 10 times a second while requests come, once a
second after an idle spell.

10 polls a second per target cost an idle app ~0.1 of a core (on 2 cores, two idle apps slowed
everything else by a third). The next request wakes the poller and waits up to 50 ms for fresh
stats, as a node may have died or come back while it was idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

STATS_PERIOD_S = 0.1  # FleetView staleness bound while requests come; a stats call costs ~1 ms
IDLE_STATS_PERIOD_S, IDLE_AFTER_S = 1.0, 5.0
WAKE_WAIT_S = 0.05


class StatsPoller:
    """Calls ``refresh_all`` (every target's stats into the fleet view) on that schedule.

    Runs on the event loop of the first :meth:`on_request`; every call comes from that loop.
    """

    def __init__(self, refresh_all: Callable[[], Awaitable[None]]) -> None:
        self.refresh_all = refresh_all
        self._task: asyncio.Task | None = None
        self._woken: asyncio.Event | None = None  # set by a request: the idle wait ends
        self._last_request = time.monotonic()

    def _idle(self) -> bool:
        return time.monotonic() - self._last_request > IDLE_AFTER_S

    async def on_request(self) -> None:
        """Start the poller, or wake it after an idle spell and wait briefly for fresh stats."""
        was_idle = self._idle()
        self._last_request = time.monotonic()
        if self._task is None or self._task.done():
            self._woken = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())
        elif was_idle:
            self._woken.set()
            await asyncio.wait({asyncio.ensure_future(self.refresh_all())}, timeout=WAKE_WAIT_S)

    async def _poll_forever(self) -> None:
        while True:
            await self.refresh_all()
            if self._idle():
                self._woken.clear()
                with contextlib.suppress(TimeoutError):  # a request ends the wait early
                    await asyncio.wait_for(self._woken.wait(), IDLE_STATS_PERIOD_S)
            else:
                await asyncio.sleep(STATS_PERIOD_S)
