"""A Train session's two channels, tasks to its worker and answers back, in one actor, and the
envelopes that cross them.

``ray.util.queue.Queue`` is one actor per queue, so a session's two channels cost two worker
processes (and they outlived the session). One async actor holds both, and goes with the session.

The owner puts a :class:`SessionTask` (or None: stop); the worker answers each with a
:class:`SessionReply` of the same ``seq``, and when its run ends the session puts
:class:`SessionStopped`. What the task and the reply carry inside is the handler's business
(the federation's typed messages, say).
"""

from __future__ import annotations

import asyncio
import functools
import queue
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SessionTask:
    seq: int  # numbers the session's tasks, so a late answer is never taken for a newer task's
    message: Any  # for the session's handler


@dataclass(frozen=True)
class SessionReply:
    """The handler's answer to task ``seq``: its ``reply``, or, when it raised on the node, ``error``."""

    seq: int
    reply: Any = None
    error: str | None = None  # "<exception type>: <message>"

    def __post_init__(self) -> None:
        if self.error is not None and self.reply is not None:
            raise ValueError("a session reply holds either a reply or an error, not both")

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class SessionStopped:
    """The session's run ended (its worker died, or it was closed): no more replies will come."""


SessionAnswer = SessionReply | SessionStopped


class _MailboxActor:
    def __init__(self) -> None:
        self._tasks: asyncio.Queue[Any] = asyncio.Queue()
        self._answers: asyncio.Queue[Any] = asyncio.Queue()

    async def put_task(self, task: SessionTask | None) -> None:
        self._tasks.put_nowait(task)

    async def next_task(self) -> SessionTask | None:
        return await self._tasks.get()

    async def put_answer(self, answer: SessionAnswer) -> None:
        self._answers.put_nowait(answer)

    async def next_answer(self, timeout_s: float | None) -> tuple[bool, SessionAnswer | None]:
        try:
            if timeout_s is not None and timeout_s <= 0:  # wait_for(..., 0) would cancel even a ready get
                return True, self._answers.get_nowait()
            # a timed-out get is cancelled before it takes anything: no answer is lost
            return True, await asyncio.wait_for(self._answers.get(), timeout_s)
        except (TimeoutError, asyncio.QueueEmpty):
            return False, None


@functools.cache
def _actor_class() -> Any:
    import ray

    return ray.remote(num_cpus=0)(_MailboxActor)  # made once, not exported again for every session


class Mailbox:
    """The handle: it travels to the Train worker in the loop's config (an actor handle pickles)."""

    def __init__(self) -> None:
        self._actor = _actor_class().remote()

    def put_task(self, task: SessionTask | None) -> None:
        import ray

        ray.get(self._actor.put_task.remote(task))

    def next_task(self) -> SessionTask | None:
        """The worker's side: blocks until the owner hands it a task (None: stop)."""
        import ray

        return ray.get(self._actor.next_task.remote())

    def put_answer(self, answer: SessionAnswer) -> None:
        import ray

        ray.get(self._actor.put_answer.remote(answer))

    def get_answer(self, block: bool = True, timeout: float | None = None) -> SessionAnswer:
        """The owner's side, shaped like ``queue.Queue.get``: raises :class:`queue.Empty` after ``timeout``."""
        import ray

        found, answer = ray.get(self._actor.next_answer.remote(timeout if block else 0))
        if not found:
            raise queue.Empty
        return answer

    def close(self) -> None:
        import ray

        if ray.is_initialized():  # after ray.shutdown() the actor is gone with the cluster
            ray.kill(self._actor)
