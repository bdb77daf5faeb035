"""
End to end, over real loopback sockets: the carriers' fast paths keep every byte in order
when the kernel's buffer fills, the heart-beat shortcut notes life without disturbing
Autobahn, liveness pings are answered past it too, the WebSocket close handshake ends with
an orderly TCP close (FIN, not RST), and STOMP/TCP connections use keepalive.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import jwt
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from medichat.carriers._fastpath import FastPaths, send_now, socket_of
from tests._server import in_thread, start_server

CHUNKS = 2000
CHUNK = 4096


def _chunk(i: int) -> bytes:
    return (b"%08d" % i) * (CHUNK // 8)


class _Writer(Protocol):
    """Writes every chunk at once on connection, through send_now."""

    def connectionMade(self) -> None:
        sock = socket_of(self.transport, FastPaths.probe())
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


def _connected_ws(server: Any, user: str, heart_beat: str = "1000,0") -> Any:
    import websocket

    token = jwt.encode({"sub": user}, server.secret, algorithm="HS256")
    ws = websocket.create_connection(server.ws_url, timeout=5,
                                     header=[f"Authorization: Bearer {token}"])
    ws.send(f"CONNECT\naccept-version:1.2\nheart-beat:{heart_beat}\n\n\x00")
    connected = ws.recv()
    assert connected.startswith("CONNECTED\n"), connected
    return ws


@inlineCallbacks
def _still_serves(test: TestCase, ws: Any) -> Any:
    """The session still answers: a SUBSCRIBE gets its first MESSAGE and its RECEIPT."""
    yield in_thread(ws.send, "SUBSCRIBE\nid:1\ndestination:/v1/topic/online-employees\n"
                    "receipt:r\n\n\x00")
    message = yield in_thread(ws.recv)
    receipt = yield in_thread(ws.recv)
    test.assertTrue(message.startswith("MESSAGE\n"), message)
    test.assertTrue(receipt.startswith("RECEIPT\nreceipt-id:r"), receipt)


class HeartbeatShortcutTests(TestCase):
    """
    A client heart-beat frame is consumed by the WebSocket carrier itself.
    """

    timeout = 30

    @inlineCallbacks
    def test_heartbeat_then_frames(self) -> Any:
        """Heart-beats mark life; frames before and after them still work."""
        server = yield start_server(self)
        ws = yield in_thread(_connected_ws, server, "u1")
        self.addCleanup(in_thread, ws.close)
        (session,) = server.service.registry.sessions_of("u1")
        before = session._last_read
        protocol = session._carrier
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
        yield _still_serves(self, ws)


def _disconnect_and_close(server: Any) -> tuple[int, bytes]:
    """
    DISCONNECT, read the RECEIPT and the server's close frame, answer it, and return the
    close code and what the socket reads next (C{b""} for an orderly close; a reset
    raises).
    """
    import websocket

    ws = _connected_ws(server, "u2")
    try:
        ws.send("DISCONNECT\nreceipt:bye\n\n\x00")
        receipt = ws.recv()
        assert receipt.startswith("RECEIPT\nreceipt-id:bye"), receipt
        # websocket-client answers a close frame by itself as it returns it.
        opcode, frame = ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE, opcode
        (code,) = struct.unpack("!H", frame.data[:2])
        return code, ws.sock.recv(1)
    finally:
        ws.shutdown()


def _answer_pings(ws: Any, count: int) -> list[bytes]:
    """Read C{count} pings (websocket-client answers each as it reads it); their payloads."""
    import websocket

    payloads = []
    while len(payloads) < count:
        opcode, frame = ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_PING, (opcode, frame.data)
        payloads.append(frame.data)
    return payloads


class LivenessPingTests(TestCase):
    """
    A session without heart-beats is pinged; the client's pongs keep it, taken by the
    carrier itself.
    """

    timeout = 30

    @inlineCallbacks
    def test_pings_answered(self) -> Any:
        """Three pings, each answered; Autobahn's frame machinery saw none of the pongs."""
        server = yield start_server(self, "--ws-ping-interval", "0.5")
        ws = yield in_thread(_connected_ws, server, "u3", "0,0")
        self.addCleanup(in_thread, ws.close)
        (session,) = server.service.registry.sessions_of("u3")
        protocol = session._carrier
        wire = protocol.trafficStats.incomingOctetsWireLevel
        payloads = yield in_thread(_answer_pings, ws, 3)
        self.assertEqual(payloads, [b"medichat"] * 3)
        for _ in range(200):
            if not protocol._ping_unanswered:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(protocol._ping_unanswered)
        self.assertEqual(protocol.trafficStats.incomingOctetsWireLevel, wire)
        yield _still_serves(self, ws)
        self.assertEqual(server.service.registry.sessions_of("u3"), {session})


class CleanCloseTests(TestCase):
    """
    The WebSocket close handshake completes cleanly over a real socket.
    """

    timeout = 30

    @inlineCallbacks
    def test_disconnect_closes_in_order(self) -> Any:
        """After DISCONNECT and the close handshake the server closes TCP with a FIN."""
        server = yield start_server(self)
        code, after = yield in_thread(_disconnect_and_close, server)
        self.assertEqual((code, after), (1000, b""))


class KeepAliveTests(TestCase):
    """
    A real C{--stomp-listen} connection has TCP keepalive on, timed by C{--ws-ping-interval}.
    """

    timeout = 30

    @inlineCallbacks
    def test_stomp_listen_keepalive(self) -> Any:
        """The server's socket of an accepted STOMP/TCP connection probes after 20 s idle."""
        server = yield start_server(self, "--ws-ping-interval", "20")
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", server.stomp_port).connect(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(client.transport.loseConnection)
        (capped,) = [listener._factory for listener in server.service.listeners
                     if listener._what == "STOMP/TCP"]
        while not capped.protocols:
            yield deferLater(reactor, 0.01, lambda: None)
        (connection,) = capped.protocols
        sock = connection.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 20)
