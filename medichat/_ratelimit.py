"""
Token buckets read off a clock: the rate limits of STOMP SENDs and message POSTs.
"""

from __future__ import annotations

from collections import deque


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

    def wait(self, now: float) -> float | None:
        """
        What L{take} would answer at C{now}, without taking anything: L{None} if a token
        is there, else the seconds until one is.
        """
        tokens = min(self._burst, self._tokens + max(0.0, now - self._stamp) * self._rate)
        if tokens < 1.0:
            return (1.0 - tokens) / self._rate
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

    @classmethod
    def per_second(cls, rate: float, burst: float) -> TokenBuckets:
        """
        Buckets of C{burst} tokens refilled at C{rate} a second (the per-user limits of
        STOMP frames).

        @param rate: tokens per second on average (positive).
        @param burst: tokens in one burst; rounded, at least one.
        """
        capacity = max(1, round(burst))
        return cls(capacity, capacity / rate)

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

    def wait(self, key: str, now: float) -> float | None:
        """
        What L{take} would answer for C{key} at C{now}, without taking anything.
        """
        bucket = self._buckets.get(key)
        return None if bucket is None else bucket.wait(now)

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.full(now):
                del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]


class SlidingWindowLimiter:
    """
    Counts events per key over a sliding window, in bounded memory.

    Only the last C{limit} events of each key are kept, which is all it takes to know when
    the window frees up; at most C{max_keys} keys are tracked, dropping idle ones first and
    then the oldest.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        """
        @param limit: events allowed per key within C{window}.
        @param window: the window in seconds.
        @param max_keys: keys tracked at most.
        """
        if limit < 1 or window <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float | None:
        """
        Seconds until C{key} may try again, or L{None} if it may now.
        """
        events = self._recent(key, now)
        if events is None or len(events) < self.limit:
            return None
        return events[0] + self.window - now

    def hit(self, key: str, now: float) -> None:
        """
        Count one event of C{key} at C{now}.
        """
        events = self._recent(key, now)
        if events is not None:
            events.append(now)
            return
        self._events[key] = deque([now], maxlen=self.limit)
        if len(self._events) > self._max_keys:
            self._prune(now)

    def newest(self, key: str) -> float | None:
        """
        When C{key}'s latest counted event happened, or L{None} if none is kept.
        """
        events = self._events.get(key)
        return events[-1] if events else None

    def reset(self, key: str) -> None:
        """
        Forget C{key}'s events.
        """
        self._events.pop(key, None)

    def forgive(self, key: str, at: float) -> None:
        """
        Take back one event of C{key} counted at C{at}, if it is still counted.
        """
        events = self._events.get(key)
        if events is None:
            return
        try:
            events.remove(at)
        except ValueError:
            return
        if not events:
            del self._events[key]

    def __len__(self) -> int:
        """The number of keys tracked."""
        return len(self._events)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for key in [k for k, events in self._events.items() if events[-1] <= horizon]:
            del self._events[key]
        # Dicts keep insertion order, so the first keys are the longest tracked.
        while len(self._events) > self._max_keys:
            del self._events[next(iter(self._events))]
