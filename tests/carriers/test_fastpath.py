"""
Tests for the carriers' fast paths, over real loopback sockets:
L{medichat.carriers._fastpath.send_now}
keeps every byte in order when the kernel's buffer fills, and the WebSocket carrier's
heart-beat shortcut notes life without disturbing Autobahn's frame state.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from medichat.carriers._fastpath import send_now, socket_of
from tests._server import in_thread, start_server

CHUNKS = 2000
CHUNK = 4096


def _chunk(i: int) -> bytes:
    return (b"%08d" % i) * (CHUNK // 8)


class _Writer(Protocol):
    """Writes every chunk at once on connection, through send_now."""

    def connectionMade(self) -> None:
        sock = socket_of(self.transport)
        assert sock is not None
        for i in range(CHUNKS):
            send_now(self.transport, sock, _chunk(i))
        self.transport.loseConnection()


class _Reader(Protocol):
    """Collects everything until the connection closes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(b"".join(self.received))


class SendNowTests(TestCase):
    """
    Direct sends fall back to Twisted's buffer and keep order.
    """

    timeout = 30

    @inlineCallbacks
    def test_order_under_backpressure(self) -> Any:
        """8 MiB written at once arrive whole and in order."""
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(_Writer))
        self.addCleanup(port.stopListening)
        reader = _Reader()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: reader))
        data = yield reader.done
        self.assertEqual(len(data), CHUNKS * CHUNK)
        self.assertEqual(data, b"".join(_chunk(i) for i in range(CHUNKS)))

    def test_other_transports_write(self) -> None:
        """A transport that is not plain TCP (TLS, test doubles) gets write()."""
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        self.assertIsNone(socket_of(transport))
        send_now(transport, None, b"abc")
        self.assertEqual(transport.value(), b"abc")


class HeartbeatShortcutTests(TestCase):
    """
    A client heart-beat frame is consumed by the WebSocket carrier itself.
    """

    timeout = 30

    @inlineCallbacks
    def test_heartbeat_then_frames(self) -> Any:
        """Heart-beats mark life; frames before and after them still work."""
        server = yield start_server(self)
        import jwt
        import websocket

        token = jwt.encode({"sub": "u1"}, server.secret, algorithm="HS256")
        ws = yield in_thread(websocket.create_connection, server.ws_url, timeout=5,
                             header=[f"Authorization: Bearer {token}"])
        self.addCleanup(ws.close)
        yield in_thread(ws.send, "CONNECT\naccept-version:1.2\nheart-beat:1000,0\n\n\x00")
        connected = yield in_thread(ws.recv)
        self.assertTrue(connected.startswith("CONNECTED\n"))
        (session,) = server.service.registry.sessions_of("u1")
        before = session._last_read
        protocol = session._transport
        wire = protocol.trafficStats.incomingOctetsWireLevel
        yield deferLater(reactor, 0.05, lambda: None)
        yield in_thread(ws.send, "\n")
        for _ in range(200):
            if session._last_read > before:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertGreater(session._last_read, before)
        # Consumed by the carrier: Autobahn's frame machinery never saw it.
        self.assertEqual(protocol.trafficStats.incomingOctetsWireLevel, wire)
        yield in_thread(ws.send, "SUBSCRIBE\nid:1\ndestination:/v1/topic/online-employees\n"
                        "receipt:r\n\n\x00")
        message = yield in_thread(ws.recv)
        receipt = yield in_thread(ws.recv)
        self.assertTrue(message.startswith("MESSAGE\n"), message)
        self.assertTrue(receipt.startswith("RECEIPT\nreceipt-id:r"), receipt)
