"""
Tests for the STOMP carriers (L{medichat.carriers.tcp}, L{medichat.carriers.websocket}) in
memory: each scenario is written once and run over TCP and over WebSocket (with a real
Autobahn client), the WebSocket one with its fast paths on, off, and falling back because
an attribute they need is missing.
"""

from __future__ import annotations

import json
import socket
import struct
from pprint import pformat
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket import protocol as autobahn_protocol
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from medichat._timers import TimerWheel
from medichat._writebatch import write_batch
from medichat.carriers import _fastpath
from medichat.carriers._fastpath import timers_on_wheel
from medichat.carriers.tcp import keep_alive
from medichat.carriers.websocket import PROBE
from medichat.pubsub.topics import HEARTBEAT_TOPIC, ONLINE_EMPLOYEES_TOPIC
from medichat.stomp.codec import Frame, encode_frame
from medichat.stomp.session import StompServices
from tests._stomp import make_services, mint
from tests.carriers._memory import (
    MemoryConnection,
    RawWebSocket,
    WSClientProtocol,
    connect_tcp,
    connect_ws,
    masked_frame,
    tcp_factory,
    ws_factory,
)
from tests.carriers._memory import _connect as open_connection

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
CONNECT_HEADERS = {"accept-version": "1.2", "host": "medichat", "heart-beat": "0,0"}


def _connect_frame(**headers: str) -> bytes:
    h = dict(CONNECT_HEADERS, Authorization=f"Bearer {mint()}")
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return encode_frame("CONNECT", list(h.items()))


