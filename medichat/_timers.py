"""
A coarse timer wheel: many timers, one reactor call.

Thousands of STOMP sessions each need heart-beat, read-timeout, CONNECT-timeout and
credential-expiry timers.  One C{callLater} per timer per connection costs a heap entry,
a L{DelayedCall} object and a reschedule on every byte.  Instead timers are dropped into
buckets of C{resolution} seconds and a single delayed call fires for the earliest bucket.
Callers check lazily whether their deadline really passed (the read timer is not moved on
every byte; it looks at the time of the last read when it fires).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()


class Timer:
    """
    A handle on one scheduled call; L{cancel} makes it a no-op.
    """

    __slots__ = ("_fn", "when")

    def __init__(self, fn: Callable[[], object] | None, when: float) -> None:
        self._fn = fn
        self.when = when

    def cancel(self) -> None:
        """
        Do not call the function (idempotent).
        """
        self._fn = None

    @property
    def active(self) -> bool:
        """C{True} until it has fired or been cancelled."""
        return self._fn is not None


class TimerWheel:
    """
    Schedules calls at a coarse resolution with one delayed call on the reactor.

    @param clock: the reactor's time.
    @param resolution: bucket width in seconds; a timer fires at most this late.
    """

    def __init__(self, clock: IReactorTime, resolution: float = 0.25) -> None:
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, list[Timer]] = {}
        self._keys: list[int] = []
        self._call: IDelayedCall | None = None
        self._call_key: int | None = None

    @property
    def resolution(self) -> float:
        """The bucket width in seconds."""
        return self._resolution

    def call_at(self, when: float, fn: Callable[[], object]) -> Timer:
        """
        Call C{fn} once, no earlier than C{when} (reactor seconds).
        """
        timer = Timer(fn, when)
        key = -int(-when // self._resolution)  # ceiling: never early
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [timer]
            heapq.heappush(self._keys, key)
            if self._call_key is None or key < self._call_key:
                self._arm(key)
        else:
            bucket.append(timer)
        return timer

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        """
        Call C{fn} once, no earlier than C{delay} seconds from now.
        """
        return self.call_at(self._clock.seconds() + delay, fn)

    def stop(self) -> None:
        """
        Drop every timer and the reactor call.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_key = None
        self._buckets.clear()
        self._keys.clear()

    def _arm(self, key: int) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        delay = max(0.0, key * self._resolution - self._clock.seconds())
        self._call_key = key
        self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._call_key = None
        now = self._clock.seconds()
        limit = now / self._resolution
        while self._keys and self._keys[0] <= limit + 1e-9:
            key = heapq.heappop(self._keys)
            for timer in self._buckets.pop(key, ()):
                fn = timer._fn
                if fn is None:
                    continue
                timer._fn = None
                try:
                    fn()
                except Exception:
                    _log.failure("timer callback failed")
        if self._keys:
            self._arm(self._keys[0])
