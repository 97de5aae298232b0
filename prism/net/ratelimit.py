"""Per-key token buckets: each hotkey may burst ``burst`` requests, refilled at ``rate_per_s``."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucketLimiter:
    """A token bucket per key. Not thread-safe: the axon uses it from its event loop only."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full_buckets(now)
        return allowed

    def retry_after_s(self, key: str) -> float:
        tokens, _ = self._buckets.get(key, (float(self.burst), 0.0))
        return max(0.0, (1.0 - tokens) / self.rate_per_s)

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket that has refilled completely carries no state worth keeping.
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate_per_s >= self.burst:
                del self._buckets[key]
