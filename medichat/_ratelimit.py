"""
Token buckets read off a clock: the rate limits of STOMP SENDs and message POSTs.
"""

from __future__ import annotations


class TokenBucket:
    """
    C{burst} tokens at most, refilled at C{rate} tokens a second.
    """

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> float | None:
        """
        Take a token.

        @return: L{None} if one was taken, else the seconds until one is available.
        """
        tokens = min(self._burst, self._tokens + max(0.0, now - self._stamp) * self._rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return (1.0 - tokens) / self._rate
        self._tokens = tokens - 1.0
        return None

    def full(self, now: float) -> bool:
        """C{True} if the bucket would be full at C{now} (nothing to remember)."""
        return self._tokens + (now - self._stamp) * self._rate >= self._burst


class TokenBuckets:
    """
    A token bucket per key: C{capacity} requests at once, refilled at C{capacity} per
    C{window} seconds.  Memory stays bounded: full buckets are forgotten when there are
    more than C{max_keys}.
    """

    def __init__(self, capacity: int, window: float, max_keys: int = 10_000) -> None:
        self.capacity = capacity
        self.window = window
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> float | None:
        """
        Take a token for C{key}.

        @return: L{None} if one was taken, else the seconds until one is available.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(
                self.capacity / self.window, self.capacity, now
            )
        wait = bucket.take(now)
        if wait is None and len(self._buckets) > self.max_keys:
            self._prune(now)
        return wait

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.full(now):
                del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
