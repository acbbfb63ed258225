"""The coordinator's clients: one session per edge node, started on demand, asked all at once.

A session is what ``start(node)`` returns (by default a Ray Train session on the node,
:func:`~edgefleet.federation.run_setup.ray_sessions`): ``call(request, timeout_s) -> reply``,
``close(timeout_s)`` and, where it can die, ``alive``. A session whose Train run died (worker
killed, node lost) is started anew the next time its client is asked. A reply is checked against
its request's type (:data:`~edgefleet.federation.messages.REPLY_TO`): a client that answers with
another phase's reply has failed that request, like one that never answered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edgefleet.federation.messages import Request, WrongReply, expect_reply
from edgefleet.train.jobs import StepFailed


class ClientPool:
    def __init__(self, start: Callable[[str], Any]) -> None:
        self._start = start
        self._sessions: dict[str, Any] = {}
        self._unanswered: set[str] = set()  # sessions started that have not answered yet: maybe still starting

    def session(self, node: str) -> Any:
        """``node``'s session, started if it has none or its run died."""
        if not self._ready(node):
            if node in self._sessions:
                self._sessions.pop(node).close(timeout_s=0)  # its mailbox goes with it
            self._sessions[node] = self._start(node)
            self._unanswered.add(node)
        return self._sessions[node]

    def _ready(self, node: str) -> bool:
        session = self._sessions.get(node)
        return session is not None and getattr(session, "alive", True)

    def starting(self, nodes: Sequence[str]) -> bool:
        """Whether asking ``nodes`` starts a session, or waits on one that has never answered."""
        return any(n in self._unanswered or not self._ready(n) for n in nodes)

    def had_their_start(self, nodes: Sequence[str]) -> None:
        """``nodes`` were given their start-up time: one still silent is slow or stuck, not starting."""
        self._unanswered.difference_update(nodes)

    def ask(
        self, clients: Sequence[str], request: Callable[[str], Request], timeout_s: float
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Send each client its request at once; (replies, client → why no reply) by ``timeout_s``."""

        def one(c: str) -> Any:
            sent = request(c)
            reply = self.session(c).call(sent, timeout_s=timeout_s)
            self._unanswered.discard(c)  # its session is up
            return expect_reply(sent, reply)

        replies, failed = {}, {}
        with ThreadPoolExecutor(max(1, len(clients))) as pool:
            futures = {c: pool.submit(one, c) for c in clients}
            for c, fut in futures.items():
                try:
                    replies[c] = fut.result()
                except TimeoutError:
                    failed[c] = f"no answer within {timeout_s:.0f} s"
                except (StepFailed, WrongReply) as exc:  # the step raised on the node, or answered off-protocol
                    failed[c] = str(exc)
                except Exception as exc:  # noqa: BLE001 - a lost client is recorded, not fatal
                    failed[c] = f"{type(exc).__name__}: {exc}"
        return replies, failed

    def close(self) -> None:
        for s in self._sessions.values():
            s.close(timeout_s=5)
        self._sessions.clear()
        self._unanswered.clear()
