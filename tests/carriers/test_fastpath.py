"""
Tests for L{medichat.carriers._fastpath}: the start-up checks and their fallbacks, and the
eager send's refusal to bypass TLS.  No reactor runs: transports are real
C{tcp.Connection}s on socket pairs, driven by hand.
"""

from __future__ import annotations

import socket
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import ssl, tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import directlyProvides

from medichat.carriers import _fastpath
from medichat.carriers._budget import WriteBudget
from medichat.carriers._fastpath import (
    FastPaths,
    frame_header,
    is_client_heartbeat,
    is_pong,
    send_now,
    socket_of,
)
from medichat.carriers.tcp import StompTCPFactory
from medichat.stomp.codec import FrameError, FrameParser
from tests._stomp import make_services
from tests.carriers._memory import masked_frame


def _connection(case: TestCase) -> tuple[tcp.Connection, socket.socket]:
    """A connected plain TCP transport (on a socket pair, no reactor) and its peer socket."""
    ours, peer = socket.socketpair()
    case.addCleanup(ours.close)
    case.addCleanup(peer.close)
    peer.setblocking(False)
    no_reactor: Any = MemoryReactor()
    transport = tcp.Connection(ours, Protocol(), reactor=no_reactor)
    transport.connected = True
    return transport, peer


def _read(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


class ProbeTests(TestCase):
    """
    The start-up checks find what the installed versions offer, and switch a shortcut off
    (logging once) when an attribute it needs is missing.
    """

    def setUp(self) -> None:
        self.patch(_fastpath, "_warned", set())
        self.events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )

    def test_installed_versions(self) -> None:
        """The installed Twisted and Autobahn have everything every shortcut needs."""
        self.assertEqual(FastPaths.probe(),
                         FastPaths(eager_send=True, own_frames=True, heartbeat_shortcut=True,
                                   quiet_open=True, whole_requests=True))
        self.assertIsNotNone(FastPaths.probe().whole_request_handover())
        self.assertEqual(len(self.events), 0)

    def test_disabled(self) -> None:
        """C{--no-fast-paths}: nothing is on, and nothing is probed or logged."""
        self.assertEqual(FastPaths.probe(False), FastPaths())
        self.assertEqual(len(self.events), 0)

    def test_missing_tcp_attribute(self) -> None:
        """A Twisted without an attribute the eager send reads turns it off, logged once."""
        self.patch(_fastpath, "TCP_ATTRIBUTES", (*_fastpath.TCP_ATTRIBUTES, "_gone"))
        first = FastPaths.probe()
        second = FastPaths.probe()
        self.assertFalse(first.eager_send or second.eager_send)
        self.assertTrue(first.own_frames and first.heartbeat_shortcut)
        self.assertEqual(len(self.events), 1)
        self.assertIn("_gone", self.events[0]["missing"])

    def test_missing_tcp_attribute_writes(self) -> None:
        """With the eager send off, the TCP carrier finds no socket and uses write()."""
        self.patch(_fastpath, "TCP_ATTRIBUTES", (*_fastpath.TCP_ATTRIBUTES, "_gone"))
        factory = StompTCPFactory(make_services())
        transport, peer = _connection(self)
        self.assertIsNone(socket_of(transport, factory.fast_paths))

    def test_missing_autobahn_attribute(self) -> None:
        """An Autobahn without what the frame shortcut needs turns it off."""
        self.patch(_fastpath, "FRAME_ATTRIBUTES", ("_gone",))
        self.assertFalse(FastPaths.probe().own_frames)
        self.assertEqual(len(self.events), 1)

    def test_missing_channel_attribute(self) -> None:
        """
        A twisted.web without what the handover of a request read whole needs turns that
        off: HTTP channels get no handover, and twisted.web reads every request.
        """
        self.patch(_fastpath, "CHANNEL_ATTRIBUTES", (*_fastpath.CHANNEL_ATTRIBUTES, "_gone"))
        paths = FastPaths.probe()
        self.assertFalse(paths.whole_requests)
        self.assertIsNone(paths.whole_request_handover())
        self.assertTrue(paths.eager_send and paths.own_frames)
        self.assertEqual(len(self.events), 1)
        self.assertIn("_gone", self.events[0]["missing"])

    def test_heartbeat_attributes_checked_on_open(self) -> None:
        """A protocol without the frame-parser attributes turns the shortcut off for good."""
        paths = FastPaths.probe()

        class Bare:
            state = 3

        self.assertFalse(paths.heartbeat_usable(Bare()))
        self.assertFalse(paths.heartbeat_shortcut)
        self.assertFalse(paths.heartbeat_usable(Bare()))
        self.assertEqual(len(self.events), 1)