class CarrierScenariosMixin:
    """
    What every carrier must do, whatever way the client cuts its bytes.
    """

    services: StompServices
    clock: MemoryReactorClock
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any

    def make_factory(self, services: StompServices, **kwargs: Any) -> Any:
        raise NotImplementedError

    def open(self, factory: Any) -> MemoryConnection:
        raise NotImplementedError

    def assert_closed_cleanly(self, connection: MemoryConnection, code: int) -> None:
        raise NotImplementedError

    def setUp(self) -> None:
        self.services = make_services()
        self.clock = self.services.clock  # type: ignore[assignment]
        self.factory = self.make_factory(self.services)

    def connected(self, **headers: str) -> MemoryConnection:
        connection = self.open(self.factory)
        connection.message(_connect_frame(**headers))
        (frame,) = connection.take()
        self.assertEqual(frame.command, "CONNECTED")
        return connection

    def test_subscribe_and_receive(self) -> None:
        """A client connects, subscribes with a receipt and receives a publication."""
        connection = self.connected()
        connection.frame("SUBSCRIBE", {"id": "s1", "destination": HEARTBEAT_TOPIC,
                                       "receipt": "r1"})
        self.assertEqual([(f.command, f.get("receipt-id")) for f in connection.take()],
                         [("RECEIPT", "r1")])
        self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "t"}})
        connection.pump.flush()
        (message,) = connection.take()
        self.assertEqual((message.command, message.get("subscription"),
                          message.get("destination")), ("MESSAGE", "s1", HEARTBEAT_TOPIC))
        self.assertEqual(message.body, b'{"heartbeat":{"time":"t"}}')

    def test_several_frames_in_one_message(self) -> None:
        """CONNECT, SUBSCRIBE and a receipted UNSUBSCRIBE in one message all take effect."""
        connection = self.open(self.factory)
        connection.message(
            _connect_frame()
            + encode_frame("SUBSCRIBE", [("id", "s1"), ("destination", HEARTBEAT_TOPIC)])
            + encode_frame("UNSUBSCRIBE", [("id", "s1"), ("receipt", "u")])
        )
        self.assertEqual([(f.command, f.get("receipt-id")) for f in connection.take()],
                         [("CONNECTED", None), ("RECEIPT", "u")])

    def test_frame_split_over_messages(self) -> None:
        """
        One frame over several messages arrives whole, including a piece that is a lone
        EOL (which between frames would be a heart-beat).
        """
        connection = self.connected()
        frame = encode_frame("SUBSCRIBE", [("id", "s1"), ("destination", ONLINE_EMPLOYEES_TOPIC),
                                           ("receipt", "r1")])
        cut = frame.index(b"\n", frame.index(b"destination"))
        for piece in (frame[:5], frame[5:cut], b"\n", frame[cut + 1:]):
            connection.message(piece)
        frames = connection.take()
        self.assertEqual([f.command for f in frames], ["MESSAGE", "RECEIPT"])
        self.assertEqual(frames[0].get("destination"), ONLINE_EMPLOYEES_TOPIC)

    def test_body_split_around_lone_eol(self) -> None:
        """
        A body with content-length whose middle byte, an EOL, comes as a message of its
        own is delivered intact, not cut short ("no NUL after content-length bytes").
        """
        connection = self.connected()
        # A SEND in a transaction: it has a body and is answered without the store.
        connection.frame("BEGIN", {"transaction": "t1"})
        frame = encode_frame("SEND", [("destination", "/v1/app/x"), ("transaction", "t1"),
                                      ("receipt", "r2"), ("content-length", "3")], b"a\nb")
        body = frame.index(b"a\nb")
        for piece in (frame[:body + 1], b"\n", frame[body + 2:]):
            connection.message(piece)
        self.assertEqual([(f.command, f.get("receipt-id")) for f in connection.take()],
                         [("RECEIPT", "r2")])
        self.assertFalse(connection.closed)

    def test_heartbeat_keeps_session(self) -> None:
        """Client heart-beats count as life: the session outlives its read deadline."""
        connection = self.connected(heart_beat="1000,0")
        # The server expects a beat every 10 s (its own setting is the larger), and allows
        # three intervals of silence.
        for _ in range(8):
            self.clock.advance(5)
            connection.message(b"\n")
        self.assertFalse(connection.closed)
        self.clock.advance(31)
        connection.pump.flush()
        self.assertTrue(connection.server_transport.disconnecting)

    def test_slow_consumer_dropped(self) -> None:
        """A client that stops reading is aborted once the write budget is spent."""
        services = make_services(self.clock)
        factory = self.make_factory(services, max_buffer=4096)
        connection = self.open(factory)
        connection.message(_connect_frame())
        connection.message(encode_frame("SUBSCRIBE", [("id", "s1"),
                                                      ("destination", HEARTBEAT_TOPIC)]))
        # The transport's buffer is full: it pauses its producer, the write budget.
        connection.server_transport.producer.pauseProducing()
        for _ in range(100):
            services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "x" * 100}})
        connection.pump.flush()
        self.assertTrue(connection.server_transport.aborted)
        self.assertEqual(services.hub.subscriber_count(HEARTBEAT_TOPIC), 0)
        self.assertEqual(dict(services.counters.closed), {"slow_consumer": 1})

    def test_disconnect_receipt_and_clean_close(self) -> None:
        """DISCONNECT gets its RECEIPT, then the connection closes cleanly (code 1000)."""
        connection = self.connected()
        connection.frame("DISCONNECT", {"receipt": "bye"})
        self.assertEqual([(f.command, f.get("receipt-id")) for f in connection.take()],
                         [("RECEIPT", "bye")])
        self.assert_closed_cleanly(connection, 1000)

    def test_server_close_is_clean(self) -> None:
        """A session the server ends (shutdown) closes with its code, cleanly."""
        connection = self.connected()
        self.services.registry.shutdown()
        connection.pump.flush()
        (error,) = connection.take()
        self.assertEqual(error.command, "ERROR")
        self.assert_closed_cleanly(connection, 1001)

    def test_garbage_ends_only_that_session(self) -> None:
        """Bytes that are not STOMP end that session with an ERROR; another goes on."""
        good = self.connected()
        good.frame("SUBSCRIBE", {"id": "s1", "destination": HEARTBEAT_TOPIC})
        bad = self.open(self.factory)
        bad.message(b"\x00\xffnot stomp at all\n\n\x00", binary=True)
        frames: list[Frame] = bad.take()
        self.assertEqual([f.command for f in frames], ["ERROR"])
        self.assertTrue(bad.closed)
        self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {}})
        good.pump.flush()
        self.assertEqual([f.command for f in good.take()], ["MESSAGE"])
        self.assertFalse(good.closed)


class TCPCarrierTests(CarrierScenariosMixin, TestCase):
    """
    The scenarios over the plain TCP carrier.
    """

    def make_factory(self, services: StompServices, **kwargs: Any) -> Any:
        return tcp_factory(services, **kwargs)

    def open(self, factory: Any) -> MemoryConnection:
        return connect_tcp(factory)

    def assert_closed_cleanly(self, connection: MemoryConnection, code: int) -> None:
        self.assertTrue(connection.closed)
        self.assertFalse(connection.server_transport.aborted)


