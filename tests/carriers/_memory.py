"""
Test helpers: a STOMP client connected to a carrier in memory (L{twisted.test.iosim}), over
plain TCP or over WebSocket with a real Autobahn client protocol, on a memory clock.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from medichat._timers import TimerWheel
from medichat.carriers._fastpath import timers_on_wheel
from medichat.carriers.tcp import StompTCPFactory
from medichat.carriers.websocket import StompWebSocketFactory
from medichat.http.origins import OriginPolicy
from medichat.stomp.codec import SERVER_COMMANDS, Frame, FrameParser, Limits, encode_frame
from medichat.stomp.session import StompServices


class RecordingTransport(FakeTransport):
    """
    An iosim transport that remembers whether it was aborted (iosim treats an abort as an
    orderly close; a real TCP abort resets the connection) and whether reading is paused
    (iosim delivers regardless).
    """

    aborted = False
    keepalive = False
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def setTcpKeepAlive(self, enabled: int) -> None:
        self.keepalive = bool(enabled)


class _Inbox:
    """Frames and heart-beats that arrived at a client, parsed as a STOMP client would."""

    def __init__(self) -> None:
        self._parser = FrameParser(Limits(1 << 24, 1000, 1 << 20), commands=SERVER_COMMANDS)
        self.frames: list[Frame] = []
        self.heartbeats = 0

    def add(self, data: bytes) -> None:
        if data and not data.strip(b"\r\n"):
            self.heartbeats += data.count(b"\n")
        self.frames.extend(self._parser.feed(data))


class TCPClientProtocol(Protocol):
    """A raw STOMP client on the TCP carrier."""

    def __init__(self) -> None:
        self.inbox = _Inbox()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.inbox.add(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = reason


class WSClientProtocol(WebSocketClientProtocol):
    """A real Autobahn WebSocket client carrying STOMP, one frame per message or not."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox = _Inbox()
        self.opened = False
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self.answer_pings = True
        self.pings = 0
        self.pongs = 0

    def onOpen(self) -> None:
        self.opened = True

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        if self.answer_pings:
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.pongs += 1

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.inbox.add(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)


class MemoryConnection:
    """
    One client connected to a carrier's server protocol through an L{IOPump}.

    @ivar client: the client protocol (L{TCPClientProtocol} or L{WSClientProtocol}).
    @ivar server: the carrier's protocol.
    @ivar server_transport: the server side's L{RecordingTransport}.
    """

    def __init__(self, client: Any, server: Any, client_transport: RecordingTransport,
                 server_transport: RecordingTransport, pump: IOPump, websocket: bool) -> None:
        self.client = client
        self.server = server
        self.client_transport = client_transport
        self.server_transport = server_transport
        self.pump = pump
        self.websocket = websocket

    def message(self, data: bytes, binary: bool = False) -> None:
        """
        Send C{data} as one WebSocket message (text, or binary when it is not UTF-8), or
        as one TCP write, and deliver it.
        """
        if self.websocket:
            self.client.sendMessage(data, isBinary=binary)
        else:
            self.client.transport.write(data)
        self.pump.flush()

    def frame(self, command: str, headers: dict[str, str] | None = None,
              body: bytes = b"") -> None:
        """Send one STOMP frame as one message."""
        self.message(encode_frame(command, list((headers or {}).items()), body))

    def take(self) -> list[Frame]:
        """The frames received since the last call."""
        frames, self.client.inbox.frames = self.client.inbox.frames, []
        return frames

    @property
    def heartbeats(self) -> int:
        """Heart-beats (EOLs outside frames) received so far."""
        return int(self.client.inbox.heartbeats)

    @property
    def closed(self) -> bool:
        """Whether the connection is gone on the client's side."""
        if self.websocket:
            return self.client.close_info is not None
        return self.client.lost is not None


def _connect(server: Any, client: Any, clock: Any) -> tuple[RecordingTransport,
                                                             RecordingTransport, IOPump]:
    server_transport = RecordingTransport(
        server, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
    )
    client_transport = RecordingTransport(
        client, isServer=False, peerAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
    )
    pump = connect(server, server_transport, client, client_transport, clock=clock)
    return server_transport, client_transport, pump


def tcp_factory(services: StompServices, **kwargs: Any) -> StompTCPFactory:
    """The TCP carrier's factory."""
    return StompTCPFactory(services, **kwargs)


def connect_tcp(factory: StompTCPFactory) -> MemoryConnection:
    """A raw client connected to the TCP carrier."""
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    client = TCPClientProtocol()
    server_transport, client_transport, pump = _connect(server, client,
                                                        factory.services.clock)
    return MemoryConnection(client, server, client_transport, server_transport, pump, False)


def ws_factory(services: StompServices, **kwargs: Any) -> StompWebSocketFactory:
    """The WebSocket carrier's factory on the services' clock."""
    return StompWebSocketFactory(services, OriginPolicy([]), reactor=services.clock, **kwargs)


def connect_ws(factory: StompWebSocketFactory, headers: dict[str, str] | None = None,
               protocols: tuple[str, ...] = ("v12.stomp",)) -> MemoryConnection:
    """A real Autobahn client connected to the WebSocket carrier, handshake done."""
    clock = factory.services.clock
    client_factory = WebSocketClientFactory(
        "ws://localhost:8080/api/v1/chat", protocols=list(protocols), headers=headers or {},
        reactor=clock,
    )
    client_factory.protocol = WSClientProtocol
    # The client's handshake and close timers too run on the memory clock.
    timers_on_wheel(client_factory, TimerWheel(clock))
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
    server_transport, client_transport, pump = _connect(server, client, clock)
    assert client.opened, "WebSocket handshake did not complete"
    return MemoryConnection(client, server, client_transport, server_transport, pump, True)


def masked_frame(opcode: int, payload: bytes, fin: bool = True,
                 mask: bytes = b"\x12\x34\x56\x78") -> bytes:
    """One client-to-server WebSocket frame (masked, RFC 6455 section 5.2)."""
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes((first, 0x80 | size))
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


class RawWebSocket:
    """
    The WebSocket carrier's server protocol on a L{StringTransport} that never drains,
    driven by hand-made client frames: what the server writes stays countable.

    @ivar server: the carrier's protocol.
    @ivar transport: everything it wrote since the handshake (C{value()}).
    """

    def __init__(self, factory: StompWebSocketFactory) -> None:
        self.server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        )
        self.server.makeConnection(self.transport)
        key = base64.b64encode(b"0123456789abcdef")
        self.server.dataReceived(
            b"GET /api/v1/chat HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        )
        assert self.transport.value().startswith(b"HTTP/1.1 101"), self.transport.value()
        self.transport.clear()

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """Deliver one frame (1 text, 2 binary, 8 close, 9 ping) to the server."""
        self.server.dataReceived(masked_frame(opcode, payload, fin))

    @property
    def written(self) -> int:
        """Bytes the server wrote since the handshake (none was ever sent on)."""
        return len(self.transport.value())