class SendNowTests(TestCase):
    """
    L{send_now} sends at once on a plain socket, and otherwise goes through C{write}.
    """

    def test_sends_at_once(self) -> None:
        """With nothing queued, the bytes are on the socket without a reactor turn."""
        transport, peer = _connection(self)
        sock = socket_of(transport, FastPaths.probe())
        self.assertIsNotNone(sock)
        self.assertTrue(send_now(transport, sock, b"MESSAGE"))
        self.assertEqual(_read(peer), b"MESSAGE")
        self.assertEqual(transport._tempDataLen, 0)

    def test_queues_behind_queued(self) -> None:
        """Once something is queued, later bytes queue behind it (order is kept)."""
        transport, peer = _connection(self)
        sock = socket_of(transport, FastPaths.probe())
        transport.write(b"first,")
        self.assertFalse(send_now(transport, sock, b"second"))
        self.assertEqual(_read(peer), b"")
        transport.doWrite()
        self.assertEqual(_read(peer), b"first,second")

    def test_paused_means_queued(self) -> None:
        """
        A transport pauses its producer (a carrier's L{WriteBudget}) only while it holds
        bytes, so L{send_now} never sends at once then: a carrier whose bytes it sent at
        once need not ask its budget to count them.
        """
        transport, peer = _connection(self)
        budget = WriteBudget(transport, max_buffer=1 << 30)
        sock = socket_of(transport, FastPaths.probe())
        transport.write(b"x" * (transport.bufferSize + 1))
        self.assertTrue(budget.paused)
        self.assertFalse(send_now(transport, sock, b"more"))
        received = b""
        while transport.dataBuffer or transport._tempDataLen:
            transport.doWrite()
            received += _read(peer)
        received += _read(peer)
        self.assertEqual(len(received), transport.bufferSize + 1 + len(b"more"))
        self.assertFalse(budget.paused)
        self.assertTrue(send_now(transport, sock, b"again"))
        self.assertEqual(_read(peer), b"again")

    def test_other_transports_write(self) -> None:
        """A transport that is not plain TCP (test doubles, TLS wrappers) gets write()."""
        transport = StringTransport()
        self.assertIsNone(socket_of(transport, FastPaths.probe()))
        self.assertFalse(send_now(transport, None, b"abc"))
        self.assertEqual(transport.value(), b"abc")

    def test_ssl_transport_has_no_socket(self) -> None:
        """A TCP connection that provides ISSLTransport is never written around."""
        transport, peer = _connection(self)
        directlyProvides(transport, ISSLTransport)
        self.assertIsNone(socket_of(transport, FastPaths.probe()))

    def test_tls_started_later_uses_write(self) -> None:
        """
        After C{startTLS} on a connection whose socket was taken earlier, bytes go through
        the TLS layer, never in plaintext onto the socket.
        """
        transport, peer = _connection(self)
        sock = socket_of(transport, FastPaths.probe())
        self.assertIsNotNone(sock)
        transport._tlsClientDefault = True
        transport.startTLS(ssl.CertificateOptions())
        transport.doWrite()  # the ClientHello leaves; nothing is queued any more
        hello = _read(peer)
        self.assertTrue(hello)
        self.assertIsNone(socket_of(transport, FastPaths.probe()))
        self.assertFalse(send_now(transport, sock, b"plaintext secret"))
        transport.doWrite()
        self.assertNotIn(b"plaintext secret", _read(peer))


