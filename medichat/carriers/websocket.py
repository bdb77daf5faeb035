"""
STOMP carried by WebSocket (Autobahn), at C{{base-path}/v1/chat}.

The handshake picks the highest STOMP sub-protocol the client offers (C{v12.stomp},
C{v11.stomp}, C{v10.stomp}; a client that offers none still gets STOMP), refuses foreign
C{Origin}s with 403, and collects credentials (a bearer header or the session cookie) for
the session to check at C{CONNECT}.  Inbound text and binary messages are fed to the
session as bytes, so several frames in one message and one frame over several both work;
each outbound frame is one text message.
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from zope.interface import implementer

from medichat.auth.credentials import handshake_credentials
from medichat.carriers._budget import DEFAULT_MAX_BUFFER, WriteBudget
from medichat.carriers._fastpath import send_now, socket_of
from medichat.http.origins import OriginPolicy
from medichat.interfaces import IFrameTransport
from medichat.stomp.session import StompServices, StompSession

SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


def _frame_header(length: int) -> bytes:
    # An unmasked, final, text frame (RFC 6455 section 5.2).
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


@implementer(IFrameTransport)
class StompWebSocketProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection carrying one L{StompSession}.
    """

    factory: StompWebSocketFactory
    transport: Any
    _session: StompSession | None = None
    _budget: WriteBudget | None = None
    _credentials: object | None = None
    _socket: Any = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        factory = self.factory
        headers = request.headers
        secure = ISSLTransport.providedBy(self.transport)
        if not factory.origins.is_allowed(
            headers.get("origin"), scheme="https" if secure else "http",
            host_header=headers.get("host"),
        ):
            factory._log.info(
                "refused WebSocket from {peer}: origin {origin} not allowed",
                peer=request.peer,
                origin=headers.get("origin"),
            )
            raise ConnectionDeny(403, "origin not allowed")
        self._credentials = handshake_credentials(headers)
        for protocol in SUBPROTOCOLS:
            if protocol in request.protocols:
                return protocol
        return None

    def onOpen(self) -> None:
        self._budget = WriteBudget(self.transport, self.factory.max_buffer)
        self._socket = socket_of(self.transport)
        credentials, self._credentials = self._credentials, None
        # Autobahn keeps the raw handshake; an idle session need not.
        self.http_request_data = b""
        self.http_headers = {}
        self._session = StompSession(
            self, self.factory.services, credentials=credentials, peer=self.peer or ""
        )
        self._session.connection_made()

    def dataReceived(self, data: bytes) -> None:
        # A client heart-beat is a one-byte masked frame holding "\n": 7 bytes on the wire
        # (flags and opcode, mask bit and length 1, a 4-byte mask, the masked byte).
        # At thousands of idle sessions these are most of what arrives, and Autobahn's
        # general frame machinery costs several times what the heart-beat is worth; when
        # no frame is in progress, recognise it here and only note the sign of life.
        if (
            len(data) == 7
            and data[1] == 0x81
            and data[0] in (0x81, 0x82)
            and data[6] ^ data[2] == 0x0A
            and self.state == WebSocketServerProtocol.STATE_OPEN
            and self.current_frame is None
            and not self.inside_message
            and not self.data
            and self._session is not None
        ):
            self._session.heartbeat_received()
            return
        super().dataReceived(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._session is not None:
            try:
                self._session.data_received(payload)
            except Exception:
                self.factory._log.failure("STOMP session failed")
                self.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.connection_lost(reason or f"WebSocket closed ({code})")

    # IFrameTransport

    def send(self, data: bytes) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        # Frame the message ourselves: no compression is negotiated, so a text frame is a
        # header and the payload, and this is the hot path of every delivery.
        size = len(data)
        send_now(self.transport, self._socket, _frame_header(size) + data)
        budget = self._budget
        if budget is not None:
            budget.written(size)

    def close(self, code: int, reason: str) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            # sendClose() only lets applications use 1000 and 3000-4999; the protocol
            # codes (1001 going away, 1002, 1008, 1009, 1011) say more, so frame it directly.
            self.sendCloseFrame(code, reason.encode("utf-8")[:120], isReply=False)

    def abort(self) -> None:
        self.dropConnection(abort=True)


class StompWebSocketFactory(WebSocketServerFactory):
    """
    Makes L{StompWebSocketProtocol}s that share one set of L{StompServices}.

    @param max_message: largest WebSocket message accepted (the STOMP parser enforces the
        frame limits; a message may hold several frames).
    """

    protocol = StompWebSocketProtocol  # type: ignore[assignment]
    _log = Logger()

    def __init__(
        self,
        services: StompServices,
        origins: OriginPolicy,
        *,
        max_message: int = 1024 * 1024,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        server: str = "medichat",
        **kwargs: Any,
    ) -> None:
        super().__init__(server=server, **kwargs)
        self.services = services
        self.origins = origins
        self.max_buffer = max_buffer
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            # Compression costs CPU per delivery and lets every frame be re-framed; decline.
            perMessageCompressionAccept=lambda offers: None,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
        )

    def stop_timers(self) -> None:
        """
        Cancel Autobahn's pending handshake timers, so that a stopped server leaves nothing
        scheduled on the reactor.
        """
        # Autobahn batches its timers in txaio; the buckets are only reachable privately.
        buckets = getattr(getattr(self, "_batched_timer", None), "_buckets", None)
        if not buckets:
            return
        for delayed_call, _calls in list(buckets.values()):
            if delayed_call.active():
                delayed_call.cancel()
        buckets.clear()