class TCPKeepAliveTests(TestCase):
    """
    TCP keepalive on C{--stomp-listen} connections: a peer that vanished is noticed even
    when its session negotiated no heart-beats.
    """

    def test_connections_keep_alive(self) -> None:
        """Every accepted STOMP/TCP connection has keepalive on."""
        connection = connect_tcp(tcp_factory(make_services()))
        self.assertTrue(connection.server_transport.keepalive)

    def test_probe_timing(self) -> None:
        """Where the platform allows, probing starts after the idle time given."""
        if not hasattr(socket, "TCP_KEEPIDLE"):
            self.skipTest("no TCP_KEEPIDLE on this platform")
        sock = socket.socket()
        self.addCleanup(sock.close)

        class Transport:
            enabled = False

            def setTcpKeepAlive(self, enabled: int) -> None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

            def getHandle(self) -> socket.socket:
                return sock

        self.assertTrue(keep_alive(Transport(), 30))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 30)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 10)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 3)

    def test_no_keepalive_support(self) -> None:
        """A transport without keepalive (a test double, a UNIX socket) is left alone."""
        self.assertFalse(keep_alive(object(), 30))


class WebSocketCarrierTests(CarrierScenariosMixin, TestCase):
    """
    The scenarios over the WebSocket carrier, fast paths on.
    """

    fast_paths = True

    def make_factory(self, services: StompServices, **kwargs: Any) -> Any:
        return ws_factory(services, fast_paths=self.fast_paths, **kwargs)

    def open(self, factory: Any) -> MemoryConnection:
        return connect_ws(factory)

    def assert_closed_cleanly(self, connection: MemoryConnection, code: int) -> None:
        # The client saw the server's code on a completed close handshake, and the
        # server closed TCP in order (an abort would reset it: wasClean=false in browsers).
        self.assertEqual(connection.client.close_info[:2], (True, code))
        self.assertTrue(connection.server_transport.disconnecting)
        self.assertFalse(connection.server_transport.aborted)

    def test_closed_connection_not_cyclic(self) -> None:
        """
        A closed connection's is_closed does not hold the protocol (Autobahn resolves it
        with the protocol itself): protocol and Deferred would be a reference cycle, left
        for the garbage collector with the whole connection, for every connection.
        """
        connection = self.connected()
        connection.frame("DISCONNECT", {"receipt": "bye"})
        connection.take()
        self.assert_closed_cleanly(connection, 1000)
        self.assertIsNone(self.successResultOf(connection.server.is_closed))

    def test_heartbeat_shortcut(self) -> None:
        """With fast paths on, a client heart-beat between frames never reaches Autobahn."""
        connection = self.connected(heart_beat="1000,0")
        protocol = connection.server
        frames_before = protocol.trafficStats.incomingWebSocketFrames
        connection.message(b"\n")
        taken = protocol.trafficStats.incomingWebSocketFrames == frames_before
        self.assertEqual(taken, self.fast_paths)

    def test_ping_and_pong_shortcut(self) -> None:
        """
        With fast paths on, the liveness ping is the carrier's own frame and the client's
        pong never reaches Autobahn; either way the client (a real Autobahn one) reads a
        ping and its answer keeps the session.
        """
        services = make_services(self.clock)
        factory = self.make_factory(services, ping_interval=30)
        connection = self.open(factory)
        connection.message(_connect_frame())
        connection.take()
        protocol = connection.server
        # Autobahn counts the bytes that pass through it, control frames included.
        stats = protocol.trafficStats
        read_before = stats.incomingOctetsWireLevel
        written_before = stats.outgoingOctetsWireLevel
        self.step(connection, 30)
        self.assertEqual(connection.client.pings, 1)
        self.assertFalse(protocol._ping_unanswered)
        # The class's own setting: the fallback tests ask for fast paths, and get none.
        shortcut = type(self).fast_paths
        self.assertEqual(stats.incomingOctetsWireLevel == read_before, shortcut)
        self.assertEqual(stats.outgoingOctetsWireLevel == written_before, shortcut)
        self.step(connection, 60)
        self.assertEqual(connection.client.pings, 3)
        self.assertFalse(connection.closed)

    def test_pong_of_another_payload(self) -> None:
        """
        A pong that is not the probe's echo (a client's unsolicited one, RFC 6455 section
        5.5.3) goes through Autobahn and still counts as an answer, as before.
        """
        services = make_services(self.clock)
        factory = self.make_factory(services, ping_interval=30)
        connection = self.open(factory)
        connection.message(_connect_frame())
        connection.take()
        connection.client.answer_pings = False
        self.step(connection, 30)
        protocol = connection.server
        self.assertTrue(protocol._ping_unanswered)
        connection.client.sendPong(b"alive")
        connection.pump.flush()
        self.assertFalse(protocol._ping_unanswered)
        self.step(connection, 30)
        self.assertFalse(connection.closed)

    def test_drain_waits_for_close(self) -> None:
        """drain() fires once every connection has finished its close handshake."""
        connection = self.connected()
        self.services.registry.shutdown()
        drained = self.factory.drain()
        self.assertNoResult(drained)
        connection.pump.flush()
        self.successResultOf(drained)

    def test_drain_bounded(self) -> None:
        """Connections that never answer the close are aborted when the drain times out."""
        connection = self.connected()
        self.services.registry.shutdown()
        drained = self.factory.drain(timeout=3)
        self.clock.advance(3)
        self.successResultOf(drained)
        self.assertTrue(connection.server_transport.aborted)

    def test_drain_nothing_open(self) -> None:
        """With no connection open, drain() fires at once."""
        self.successResultOf(self.factory.drain())

    def step(self, connection: MemoryConnection, seconds: int) -> None:
        """Let C{seconds} pass, one at a time, moving bytes both ways."""
        for _ in range(seconds):
            self.clock.advance(1)
            connection.pump.flush()

    def test_ping_flood_bounded(self) -> None:
        """
        Pongs count against the write budget: a client that sends pings and reads nothing
        (here before CONNECT, with no ping rate limit) is dropped once the budget is spent.
        """
        factory = self.make_factory(make_services(self.clock), max_buffer=16384,
                                    ping_rate=1e9, ping_burst=1e9)
        raw = RawWebSocket(factory)
        # The transport's buffer is full: it pauses its producer, the write budget.
        raw.transport.producer.pauseProducing()
        for _ in range(2000):
            raw.send(9, b"p" * 125)
        self.assertTrue(raw.transport.disconnecting)
        self.assertLessEqual(raw.written, 16384 + 127)

    def test_ping_rate_limited(self) -> None:
        """
        Pings beyond the per-connection rate end the session with an ERROR and 1008; a
        client pinging at the rate is answered every time.
        """
        connection = self.connected()
        for _ in range(10):
            self.step(connection, 1)
            connection.client.sendPing(b"ok")
            connection.pump.flush()
        self.assertEqual(connection.client.pongs, 10)
        self.assertFalse(connection.closed)
        for _ in range(30):
            connection.client.sendPing(b"flood")
        connection.pump.flush()
        (error,) = connection.take()
        self.assertEqual((error.command, error.get("message")), ("ERROR", "too many pings"))
        self.assertEqual(connection.client.close_info[:2], (True, 1008))

    def test_large_message_before_connect(self) -> None:
        """
        Before CONNECT a WebSocket message may be no larger than the pre-auth STOMP frame
        budget: a 100 KiB frame is refused (1009) from its header, never buffered.
        """
        raw = RawWebSocket(self.factory)
        frame = masked_frame(1, b"\n" * 100 * 1024)
        raw.server.dataReceived(frame[:1024])
        written = raw.transport.value()
        self.assertEqual(written[:1], b"\x88")
        self.assertEqual(written[2:4], struct.pack("!H", 1009))
        self.assertTrue(raw.server.wasMaxFramePayloadSizeExceeded
                        or raw.server.wasMaxMessagePayloadSizeExceeded)

    def test_large_message_after_connected(self) -> None:
        """Once CONNECTED, messages up to the configured size are accepted again."""
        connection = self.connected()
        connection.message(b"\n" * 40000 + encode_frame(
            "SUBSCRIBE", [("id", "s1"), ("destination", HEARTBEAT_TOPIC), ("receipt", "r")]))
        self.assertEqual([(f.command, f.get("receipt-id")) for f in connection.take()],
                         [("RECEIPT", "r")])
        self.assertFalse(connection.closed)

    def test_unanswered_ping_drops_session(self) -> None:
        """
        A session without heart-beats (0,0) is probed with a ping every interval; while the
        client answers it stays, and one that leaves a ping unanswered for an interval is
        dropped, which ends its presence.
        """
        services = make_services(self.clock)
        factory = self.make_factory(services, ping_interval=30)
        connection = self.open(factory)
        connection.message(_connect_frame())
        connection.take()
        self.assertEqual(services.registry.session_count(CUSTOMER), 1)
        self.step(connection, 61)
        self.assertEqual(connection.client.pings, 2)
        self.assertFalse(connection.closed)
        connection.client.answer_pings = False
        self.step(connection, 30)
        self.assertEqual(connection.client.pings, 3)
        self.assertFalse(connection.server_transport.disconnecting)
        self.step(connection, 30)
        self.assertTrue(connection.server_transport.aborted)
        self.assertEqual(services.registry.session_count(CUSTOMER), 0)
        self.assertEqual(dict(services.counters.closed), {"heartbeat_timeout": 1})

    def test_refused_origin_counted(self) -> None:
        """A handshake from a foreign origin is refused and counted as such."""
        services = make_services(self.clock)
        factory = self.make_factory(services)
        client_factory = WebSocketClientFactory(
            "ws://localhost:8080/api/v1/chat", protocols=["v12.stomp"],
            headers={"Origin": "https://elsewhere.example"}, reactor=self.clock,
        )
        client_factory.protocol = WSClientProtocol
        timers_on_wheel(client_factory, TimerWheel(self.clock))
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        open_connection(server, client, self.clock)
        self.assertFalse(client.opened)
        self.assertEqual(dict(services.counters.refused), {"origin not allowed": 1})

    def test_carrier_kind(self) -> None:
        """Sessions over a WebSocket say so."""
        self.connected()
        (session,) = self.services.registry.sessions()
        self.assertEqual(session.carrier_kind, "websocket")  # type: ignore[attr-defined]

    def test_heartbeat_session_not_pinged(self) -> None:
        """A session whose client promised heart-beats is checked by them, not by pings."""
        services = make_services(self.clock)
        factory = self.make_factory(services, ping_interval=5)
        connection = self.open(factory)
        connection.message(_connect_frame(heart_beat="1000,0"))
        for _ in range(5):
            self.step(connection, 5)
            connection.message(b"\n")
        self.assertEqual(connection.client.pings, 0)
        self.assertFalse(connection.closed)

    def garbage_with_delay(self, delay: float) -> tuple[StompServices, MemoryConnection]:
        """A connection that sent garbage, with C{--error-close-delay} C{delay}."""
        services = make_services(self.clock, error_close_delay=delay)
        bad = self.open(self.make_factory(services))
        bad.message(b"\x00\xffnot stomp at all\n\n\x00", binary=True)
        self.assertEqual([f.command for f in bad.take()], ["ERROR"])
        return services, bad

    def test_error_close_delayed(self) -> None:
        """
        With an error close delay, a connection an ERROR ended is read no further and
        closed (cleanly) only once the delay has passed; its session is gone at once.
        """
        services, bad = self.garbage_with_delay(1.0)
        self.assertFalse(bad.closed)
        self.assertTrue(bad.server_transport.paused)
        self.assertEqual((len(services.lingering), len(services.registry.sessions())), (1, 0))
        self.clock.advance(0.9)
        bad.pump.flush()
        self.assertFalse(bad.closed)
        self.clock.advance(0.1)
        bad.pump.flush()
        self.assert_closed_cleanly(bad, 1002)
        self.assertEqual(len(services.lingering), 0)

    def test_error_close_held_until_shutdown(self) -> None:
        """A held connection is closed at once when the server stops (close_all)."""
        services, bad = self.garbage_with_delay(30.0)
        services.lingering.close_all()
        bad.pump.flush()
        self.assert_closed_cleanly(bad, 1002)
        self.assertEqual(len(services.lingering), 0)
        self.assertFalse([call for call in self.clock.getDelayedCalls()
                          if call.func == services.lingering._due])

    def test_shutdown_close_not_delayed(self) -> None:
        """Going away (shutdown) and DISCONNECT close at once, whatever the delay."""
        services = make_services(self.clock, error_close_delay=30.0)
        factory = self.make_factory(services)
        for end in ("shutdown", "disconnect"):
            connection = self.open(factory)
            connection.message(_connect_frame())
            connection.take()
            if end == "shutdown":
                services.registry.shutdown()
                connection.pump.flush()
            else:
                connection.frame("DISCONNECT")
            self.assertTrue(connection.closed, end)
        self.assertEqual(len(services.lingering), 0)

    def test_no_ping_before_connect(self) -> None:
        """Before CONNECT the CONNECT timeout guards the connection; no ping is sent."""
        connection = self.open(self.make_factory(make_services(self.clock), ping_interval=2))
        self.step(connection, 5)
        self.assertEqual(connection.client.pings, 0)

    def test_frames_after_close_discarded(self) -> None:
        """
        Once the session has ended and the close frame is out, further data frames are
        neither UTF-8 checked nor buffered nor delivered; the client's close reply still
        completes the handshake in order.
        """
        raw = RawWebSocket(self.factory)
        raw.send(2, b"\x00\xffnot stomp\n\n\x00")
        self.assertIn(b"\x88", raw.transport.value())
        checked: list[bytes] = []
        delivered: list[bytes] = []
        real = raw.server.utf8validator

        class Spy:
            def reset(self) -> None:
                real.reset()

            def validate(self, payload: bytes) -> Any:
                checked.append(payload)
                return real.validate(payload)

        raw.server.utf8validator = Spy()
        raw.server.onMessage = lambda payload, binary: delivered.append(payload)
        for _ in range(20):
            raw.send(1, b"SEND\ndestination:/x\n\n" + b"x" * 1000 + b"\x00")
        self.assertEqual((checked, delivered), ([], []))
        self.assertFalse(raw.server.message_data)
        raw.send(8, struct.pack("!H", 1002))
        self.assertTrue(raw.transport.disconnecting)
        self.assertFalse(raw.transport.disconnected)

    def test_flood_after_close_dropped(self) -> None:
        """
        A client that keeps sending data frames after the server's close frame, past what
        it could have had in flight, is dropped at once rather than read until the close
        handshake times out.
        """
        raw = RawWebSocket(self.factory)
        raw.send(2, b"\x00\xffnot stomp\n\n\x00")
        message = masked_frame(1, b"x" * 1000)
        raw.server.dataReceived(message * 60)
        self.assertFalse(raw.transport.disconnecting)
        raw.server.dataReceived(message * 10)
        self.assertTrue(raw.transport.disconnected)
        self.assertEqual(raw.server.state, raw.server.STATE_CLOSED)

    def test_open_skips_config_log(self) -> None:
        """
        With fast paths on, opening a connection does not pretty-print Autobahn's options
        for a debug line nobody reads; the options are copied all the same.
        """
        formatted: list[object] = []
        self.patch(autobahn_protocol, "pformat",
                   lambda value: formatted.append(value) or pformat(value))
        connection = self.connected()
        self.assertEqual(connection.server.closeHandshakeTimeout,
                         self.factory.closeHandshakeTimeout)
        self.assertEqual(connection.server.openHandshakeTimeout, 10)
        server_lists = [v for v in formatted if isinstance(v, list) and len(v) > 20]
        # The client's own list is formatted too: Autobahn's client is not ours.
        expected = 1 if self.factory.fast_paths.quiet_open else 2
        self.assertEqual(len(server_lists), expected)


    def batched(self) -> tuple[MemoryConnection, list[bytes]]:
        """A connection subscribed to the heart-beat topic, and its server's writes."""
        connection = self.connected()
        connection.frame("SUBSCRIBE", {"id": "s1", "destination": HEARTBEAT_TOPIC})
        writes: list[bytes] = []
        transport = connection.server_transport
        write = transport.write

        def recording(data: bytes) -> None:
            writes.append(data)
            write(data)

        transport.write = recording  # type: ignore[method-assign]
        return connection, writes

    def test_batch_writes_once(self) -> None:
        """
        In the feed's write batch, a connection's frames wait for the end of the block
        and then leave in one write, in order (with the public API, one write each, at
        once; so too when an attribute the own frames need is missing).
        """
        connection, writes = self.batched()
        with write_batch:
            for n in (1, 2):
                self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"n": n}})
            own = connection.server._own_frames
            self.assertEqual(len(writes), 0 if own else 2)
        self.assertEqual(len(writes), 1 if own else 2)
        connection.pump.flush()
        self.assertEqual([f.body for f in connection.take()],
                         [b'{"heartbeat":{"n":1}}', b'{"heartbeat":{"n":2}}'])

    def test_batch_before_close(self) -> None:
        """A connection closed while it holds frames in the batch sends them first."""
        connection, writes = self.batched()
        with write_batch:
            self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"n": 1}})
            connection.server.close(1001, "going away")
        connection.pump.flush()
        self.assertEqual([f.command for f in connection.take()], ["MESSAGE"])
        self.assert_closed_cleanly(connection, 1001)

    def test_batch_dropped_on_abort(self) -> None:
        """A connection aborted while it holds frames drops them, as a write buffer."""
        connection, writes = self.batched()
        with write_batch:
            self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"n": 1}})
            connection.server.abort()
            self.assertEqual(write_batch.take(connection.server), [])
        # Written at once without the own frames (the public API), else dropped.
        self.assertEqual(len(writes), 0 if connection.server._own_frames else 1)
        self.assertTrue(connection.server_transport.aborted)

    def test_shared_payload_framed_per_payload(self) -> None:
        """
        Sessions handed one bytes object (one subscription id) each get it framed right,
        and so do the next publications, short and long (a 2- and a 4-byte header).
        """
        connections = []
        for sub_id in ("s", "s", "t"):
            connection = self.connected()
            connection.frame("SUBSCRIBE", {"id": sub_id, "destination": HEARTBEAT_TOPIC})
            connections.append(connection)
        bodies = [{"n": 1}, {"n": 2}, {"n": "x" * 300}, {"n": 3}, {"n": 3}]
        for body in bodies:
            self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": body})
        expected = [json.dumps({"heartbeat": body}, separators=(",", ":")).encode()
                    for body in bodies]
        for connection, sub_id in zip(connections, ("s", "s", "t"), strict=True):
            connection.pump.flush()
            frames = connection.take()
            self.assertEqual([f.body for f in frames], expected)
            self.assertEqual({f.get("subscription") for f in frames}, {sub_id})


