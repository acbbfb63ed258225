"""When to retry a call, how long to wait first, and how much of the caller's deadline is left.

Shared by the sync and async clients, which only do the I/O and the sleeping. Pure: the clock and the
randomness are injected, so the policy is tested without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.client.errors import EdgefleetClientError, Unavailable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, for ``UNAVAILABLE`` only.

    Attributes:
        max_retries: Attempts after the first one (0 disables retrying).
        backoff_base_s: Backoff cap before the first retry, in s; it doubles per retry.
        backoff_max_s: Upper bound of the backoff cap, in s.
    """

    max_retries: int = 3
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not self.backoff_base_s >= 0:
            raise ValueError(f"backoff_base_s must be >= 0, got {self.backoff_base_s!r}")
        if not self.backoff_max_s >= self.backoff_base_s:
            raise ValueError(f"backoff_max_s must be >= backoff_base_s, got {self.backoff_max_s!r}")

    def backoff_s(self, retry: int, rng: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``retry`` (from 0), given ``rng()`` in [0, 1).

        "Equal jitter": half of the cap is fixed, so a retry always waits, and half is random, so many
        clients cut off by the same outage do not come back in lockstep.
        """
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        return cap / 2 + rng() * cap / 2


class Attempts:
    """The retry state of one call: started when the call starts, consulted after each failed attempt.

    Args:
        policy: The client's retry policy.
        timeout_s: The caller's overall budget in s, or None for no deadline.
        clock: Monotonic seconds; injected for tests.
        rng: Uniform [0, 1); injected for tests.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        timeout_s: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._deadline = None if timeout_s is None else clock() + timeout_s
        self.retries = 0

    def remaining_s(self) -> float | None:
        """Seconds left of the overall budget (never negative), or None without a deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock())

    def retry_delay_s(self, error: EdgefleetClientError, *, chunks_received: int = 0) -> float | None:
        """Decide what to do after a failed attempt.

        Args:
            error: The attempt's typed error.
            chunks_received: For a stream, how many chunks the caller already got from this attempt.

        Returns:
            Seconds to sleep before the next attempt, or None to give up and raise ``error`` (then a
            note on ``error`` says why it was not retried, if it was retryable at all).
        """
        if not isinstance(error, Unavailable):
            return None  # the other statuses would fail the same way again, or are the caller's to handle
        if chunks_received:
            # The caller already holds text from this attempt; a new one would generate it again.
            error.add_note(f"not retried: the stream broke after {chunks_received} chunk(s) had been received")
            return None
        if self.retries >= self._policy.max_retries:
            error.add_note(f"gave up after {self.retries + 1} attempt(s)")
            return None
        delay = self._policy.backoff_s(self.retries, self._rng)
        remaining = self.remaining_s()
        if remaining is not None and delay >= remaining:
            # Sleeping would use up the budget; the outage is more useful to report than a timeout.
            error.add_note(f"gave up after {self.retries + 1} attempt(s): the deadline leaves no time for another")
            return None
        self.retries += 1
        return delay