class WriterForTests(TestCase):
    """
    L{FastPaths.writer_for}: what the HTTP channel writes its answers with.
    """

    def test_plain_tcp(self) -> None:
        """On a plain TCP transport it sends at once."""
        transport, peer = _connection(self)
        send = FastPaths(eager_send=True).writer_for(transport)
        assert send is not None
        send(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(_read(peer), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(transport.dataBuffer, b"")

    def test_none(self) -> None:
        """With the eager send off, or on another transport, there is none."""
        transport, _ = _connection(self)
        self.assertIsNone(FastPaths().writer_for(transport))
        self.assertIsNone(FastPaths(eager_send=True).writer_for(StringTransport()))


class _IdleAutobahn:
    """What the frame recognisers read of an open Autobahn protocol between frames."""

    state = 3
    current_frame: object = None
    inside_message = False
    data = b""


class FrameTests(TestCase):
    """
    The self-written frame headers and the heart-beat recogniser.
    """

    def test_header_lengths(self) -> None:
        """The three RFC 6455 length encodings."""
        self.assertEqual(frame_header(125), b"\x81\x7d")
        self.assertEqual(frame_header(126), b"\x81\x7e\x00\x7e")
        self.assertEqual(frame_header(65536), b"\x81\x7f" + (65536).to_bytes(8, "big"))

    def test_heartbeat_recognised(self) -> None:
        """A masked one-byte EOL frame is a heart-beat only when Autobahn is idle."""

        beat = bytes((0x81, 0x81, 1, 2, 3, 4, 0x0A ^ 1))
        protocol = _IdleAutobahn()
        self.assertTrue(is_client_heartbeat(protocol, beat))
        self.assertFalse(is_client_heartbeat(protocol, beat[:6] + b"x"))
        protocol.data = b"\x81"
        self.assertFalse(is_client_heartbeat(protocol, beat))

    @given(st.binary(min_size=4, max_size=4), st.binary(max_size=125))
    def test_pong_recognised(self, mask: bytes, payload: bytes) -> None:
        """
        A masked pong frame is recognised by its payload, whatever its mask; any other
        frame, a pong with another payload, or a pong while Autobahn is inside a frame is
        left to Autobahn.
        """
        protocol = _IdleAutobahn()
        pong = masked_frame(0xA, payload, mask=mask)
        self.assertTrue(is_pong(protocol, pong, payload))
        other = bytes(b ^ 1 for b in payload) if payload else b"x"
        self.assertFalse(is_pong(protocol, pong, other))
        for frame in (masked_frame(0x9, payload, mask=mask),  # a ping
                      masked_frame(0xA, payload, fin=False, mask=mask),
                      masked_frame(0xA, payload + b"x", mask=mask),
                      pong[:-1], pong + b"\x8a", bytes((0x8A, len(payload))) + payload):
            self.assertFalse(is_pong(protocol, frame, payload), frame)
        for name, busy in [("state", 2), ("current_frame", object()),
                           ("inside_message", True), ("data", b"\x81")]:
            setattr(protocol, name, busy)
            self.assertFalse(is_pong(protocol, pong, payload), name)
            delattr(protocol, name)


class ParserStateTests(TestCase):
    """
    L{FrameParser.between_frames}, which the heart-beat shortcut asks before it takes a
    lone EOL.
    """

    def test_states(self) -> None:
        """Between frames only with nothing of a frame (or of a CRLF) buffered."""
        parser = FrameParser()
        self.assertTrue(parser.between_frames)
        for piece, between in [(b"\n", True), (b"SEND", False), (b"\ndestination:/x\n", False),
                               (b"\n", False), (b"\x00", True), (b"\r", False),
                               (b"\n", True)]:
            parser.feed(piece)
            self.assertEqual(parser.between_frames, between, piece)

    def test_broken(self) -> None:
        """A parser broken by bad input is never between frames."""
        parser = FrameParser()
        self.assertRaises(FrameError, parser.feed, b"NOT-A-COMMAND\n\n\x00")
        self.assertFalse(parser.between_frames)