class WebSocketPublicAPITests(WebSocketCarrierTests):
    """
    The scenarios over the WebSocket carrier with C{--no-fast-paths}.
    """

    fast_paths = False

    def test_all_off(self) -> None:
        """No fast path is in use."""
        paths = self.factory.fast_paths
        self.assertFalse(paths.eager_send or paths.own_frames or paths.heartbeat_shortcut)


class WebSocketMissingAttributeTests(WebSocketCarrierTests):
    """
    The scenarios over the WebSocket carrier when the installed Autobahn lacks attributes
    the fast paths read: they fall back to the public API, and every scenario still holds.
    """

    fast_paths = False

    def setUp(self) -> None:
        self.patch(_fastpath, "FRAME_ATTRIBUTES", (*_fastpath.FRAME_ATTRIBUTES, "_gone"))
        self.patch(_fastpath, "HEARTBEAT_ATTRIBUTES",
                   (*_fastpath.HEARTBEAT_ATTRIBUTES, "_gone_too"))
        self.patch(_fastpath, "_warned", set())
        self.fast_paths = True
        super().setUp()

    def make_factory(self, services: StompServices, **kwargs: Any) -> Any:
        return ws_factory(services, fast_paths=True, **kwargs)

    def connected(self, **headers: str) -> MemoryConnection:
        connection = super().connected(**headers)
        # Checked at start-up (frames) and when the first connection opened (heart-beats).
        self.assertFalse(self.factory.fast_paths.own_frames)
        self.assertFalse(self.factory.fast_paths.heartbeat_shortcut)
        self.fast_paths = False
        return connection


