"""Per-caller request rate limits: one token bucket per bearer token. Pure: no Ray, no clock.

A caller may send ``burst`` requests at once, then ``rate`` per second on average. A refused request
learns how long until its next one would pass (the retry hint the Gateway sends back). Buckets of
callers not seen for a while are dropped, so memory stays bounded however many tokens exist.

Example:
    >>> limits = RateLimiter(rate=1.0, burst=2)
    >>> [limits.take("alice", now=0.0) for _ in range(3)]
    [None, None, 1.0]
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, *, rate: float, burst: int, max_callers: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst, self.max_callers = rate, float(burst), max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller → (tokens, at)

    def take(self, caller: str, now: float, cost: float = 1.0) -> float | None:
        """Spend ``cost`` requests of ``caller``'s budget (all or none): None if allowed, else seconds
        until they would be. A cost above the burst is never allowed: the caller must check first."""
        tokens, at = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        retry_after = None if tokens >= cost else (cost - tokens) / self.rate
        if retry_after is None:
            tokens -= cost
        self._buckets[caller] = (tokens, now)  # most recent last: the oldest go first when full
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)  # a forgotten caller comes back with a full bucket
        return retry_after
