"""
Connections that an C{ERROR} ended, held open for a while before they are closed.

When a session fails (a malformed or forbidden frame, bad credentials, a limit) it sends
C{ERROR} and ends at once: it leaves the registry, its subscriptions and presence go.
Its connection, though, stays open for C{--error-close-delay} seconds (1 by default),
reading nothing, before the carrier closes it.  A client that keeps misbehaving and
reconnecting at once (benchmarks/abuse.py: about 140 sessions a second from one user,
each opened, refused and closed) can then cycle no faster than its connections allow,
instead of costing the server a handshake and a session for each; a well-behaved client
that got an C{ERROR} waits a second more for the close.  At shutdown every held
connection is closed at once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Lingering"]


class Lingering:
    """
    The connections being held before their close, by key (the carrier).

    @ivar delay: seconds each is held; 0 holds none.
    """

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self._clock = clock
        self.delay = delay
        self._held: dict[object, tuple[IDelayedCall, Callable[[], None]]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: object, close: Callable[[], None]) -> bool:
        """
        Call C{close} after L{delay} seconds, unless L{forget} or L{close_all} comes
        first.  The caller stops reading the connection.

        @return: C{False} if nothing is held (no delay, or C{key} is held already):
            the caller closes now.
        """
        if self.delay <= 0 or key in self._held:
            return False
        self._held[key] = (self._clock.callLater(self.delay, self._due, key), close)
        return True

    def _due(self, key: object) -> None:
        entry = self._held.pop(key, None)
        if entry is not None:
            entry[1]()

    def forget(self, key: object) -> None:
        """C{key}'s connection is closing or gone: hold it no longer."""
        entry = self._held.pop(key, None)
        if entry is not None and entry[0].active():
            entry[0].cancel()

    def close_all(self) -> None:
        """Close every held connection now (at shutdown)."""
        for key in list(self._held):
            call, close = self._held.pop(key)
            if call.active():
                call.cancel()
            close()
