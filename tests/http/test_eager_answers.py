"""
Tests for the eager answers of L{medichat.http._channel.MedichatChannel}: an answer's head
is kept until its body comes and both leave in one write, through the eager writer when the
connection has one, else through its transport; on a real loopback connection every kind
of answer arrives whole and in order, however much of it the kernel takes at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from medichat.carriers._fastpath import FastPaths
from medichat.http.site import make_site
from tests.http.test_channel import answer_head

_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
_BIG = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than a loopback socket takes at once


class _Answers(Resource):
    """One resource per kind of answer the channel must send whole."""

    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request: Request) -> Any:
        path = request.path
        if path == b"/json":
            request.setHeader(b"content-type", b"application/json")
            return b'{"ok":true}'
        if path == b"/none":
            request.setResponseCode(204)
            return b""
        if path == b"/empty":
            return b""
        if path == b"/big":
            return _BIG
        if path == b"/started":
            # Started with nothing to send yet (the head is kept), never finished.
            request.setHeader(b"content-length", b"5")
            request.write(b"")
            return NOT_DONE_YET
        if path == b"/chunked":
            # No length: twisted.web sends it chunked, the second part a turn later.
            request.write(b"one,")

            def rest() -> None:
                request.write(b"two")
                request.finish()

            self.clock.callLater(0, rest)
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"no such thing"

    def render_HEAD(self, request: Request) -> bytes:
        request.setHeader(b"content-length", b"11")
        return b""


def _parse(received: bytes, heads: list[bool]) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """
    Split C{received} into answers, one per request (C{heads}: whether it was a HEAD);
    fails the test on anything malformed or left over.
    """
    answers = []
    for head_only in heads:
        head, separator, received = received.partition(b"\r\n\r\n")
        assert separator, f"an incomplete answer head: {head!r}"
        code, headers = answer_head(head)
        body = b""
        if head_only or code in (204, 304):
            pass
        elif headers.get(b"transfer-encoding") == b"chunked":
            chunks = []
            while True:
                size, _, received = received.partition(b"\r\n")
                length = int(size, 16)
                chunk, received = received[:length], received[length + 2:]
                if not length:
                    break
                chunks.append(chunk)
            body = b"".join(chunks)
        else:
            length = int(headers[b"content-length"])
            body, received = received[:length], received[length:]
            assert len(body) == length, "a short body"
        answers.append((code, headers, body))
    assert received == b"", f"bytes after the last answer: {received[:80]!r}"
    return answers


def _request(method: bytes, path: bytes, last: bool = False) -> bytes:
    close = b"Connection: close\r\n" if last else b""
    return method + b" " + path + b" HTTP/1.1\r\nHost: medichat.test\r\n" + close + b"\r\n"


class ChannelWriteTests(SynchronousTestCase):
    """
    What the channel hands its eager writer, on a transport in memory.
    """

    def connect(self, eager: bool = True) -> tuple[Any, StringTransport, list[bytes], Clock]:
        clock = Clock()
        sent: list[bytes] = []
        transport = StringTransport(peerAddress=_ADDRESS)

        def writer_for(given: Any) -> Any:
            self.assertIs(given, transport)

            def send(data: bytes) -> None:
                # The eager send's contract: in order with what the transport holds.
                sent.append(data)
                transport.write(data)

            return send

        site = make_site(_Answers(clock), 1000, clock=clock,
                         eager_writer=writer_for if eager else None)
        channel = site.buildProtocol(_ADDRESS)
        channel.makeConnection(transport)
        return channel, transport, sent, clock

    def test_head_and_body_at_once(self) -> None:
        """An answer with a body is one write: its head and its body together."""
        channel, transport, sent, _ = self.connect()
        channel.dataReceived(_request(b"GET", b"/json"))
        self.assertEqual(len(sent), 1)
        [(code, headers, body)] = _parse(transport.value(), [False])
        self.assertEqual((code, body), (200, b'{"ok":true}'))
        self.assertEqual(headers[b"content-type"], b"application/json")

    def test_no_body(self) -> None:
        """A HEAD, a 204 and an empty 200 are sent when the request is done, head only."""
        channel, transport, sent, _ = self.connect()
        channel.dataReceived(_request(b"HEAD", b"/json"))
        channel.dataReceived(_request(b"GET", b"/none"))
        channel.dataReceived(_request(b"GET", b"/empty"))
        self.assertEqual(len(sent), 3)
        answers = _parse(transport.value(), [True, False, False])
        self.assertEqual([(code, body) for code, _, body in answers],
                         [(200, b""), (204, b""), (200, b"")])
        self.assertEqual(answers[0][1][b"content-length"], b"11")

    def test_chunked(self) -> None:
        """A streamed answer: the head goes with the first chunk, the rest as it comes."""
        channel, transport, sent, clock = self.connect()
        channel.dataReceived(_request(b"GET", b"/chunked"))
        self.assertEqual(len(sent), 1)
        self.assertTrue(sent[0].startswith(b"HTTP/1.1 200 "))
        self.assertTrue(sent[0].endswith(b"4\r\none,\r\n"))
        clock.advance(0)
        [(code, headers, body)] = _parse(transport.value(), [False])
        self.assertEqual((code, headers[b"transfer-encoding"], body),
                         (200, b"chunked", b"one,two"))

    def test_pipelined_in_order(self) -> None:
        """Requests sent together are answered one after another, in order."""
        channel, transport, _, clock = self.connect()
        channel.dataReceived(
            _request(b"GET", b"/chunked") + _request(b"GET", b"/json")
            + _request(b"GET", b"/nothing")
        )
        clock.advance(0)
        answers = _parse(transport.value(), [False, False, False])
        self.assertEqual([(code, body) for code, _, body in answers],
                         [(200, b"one,two"), (200, b'{"ok":true}'), (404, b"no such thing")])

    def test_without_writer(self) -> None:
        """With no eager writer (C{--no-fast-paths}) the same bytes go through the transport."""
        channel, transport, sent, clock = self.connect(eager=False)
        channel.dataReceived(_request(b"GET", b"/json") + _request(b"HEAD", b"/json"))
        self.assertEqual(sent, [])
        answers = _parse(transport.value(), [False, True])
        self.assertEqual([code for code, _, _ in answers], [200, 200])

    def test_without_writer_one_write(self) -> None:
        """
        Without an eager writer too, an answer reaches the transport as one write: its
        head joined, with its body.
        """
        clock = Clock()
        writes: list[bytes] = []

        class Counting(StringTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)
                super().write(data)

            def writeSequence(self, data: Any) -> None:
                writes.extend(data)
                super().writeSequence(data)

        transport = Counting(peerAddress=_ADDRESS)
        site = make_site(_Answers(clock), 1000, clock=clock)
        channel = site.buildProtocol(_ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(_request(b"GET", b"/json") + _request(b"GET", b"/none"))
        self.assertEqual(len(writes), 2)
        self.assertEqual(b"".join(writes), transport.value())
        answers = _parse(transport.value(), [False, False])
        self.assertEqual([(code, body) for code, _, body in answers],
                         [(200, b'{"ok":true}'), (204, b"")])

    def test_no_writer_for_this_transport(self) -> None:
        """A transport the writer cannot use (TLS, say) is written to as before."""
        clock = Clock()
        transport = StringTransport(peerAddress=_ADDRESS)
        site = make_site(_Answers(clock), 1000, clock=clock, eager_writer=lambda t: None)
        channel = site.buildProtocol(_ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(_request(b"GET", b"/json"))
        [(code, _, body)] = _parse(transport.value(), [False])
        self.assertEqual((code, body), (200, b'{"ok":true}'))

    def test_lost_with_head_kept(self) -> None:
        """A connection lost while an answer's head is kept drops it; nothing is written."""
        channel, transport, sent, _ = self.connect()
        channel.dataReceived(_request(b"GET", b"/started"))
        self.assertEqual(sent, [])
        self.assertIsNotNone(channel._head)
        channel.connectionLost(Failure(ConnectionError("gone")))
        self.assertIsNone(channel._head)
        self.assertEqual((sent, transport.value()), ([], b""))