# What a client may send a WebSocket session that its server pings: the probe's pong and
# other control frames (a ping with the probe's payload, a pong that is not final),
# heart-beat EOLs, a whole STOMP frame, the two halves of a fragmented one (in any order,
# so also a continuation with nothing to continue), a STOMP frame over three messages (an
# EOL among them is content), and a close frame.
_CLIENT_FRAMES = st.sampled_from([
    masked_frame(0xA, PROBE),
    masked_frame(0xA, PROBE, mask=b"\x00\x00\x00\x00"),
    masked_frame(0xA, PROBE, fin=False),
    masked_frame(0xA, b"alive"),
    masked_frame(0xA, b""),
    masked_frame(0x9, PROBE),
    masked_frame(0x9, b"hi"),
    masked_frame(1, b"\n"),
    masked_frame(2, b"\n"),
    masked_frame(1, encode_frame("SUBSCRIBE", [("id", "s1"), ("destination", HEARTBEAT_TOPIC),
                                               ("receipt", "r1")])),
    masked_frame(1, b"SUBSCRIBE\nid:s2\n", fin=False),
    masked_frame(0, b"destination:" + HEARTBEAT_TOPIC.encode() + b"\nreceipt:r2\n\n\x00"),
    masked_frame(1, b"\n", fin=False),
    masked_frame(1, b"SUBSCRIBE\nid:s3\ndestination:" + HEARTBEAT_TOPIC.encode()
                 + b"\nreceipt:r3\n"),
    masked_frame(1, b"\x00"),
    masked_frame(8, struct.pack("!H", 1000)),
])


