"""
STOMP carried by a plain TCP stream (C{--stomp-listen tcp:61613}), for backend services and
command-line STOMP clients.  Credentials come in the C{CONNECT} frame.

Every connection uses TCP keepalive: a peer that vanished (a phone that lost its network, a
host that crashed) is noticed by the kernel even when its session negotiated no heart-beats.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from medichat._connections import raw_transport
from medichat.carriers._budget import DEFAULT_MAX_BUFFER, WriteBudget
from medichat.carriers._fastpath import FastPaths, send_now, socket_of
from medichat.interfaces import ICarrier
from medichat.stomp.session import StompServices, StompSession, is_error_close


@implementer(ICarrier)
class StompTCPProtocol(Protocol):
    """
    One TCP connection carrying one L{StompSession}.
    """

    factory: StompTCPFactory
    transport: Any
    carrier_kind = "tcp"
    _session: StompSession | None = None
    _budget: WriteBudget | None = None
    _socket: Any = None
    _raw: Any = None

    def connectionMade(self) -> None:
        keep_alive(self.transport, self.factory.keepalive)
        self._budget = WriteBudget(self.transport, self.factory.max_buffer)
        # The TCP connection under the connection counter, resolved once for every send.
        self._raw = raw_transport(self.transport)
        self._socket = socket_of(self._raw, self.factory.fast_paths)
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        self._session = StompSession(
            self, self.factory.services, peer=_describe(peer),
            address=None if host is None else str(host),
        )
        self._session.connection_made()

    def dataReceived(self, data: bytes) -> None:
        if self._session is not None:
            self._session.data_received(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.factory.services.lingering.forget(self)
        session, self._session = self._session, None
        if session is not None:
            overflowed = self._budget is not None and self._budget.overflowed
            session.connection_lost(reason.getErrorMessage(),
                                    "slow_consumer" if overflowed else "disconnect")

    # ICarrier

    def send(self, data: bytes) -> None:
        if send_now(self._raw, self._socket, data):
            return
        if self._budget is not None:
            self._budget.written(len(data))

    def close(self, code: int, reason: str) -> None:
        lingering = self.factory.services.lingering
        if is_error_close(code) and lingering.hold(self, self.transport.loseConnection):
            # The session ended on an ERROR: read nothing more until the close.
            self.transport.pauseProducing()
            return
        lingering.forget(self)
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()


class StompTCPFactory(Factory):
    """
    Makes L{StompTCPProtocol}s that share one set of L{StompServices}.

    @param fast_paths: C{False} to write only through C{transport.write}.
    @param keepalive: seconds of silence after which the kernel starts probing a
        connection (see L{keep_alive}); 0 leaves the system's default.

    @ivar fast_paths: the L{FastPaths} in use.
    """

    protocol = StompTCPProtocol  # type: ignore[assignment]

    def __init__(self, services: StompServices, max_buffer: int = DEFAULT_MAX_BUFFER,
                 *, fast_paths: bool = True, keepalive: float = 30.0) -> None:
        self.services = services
        self.max_buffer = max_buffer
        self.fast_paths = FastPaths.probe(fast_paths)
        self.keepalive = keepalive


#: Unanswered keepalive probes after which the kernel gives a connection up.
KEEPALIVE_PROBES = 3


def keep_alive(transport: Any, idle: float) -> bool:
    """
    Turn TCP keepalive on for C{transport} (C{ITCPTransport.setTcpKeepAlive}) and, where
    the platform allows, make the kernel probe after C{idle} seconds of silence, every
    C{idle / 3} seconds, and give up after L{KEEPALIVE_PROBES} unanswered probes: a dead
    peer is found within about twice C{idle} rather than the system's default two hours.

    @param idle: seconds; 0 keeps the system's timing.
    @return: C{False} if the transport has no keepalive (not TCP).
    """
    enable = getattr(transport, "setTcpKeepAlive", None)
    if enable is None:
        return False
    enable(True)
    if idle <= 0 or not hasattr(socket, "TCP_KEEPIDLE"):
        return True
    try:
        handle = transport.getHandle()
        seconds = max(1, int(idle))
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL,
                          max(1, seconds // KEEPALIVE_PROBES))
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except (AttributeError, OSError):
        # A transport with no socket handle (a test double): keepalive alone is on.
        pass
    return True


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
