"""
STOMP carried by a plain TCP stream (C{--stomp-listen tcp:61613}), for backend services and
command-line STOMP clients.  Credentials come in the C{CONNECT} frame.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from medichat.carriers._budget import DEFAULT_MAX_BUFFER, WriteBudget
from medichat.carriers._fastpath import FastPaths, send_now, socket_of
from medichat.interfaces import ICarrier
from medichat.stomp.session import StompServices, StompSession


@implementer(ICarrier)
class StompTCPProtocol(Protocol):
    """
    One TCP connection carrying one L{StompSession}.
    """

    factory: StompTCPFactory
    transport: Any
    _session: StompSession | None = None
    _budget: WriteBudget | None = None
    _socket: Any = None

    def connectionMade(self) -> None:
        self._budget = WriteBudget(self.transport, self.factory.max_buffer)
        self._socket = socket_of(self.transport, self.factory.fast_paths)
        peer = self.transport.getPeer()
        self._session = StompSession(self, self.factory.services, peer=_describe(peer))
        self._session.connection_made()

    def dataReceived(self, data: bytes) -> None:
        if self._session is not None:
            self._session.data_received(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.connection_lost(reason.getErrorMessage())

    # ICarrier

    def send(self, data: bytes) -> None:
        send_now(self.transport, self._socket, data)
        if self._budget is not None:
            self._budget.written(len(data))

    def close(self, code: int, reason: str) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()


class StompTCPFactory(Factory):
    """
    Makes L{StompTCPProtocol}s that share one set of L{StompServices}.

    @param fast_paths: C{False} to write only through C{transport.write}.

    @ivar fast_paths: the L{FastPaths} in use.
    """

    protocol = StompTCPProtocol  # type: ignore[assignment]

    def __init__(self, services: StompServices, max_buffer: int = DEFAULT_MAX_BUFFER,
                 *, fast_paths: bool = True) -> None:
        self.services = services
        self.max_buffer = max_buffer
        self.fast_paths = FastPaths.probe(fast_paths)


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
