"""
A cap on the connections one process holds open (C{--max-connections}).

Every listening factory is wrapped in a L{CappedFactory}; all of them share one
L{ConnectionCap}.  Each connection is counted from the moment it is accepted until it
closes, whatever protocol ends up speaking on it (an HTTP connection taken over by a
WebSocket stays counted).  Past the cap a new connection is closed at once: the factory
builds no protocol for it, which makes Twisted close the socket.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

__all__ = [
    "CappedFactory",
    "ConnectionCap",
    "CountedConnection",
    "default_max_connections",
    "raw_transport",
]

_DEFAULT_MAX = 20000
_RESERVED_FILES = 100


def default_max_connections(nofile: int | None = None) -> int:
    """
    The default C{--max-connections}: 100 below the open-file limit (room for the database,
    logs and the listening sockets), so that the cap, not the kernel, turns connections
    away; at most 20,000 (twice the 10,000 sessions the benchmarks hold), so that a huge or
    unlimited file limit does not mean no cap.

    @param nofile: the soft C{RLIMIT_NOFILE}; the process's own when L{None}.
    """
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile < 0:
        return _DEFAULT_MAX
    return max(1, min(_DEFAULT_MAX, nofile - _RESERVED_FILES))


class ConnectionCap:
    """
    How many connections are open, and whether one more may be.

    @ivar limit: the most connections open at once.
    @ivar open: how many are open now.
    @ivar refused_total: how many were refused since start (for metrics).
    """

    _log = Logger()

    def __init__(self, limit: int, clock: IReactorTime, log_interval: float = 60.0) -> None:
        """
        @param clock: dates the refusals, which are logged at most once per C{log_interval}
            seconds (a flood of them would otherwise flood the log).
        """
        self.limit = limit
        self.open = 0
        self._clock = clock
        self._log_interval = log_interval
        self._last_logged: float | None = None
        self._refused = 0
        self.refused_total = 0

    def admit(self, addr: IAddress | None) -> bool:
        """
        Whether a connection from C{addr} may be opened now; a refusal is counted and
        logged (with the count since the last report) at most once per interval.
        """
        if self.open < self.limit:
            return True
        self._refused += 1
        self.refused_total += 1
        now = self._clock.seconds()
        if self._last_logged is None or now - self._last_logged >= self._log_interval:
            self._log.warn(
                "{limit} connections open: refused {refused} new connection(s), the last "
                "from {peer}",
                limit=self.limit,
                refused=self._refused,
                peer=_describe(addr),
            )
            self._last_logged = now
            self._refused = 0
        return False


class CountedConnection(ProtocolWrapper):
    """
    One counted connection: the transport of the protocol it wraps.

    Autobahn's C{WebSocketResource} takes an HTTP connection over by replacing
    C{wrappedProtocol}; the factory hears of it, so that it can tell HTTP connections
    from those that no longer are.
    """

    factory: CappedFactory
    _wrapped: IProtocol | None = None

    @property  # type: ignore[override]
    def wrappedProtocol(self) -> IProtocol | None:
        """The protocol speaking on this connection."""
        return self._wrapped

    @wrappedProtocol.setter
    def wrappedProtocol(self, protocol: IProtocol | None) -> None:
        self._wrapped = protocol
        factory = getattr(self, "factory", None)
        if factory is not None and protocol is not None:
            factory.protocol_replaced(self)


class CappedFactory(WrappingFactory[CountedConnection]):
    """
    Wraps a listening factory so that its connections count against a L{ConnectionCap}.
    """

    protocol = CountedConnection
    protocols: dict[CountedConnection, int]
    # The wrapped factory already logs its starts and stops.
    noisy = False

    def __init__(self, wrapped: Any, cap: ConnectionCap) -> None:
        super().__init__(wrapped)
        self.cap = cap

    def buildProtocol(self, addr: IAddress | None) -> CountedConnection | None:  # type: ignore[override]
        if not self.cap.admit(addr):
            return None
        return super().buildProtocol(addr)

    def registerProtocol(self, p: CountedConnection) -> None:
        super().registerProtocol(p)
        self.cap.open += 1

    def unregisterProtocol(self, p: CountedConnection) -> None:
        super().unregisterProtocol(p)
        self.cap.open -= 1
        self.connection_closed(p)

    def protocol_replaced(self, connection: CountedConnection) -> None:
        """Called when another protocol takes C{connection} over."""

    def connection_closed(self, connection: CountedConnection) -> None:
        """Called when C{connection} has closed."""


def raw_transport(transport: Any) -> Any:
    """
    The transport under a L{CountedConnection} (which only relays writes to it), or
    C{transport} itself: the fast write path needs the real TCP connection.
    """
    if isinstance(transport, CountedConnection):
        return transport.transport
    return transport


def _describe(addr: IAddress | None) -> str:
    host = getattr(addr, "host", None)
    if host is None:
        return str(addr)
    return f"{host}:{getattr(addr, 'port', '?')}"