class _PingedSession:
    """A session without heart-beats on the WebSocket carrier, just pinged."""

    def __init__(self, fast_paths: bool) -> None:
        self.clock = MemoryReactorClock()
        self.services = make_services(self.clock)
        factory = ws_factory(self.services, fast_paths=fast_paths, ping_interval=30)
        self.raw = RawWebSocket(factory)
        self.raw.send(1, _connect_frame())
        assert self.raw.transport.value().startswith(b"\x81"), self.raw.transport.value()
        self.raw.transport.clear()  # the CONNECTED frame names a session id of its own
        self.clock.advance(30)

    def state(self) -> tuple[object, ...]:
        """Everything written since CONNECTED, and how the connection and session stand."""
        server = self.raw.server
        return (self.raw.transport.value(), server.state, server._ping_unanswered,
                self.raw.transport.disconnecting, len(self.services.registry.sessions()))


def _chunks(frames: list[tuple[bytes, bool]], cuts: list[int]) -> list[bytes]:
    """
    The reads that bring C{frames}: each marked C{True} alone (as the shortcuts take
    them), the others joined to the frames before them; then each of C{cuts} splits a
    read in two.
    """
    reads: list[bytes] = []
    for frame, alone in frames:
        if alone or not reads:
            reads.append(frame)
            if alone:
                reads.append(b"")
        else:
            reads[-1] += frame
    reads = [read for read in reads if read]
    for cut in cuts:
        if not reads:
            break
        index = cut % len(reads)
        at = (cut // 7) % len(reads[index])
        if at:
            read = reads[index]
            reads[index:index + 1] = [read[:at], read[at:]]
    return reads


class ShortcutEquivalenceTests(TestCase):
    """
    The WebSocket carrier's input shortcuts (client heart-beats, the probe's pong) change
    nothing but the cost: whatever a pinged client sends, however the bytes are cut, a
    server with fast paths writes the same bytes and ends in the same state as one with
    Autobahn's parser alone.
    """

    @settings(max_examples=500, deadline=None)
    @given(frames=st.lists(st.tuples(_CLIENT_FRAMES, st.booleans()), max_size=8),
           cuts=st.lists(st.integers(0, 10_000), max_size=3))
    def test_same_outcome(self, frames: list[tuple[bytes, bool]], cuts: list[int]) -> None:
        self.assert_same(_chunks(frames, cuts))

    def test_heartbeat_inside_fragmented_message(self) -> None:
        """An EOL message while a fragmented one is under way is a protocol error."""
        self.assert_same([masked_frame(1, b"SUBSCRIBE\nid:s2\n", fin=False),
                          masked_frame(1, b"\n")])

    def test_pong_bytes_inside_a_frame(self) -> None:
        """Bytes that look like the probe's pong but end a frame's payload are content."""
        pong = masked_frame(0xA, PROBE)
        frame = masked_frame(2, b"x" * 20 + pong, mask=b"\x00\x00\x00\x00")
        self.assert_same([frame[:-len(pong)], frame[-len(pong):],
                          masked_frame(1, b"\n"), masked_frame(0xA, PROBE)])

    def test_pong_bytes_inside_a_ping(self) -> None:
        """The same inside a control frame, which starts no message."""
        pong = masked_frame(0xA, PROBE)
        ping = masked_frame(9, b"yy" + pong, mask=b"\x00\x00\x00\x00")
        self.assert_same([ping[:-len(pong)], ping[-len(pong):]])

    def test_pong_bytes_after_a_header_byte(self) -> None:
        """Bytes that look like the probe's pong after a frame's first byte are its rest."""
        self.assert_same([b"\x81", masked_frame(0xA, PROBE), b"\x00\x00",
                          masked_frame(0xA, PROBE)])

    def assert_same(self, reads: list[bytes]) -> None:
        """
        A pinged session given C{reads} writes the same and ends the same with fast paths
        as without, and again at the next probe.
        """
        fast, public = _PingedSession(True), _PingedSession(False)
        self.assertTrue(fast.raw.server._own_frames and fast.raw.server._heartbeats)
        self.assertEqual(fast.state(), public.state())
        self.assertEqual(fast.state()[0], bytes((0x89, len(PROBE))) + PROBE)
        for session in (fast, public):
            for read in reads:
                session.raw.server.dataReceived(read)
        self.assertEqual(fast.state(), public.state())
        # The next probe: the session is dropped, or pinged again, alike.
        for session in (fast, public):
            session.clock.advance(30)
        self.assertEqual(fast.state(), public.state())