class _Collect(Protocol):
    """Sends its requests at once, keeps what comes back until the server closes."""

    def __init__(self, requests: bytes, done: Deferred[bytes]) -> None:
        self.requests = requests
        self.done = done
        self.received = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.requests)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.done.callback(bytes(self.received))


class _OneClient(ClientFactory):
    def __init__(self, requests: bytes) -> None:
        self.requests = requests
        self.done: Deferred[bytes] = Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Collect(self.requests, self.done)


class LoopbackTests(TestCase):
    """
    The eager send on real loopback connections, through the server's own writer.
    """

    async def exchange(self, eager: bool) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        probed = FastPaths.probe(eager).writer_for
        sends = []

        def writer(transport: Any) -> Any:
            send = probed(transport)
            if send is None:
                return None

            def counted(data: bytes) -> None:
                sends.append(len(data))
                send(data)

            return counted

        site = make_site(_Answers(reactor), 8 * 1024 * 1024, clock=reactor,
                         eager_writer=writer)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        heads = [False, True, False, False, False, False, False]
        client = _OneClient(
            _request(b"GET", b"/json") + _request(b"HEAD", b"/json")
            + _request(b"GET", b"/big") + _request(b"GET", b"/none")
            + _request(b"GET", b"/chunked") + _request(b"GET", b"/big")
            + _request(b"GET", b"/json", last=True)
        )
        reactor.connectTCP(  # type: ignore[attr-defined]
            "127.0.0.1", port.getHost().port, client)
        answers = _parse(await client.done, heads)
        # One write per answer without a body or with a body in one piece, the head with
        # it; a chunked answer's head goes with its first chunk.
        self.assertEqual(len(sends), 9 if eager else 0)
        return answers

    async def check(self, eager: bool) -> None:
        answers = await self.exchange(eager)
        self.assertEqual(
            [(code, body) for code, _, body in answers],
            [(200, b'{"ok":true}'), (200, b""), (200, _BIG), (204, b""),
             (200, b"one,two"), (200, _BIG), (200, b'{"ok":true}')],
        )

    async def test_eager(self) -> None:
        """Every kind of answer arrives whole and in order, big ones included."""
        await self.check(eager=True)

    async def test_not_eager(self) -> None:
        """The same with the eager send off."""
        await self.check(eager=False)
