"""
Tests for L{medichat.http._channel} and L{medichat._connections}: the request-head deadline,
the cap on open connections, and draining HTTP connections at shutdown.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from medichat._connections import CappedFactory, ConnectionCap, raw_transport
from medichat.carriers._fastpath import FastPaths, socket_of
from medichat.errors import RateLimited
from medichat.http import site as site_module
from medichat.http._channel import HTTPConnections
from medichat.http.problems import problem_for, write_problem
from medichat.http.site import make_site

_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
_HEAD = b"GET /ok HTTP/1.1\r\nHost: medichat.test\r\n\r\n"


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"ok"


class _Held(Resource):
    """Answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        request = self.requests.pop(0)
        request.write(b"done")
        request.finish()


class _Upgraded(Protocol):
    """Stands in for the WebSocket protocol that takes a connection over."""

    lost = False

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = True


class _Client(Protocol):
    """Keeps what the server sent and whether it closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed = True


class _Setup:
    """A site on a clock, behind the connection cap, and clients connected to it."""

    def __init__(self, head_timeout: float = 10.0, limit: int = 100,
                 idle_timeout: float | None = None, root: Resource | None = None,
                 whole_requests: Any = None) -> None:
        self.clock = Clock()
        self.held = _Held()
        if root is None:
            root = Resource()
            root.putChild(b"ok", _Ok())
            root.putChild(b"held", self.held)
        site = make_site(root, 1000, clock=self.clock, head_timeout=head_timeout,
                         whole_requests=whole_requests)
        if idle_timeout is not None:
            site.timeOut = idle_timeout
        self.cap = ConnectionCap(limit, self.clock)
        self.factory = HTTPConnections(site, self.cap, self.clock)

    def connect(self) -> tuple[_Client, FakeTransport, IOPump]:
        return connect_client(self.factory, self.clock)


def connect_client(factory: Factory, clock: Clock) -> tuple[_Client, FakeTransport, IOPump]:
    """A client connected to C{factory} in memory, its transport, and their pump."""
    server = factory.buildProtocol(_ADDRESS)
    assert server is not None
    client = _Client()
    client_transport = makeFakeClient(client)
    pump = connect(server, makeFakeServer(server), client, client_transport,
                   greet=False, clock=clock)
    return client, client_transport, pump


def answer_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    """An answer's status code and headers (names in lower case), from its head."""
    lines = head.split(b"\r\n")
    code = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return code, headers


def _answer(received: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = received.partition(b"\r\n\r\n")
    code, headers = answer_head(head)
    if headers.get(b"transfer-encoding") == b"chunked":
        chunks = []
        while True:
            size, _, body = body.partition(b"\r\n")
            length = int(size, 16)
            if not length:
                break
            chunks.append(body[:length])
            body = body[length + 2:]
        body = b"".join(chunks)
    return code, headers, body


class HeadDeadlineTests(SynchronousTestCase):
    """
    The request line and headers must arrive within --request-head-timeout.
    """

    def test_trickled_head(self) -> None:
        """A head sent a byte at a time past the deadline gets 408 problem+json and a close."""
        setup = _Setup(head_timeout=10)
        client, transport, pump = setup.connect()
        for byte in _HEAD[:-2]:
            transport.write(bytes([byte]))
            pump.flush()
            setup.clock.advance(0.5)
        self.assertTrue(client.closed)
        code, headers, body = _answer(client.received)
        self.assertEqual(code, 408)
        self.assertEqual(headers[b"content-type"], b"application/problem+json")
        self.assertEqual(headers[b"connection"], b"close")
        problem = json.loads(body)
        self.assertEqual((problem["status"], problem["title"]), (408, "Request Timeout"))
        self.assertEqual(int(headers[b"content-length"]), len(body))

    def test_upgrade_head(self) -> None:
        """The WebSocket handshake request is held to the same deadline."""
        setup = _Setup(head_timeout=5)
        client, transport, pump = setup.connect()
        transport.write(b"GET /api/v1/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        pump.flush()
        setup.clock.advance(4.9)
        pump.flush()
        self.assertEqual(client.received, b"")
        setup.clock.advance(0.1)
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 408)
        self.assertTrue(client.closed)

    def test_silent_connection(self) -> None:
        """A connection that sends nothing is closed at the deadline, with no answer."""
        setup = _Setup(head_timeout=10)
        client, transport, pump = setup.connect()
        setup.clock.advance(10)
        pump.flush()
        self.assertTrue(client.closed)
        self.assertEqual(client.received, b"")

    def test_prompt_head(self) -> None:
        """A head complete within the deadline is answered, and no 408 follows later."""
        setup = _Setup(head_timeout=10)
        client, transport, pump = setup.connect()
        transport.write(_HEAD[:10])
        pump.flush()
        setup.clock.advance(9)
        transport.write(_HEAD[10:])
        pump.flush()
        setup.clock.advance(5)
        pump.flush()
        code, _, body = _answer(client.received)
        self.assertEqual((code, body), (200, b"ok"))
        self.assertFalse(client.closed)

    def test_keep_alive(self) -> None:
        """On a kept-alive connection the deadline runs from each request's first byte."""
        setup = _Setup(head_timeout=10)
        client, transport, pump = setup.connect()
        transport.write(_HEAD)
        pump.flush()
        setup.clock.advance(30)
        pump.flush()
        self.assertFalse(client.closed)
        client.received = b""
        transport.write(_HEAD[:5])
        pump.flush()
        setup.clock.advance(9.9)
        pump.flush()
        self.assertEqual(client.received, b"")
        setup.clock.advance(0.1)
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 408)
        self.assertTrue(client.closed)

    def test_keep_alive_soon(self) -> None:
        """
        A request that starts before the previous one's deadline would have come has its
        own full deadline from its first byte, and the previous one's does not fire.
        """
        setup = _Setup(head_timeout=10)
        client, transport, pump = setup.connect()
        transport.write(_HEAD)
        pump.flush()
        setup.clock.advance(5)
        client.received = b""
        transport.write(_HEAD[:5])
        pump.flush()
        setup.clock.advance(9.9)
        pump.flush()
        self.assertEqual(client.received, b"")
        self.assertFalse(client.closed)
        transport.write(_HEAD[5:])
        pump.flush()
        setup.clock.advance(30)
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 200)
        self.assertFalse(client.closed)
        client.received = b""
        transport.write(_HEAD[:5])
        pump.flush()
        setup.clock.advance(10)
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 408)
        self.assertTrue(client.closed)

    def test_slow_answer(self) -> None:
        """The deadline covers the head only: a slow answer is not cut off."""
        setup = _Setup(head_timeout=10)
        client, transport, pump = setup.connect()
        transport.write(_HEAD.replace(b"/ok", b"/held"))
        pump.flush()
        setup.clock.advance(30)
        setup.held.answer()
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 200)
        self.assertFalse(client.closed)


class IdleTimeoutTests(SynchronousTestCase):
    """
    twisted.web's idle timeout, whose timer the channel keeps from one request to the
    next: the same closings as Twisted's own, and no timer left on a connection that is
    gone.
    """

    def timers(self, setup: _Setup, channel: Any) -> list[Any]:
        return [call for call in setup.clock.getDelayedCalls()
                if getattr(call.func, "__self__", None) is channel]

    def closed_after(self, setup: _Setup, client: _Client, pump: IOPump,
                     seconds: float) -> None:
        """The connection, open now, is still open just before C{seconds}, closed at them."""
        setup.clock.advance(seconds - 0.1)
        pump.flush()
        self.assertFalse(client.closed)
        setup.clock.advance(0.1)
        pump.flush()
        self.assertTrue(client.closed)

    def test_idle_closed(self) -> None:
        """A kept-alive connection idle for the timeout after its answer is closed."""
        setup = _Setup(idle_timeout=60)
        client, transport, pump = setup.connect()
        setup.clock.advance(5)
        transport.write(_HEAD)
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 200)
        self.closed_after(setup, client, pump, 60)

    def test_long_answer(self) -> None:
        """An answer that takes longer than the timeout is not cut off; idleness counts after it."""
        setup = _Setup(idle_timeout=60)
        client, transport, pump = setup.connect()
        transport.write(_HEAD.replace(b"/ok", b"/held"))
        pump.flush()
        setup.clock.advance(100)
        pump.flush()
        self.assertFalse(client.closed)
        setup.held.answer()
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 200)
        self.closed_after(setup, client, pump, 60)

    def test_requests_keep_it_open(self) -> None:
        """Requests closer together than the timeout keep the connection open."""
        setup = _Setup(idle_timeout=60)
        client, transport, pump = setup.connect()
        for _ in range(5):
            transport.write(_HEAD)
            pump.flush()
            setup.clock.advance(50)
            pump.flush()
        self.assertFalse(client.closed)
        self.assertEqual(client.received.count(b"HTTP/1.1 200 "), 5)

    def test_no_timer_left(self) -> None:
        """A connection closed leaves no timer of its channel's behind."""
        setup = _Setup(idle_timeout=60)
        client, transport, pump = setup.connect()
        transport.write(_HEAD)
        pump.flush()
        [connection] = setup.factory.protocols
        channel = connection.wrappedProtocol
        self.assertNotEqual(self.timers(setup, channel), [])
        transport.loseConnection()
        pump.flush()
        self.assertEqual(self.timers(setup, channel), [])


class _Limited(Resource):
    """Answers 429 as the API does (L{write_problem}), or 200 for C{?ok}."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        if request.args.get(b"ok"):
            return b"ok"
        limited = RateLimited("at most 1 per second", retry_after=0.2)
        return write_problem(request, problem_for(limited))


class RateLimitHoldTests(SynchronousTestCase):
    """
    A request answered 429 holds its kept-alive connection: nothing more is read from it
    for C{rate_limit_hold} seconds.
    """

    def serve(self, hold: float = 1.0) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        root = Resource()
        root.putChild(b"limited", _Limited())
        site = make_site(root, 1000, clock=clock, rate_limit_hold=hold)
        channel = site.buildProtocol(_ADDRESS)
        transport = StringTransport(peerAddress=_ADDRESS)
        channel.makeConnection(transport)
        return channel, transport, clock

    def held(self, channel: Any, clock: Clock) -> bool:
        return any(call.func == channel._release for call in clock.getDelayedCalls())

    def request(self, channel: Any, transport: StringTransport, query: bytes = b"") -> int:
        transport.clear()
        channel.dataReceived(_HEAD.replace(b"/ok", b"/limited" + query))
        return _answer(transport.value())[0]

    def test_held_after_429(self) -> None:
        """After a 429 the connection is paused for the hold, then read again."""
        channel, transport, clock = self.serve(hold=1.0)
        self.assertEqual(self.request(channel, transport), 429)
        self.assertEqual(transport.producerState, "paused")
        clock.advance(0.9)
        self.assertEqual(transport.producerState, "paused")
        clock.advance(0.1)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.request(channel, transport, b"?ok=1"), 200)
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(self.held(channel, clock))

    def test_other_answers_not_held(self) -> None:
        """Any other answer leaves the connection reading."""
        channel, transport, clock = self.serve()
        self.assertEqual(self.request(channel, transport, b"?ok=1"), 200)
        self.assertEqual(transport.producerState, "producing")

    def test_no_hold(self) -> None:
        """With a hold of 0 a 429 leaves the connection reading."""
        channel, transport, clock = self.serve(hold=0)
        self.assertEqual(self.request(channel, transport), 429)
        self.assertEqual(transport.producerState, "producing")

    def test_lost_while_held(self) -> None:
        """A connection lost while held leaves no timer behind."""
        channel, transport, clock = self.serve()
        self.assertEqual(self.request(channel, transport), 429)
        self.assertTrue(self.held(channel, clock))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.held(channel, clock))


class ConnectionCapTests(SynchronousTestCase):
    """
    Past --max-connections new connections are closed at once.
    """

    def test_refused_past_limit(self) -> None:
        """The connection over the limit gets no protocol; a closed one frees its place."""
        setup = _Setup(limit=2)
        first = setup.connect()
        setup.connect()
        self.assertIsNone(setup.factory.buildProtocol(_ADDRESS))
        self.assertEqual(setup.cap.open, 2)
        first[1].loseConnection()
        first[2].flush()
        self.assertEqual(setup.cap.open, 1)
        self.assertIsNotNone(setup.factory.buildProtocol(_ADDRESS))

    def test_logged_once_per_interval(self) -> None:
        """Refusals are logged at most once per interval, with how many there were."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        setup = _Setup(limit=1)
        setup.connect()
        for _ in range(5):
            setup.factory.buildProtocol(_ADDRESS)
        setup.clock.advance(30)
        setup.factory.buildProtocol(_ADDRESS)
        refusals = [e for e in events if e.get("limit") == 1]
        self.assertEqual(len(refusals), 1)
        setup.clock.advance(31)
        setup.factory.buildProtocol(_ADDRESS)
        refusals = [e for e in events if e.get("limit") == 1]
        self.assertEqual([e["refused"] for e in refusals], [1, 6])

    def test_shared_between_factories(self) -> None:
        """One cap counts the connections of every listener it guards."""
        setup = _Setup(limit=2)
        setup.connect()
        other = CappedFactory(setup.factory.wrappedFactory, setup.cap)
        self.assertIsNotNone(other.buildProtocol(_ADDRESS))
        wrapper = other.buildProtocol(_ADDRESS)
        assert wrapper is not None
        wrapper.makeConnection(makeFakeServer(wrapper))
        self.assertIsNone(setup.factory.buildProtocol(_ADDRESS))

    def test_upgraded_connection_counted(self) -> None:
        """A connection taken over by another protocol (a WebSocket) counts until it closes."""
        setup = _Setup(limit=1)
        _, transport, pump = setup.connect()
        (wrapper,) = setup.factory.protocols
        upgraded = _Upgraded()
        wrapper.wrappedProtocol = upgraded
        self.assertIsNone(setup.factory.buildProtocol(_ADDRESS))
        transport.loseConnection()
        pump.flush()
        self.assertTrue(upgraded.lost)
        self.assertEqual(setup.cap.open, 0)

    def test_raw_transport(self) -> None:
        """The fast write path sees through the counting wrapper to the real transport."""
        setup = _Setup()
        setup.connect()
        (wrapper,) = setup.factory.protocols
        self.assertIsInstance(raw_transport(wrapper), FakeTransport)
        real = makeFakeServer(_Client())
        self.assertIs(raw_transport(real), real)

    def test_fast_path_kept(self) -> None:
        """The carriers still find the socket of a counted TCP connection."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        factory = CappedFactory(Factory.forProtocol(Protocol), ConnectionCap(1, Clock()))
        wrapper = factory.buildProtocol(_ADDRESS)
        assert wrapper is not None
        wrapper.makeConnection(tcp.Connection(ours, None))
        self.assertIs(socket_of(wrapper, FastPaths(eager_send=True)), ours)


class DrainTests(SynchronousTestCase):
    """
    At shutdown, requests in flight are answered, then their connections close.
    """

    def test_idle_closed(self) -> None:
        """Idle connections (nothing of a request received) close at once."""
        setup = _Setup()
        client, transport, pump = setup.connect()
        transport.write(_HEAD)
        pump.flush()
        done = setup.factory.drain(25)
        pump.flush()
        self.assertTrue(client.closed)
        self.assertIsNone(self.successResultOf(done))

    def test_in_flight_answered(self) -> None:
        """A request being answered ends with Connection: close, then the drain ends."""
        setup = _Setup()
        client, transport, pump = setup.connect()
        transport.write(_HEAD.replace(b"/ok", b"/held"))
        pump.flush()
        done = setup.factory.drain(25)
        pump.flush()
        self.assertNoResult(done)
        self.assertFalse(client.closed)
        setup.held.answer()
        pump.flush()
        code, headers, body = _answer(client.received)
        self.assertEqual((code, body, headers[b"connection"]), (200, b"done", b"close"))
        self.assertTrue(client.closed)
        self.successResultOf(done)

    def test_head_arriving(self) -> None:
        """A request whose head is still arriving is answered once it is complete."""
        setup = _Setup()
        client, transport, pump = setup.connect()
        transport.write(_HEAD[:7])
        pump.flush()
        done = setup.factory.drain(25)
        transport.write(_HEAD[7:])
        pump.flush()
        code, headers, body = _answer(client.received)
        self.assertEqual((code, body, headers[b"connection"]), (200, b"ok", b"close"))
        self.assertTrue(client.closed)
        self.successResultOf(done)

    def test_body_arriving(self) -> None:
        """A request whose body is still arriving is answered once it is complete."""
        setup = _Setup()
        client, transport, pump = setup.connect()
        transport.write(b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        pump.flush()
        done = setup.factory.drain(25)
        pump.flush()
        self.assertFalse(client.closed)
        transport.write(b"cd")
        pump.flush()
        self.assertEqual(setup.held.requests[0].content.read(), b"abcd")
        setup.held.answer()
        pump.flush()
        self.assertEqual(_answer(client.received)[0], 200)
        self.assertTrue(client.closed)
        self.successResultOf(done)

    def test_timeout(self) -> None:
        """A request still unanswered at --shutdown-timeout is cut off and the drain ends."""
        setup = _Setup()
        client, transport, pump = setup.connect()
        transport.write(_HEAD.replace(b"/ok", b"/held"))
        pump.flush()
        done: Deferred[None] = setup.factory.drain(25)
        setup.clock.advance(24.9)
        self.assertNoResult(done)
        setup.clock.advance(0.1)
        pump.flush()
        self.successResultOf(done)
        self.assertTrue(client.closed)
        self.assertEqual(setup.clock.getDelayedCalls(), [])

    def test_upgraded_not_waited_for(self) -> None:
        """A connection taken over by a WebSocket is not an HTTP request to wait for."""
        setup = _Setup()
        _, _, idle_pump = setup.connect()
        client, transport, pump = setup.connect()
        transport.write(_HEAD.replace(b"/ok", b"/held"))
        pump.flush()
        done = setup.factory.drain(25)
        idle_pump.flush()
        self.assertNoResult(done)
        (wrapper,) = setup.factory.protocols
        wrapper.wrappedProtocol = _Upgraded()
        self.successResultOf(done)

    def test_nothing_open(self) -> None:
        """With no connection open the drain ends at once and leaves no timer."""
        setup = _Setup()
        self.successResultOf(setup.factory.drain(25))
        self.assertEqual(setup.clock.getDelayedCalls(), [])


class _Recorder(Resource):
    """Records what each request looks like to a resource, and answers it; or holds it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []
        self.hold = False
        self.held: list[Request] = []

    def render(self, request: Request) -> Any:
        assert request.content is not None
        self.seen.append((
            request.method, request.uri, request.path, request.clientproto,
            sorted(request.requestHeaders.getAllRawHeaders()), request.content.read(),
            request.args, request.received_cookies, request.prepath, request.postpath,
        ))
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return b"seen %d" % len(self.seen)


class WholeRequestTests(SynchronousTestCase):
    """
    A POST that arrives whole is read in one pass (L{medichat.http._whole}) when the
    channel is given the handover of L{FastPaths}: the resource sees the same request and
    the client gets the same answer as when twisted.web reads it a line at a time;
    anything else is twisted.web's, as before.
    """

    def setUp(self) -> None:
        self.lines = 0
        real = site_module.Channel.lineReceived

        def counted(channel: Any, line: bytes) -> None:
            self.lines += 1
            real(channel, line)

        self.patch(site_module.Channel, "lineReceived", counted)

    def open(self, whole: bool, idle_timeout: float | None = None
             ) -> tuple[_Recorder, _Client, FakeTransport, IOPump, Clock]:
        recorder = _Recorder()
        handover = FastPaths.probe().whole_request_handover() if whole else None
        self.assertEqual(handover is not None, whole)
        self.patch(site_module, "http_date", lambda: b"Tue, 01 Dec 2026 00:00:00 GMT")
        setup = _Setup(idle_timeout=idle_timeout, root=recorder, whole_requests=handover)
        client, client_transport, pump = setup.connect()
        return recorder, client, client_transport, pump, setup.clock

    def both(self, *writes: bytes) -> tuple[list[Any], bytes, bool]:
        """
        The same bytes (each element one read) to a channel with the handover and to one
        without: what their resources saw and what their clients got (the request ids
        set aside), which must agree; and whether the first one's connection closed.
        """
        results = []
        for whole in (True, False):
            recorder, client, transport, pump, _ = self.open(whole)
            for data in writes:
                transport.write(data)
                pump.flush()
            answer = re.sub(rb"X-Request-Id: [^\r]*", b"X-Request-Id: -", client.received)
            results.append((recorder.seen, answer, client.closed))
        self.assertEqual(results[0], results[1])
        return results[0]

    def post(self, *headers: bytes, body: bytes = b'{"message": "hi"}',
             target: bytes = b"/api/v1/conversation/c/message?x=1") -> bytes:
        lines = [b"POST " + target + b" HTTP/1.1", b"Host: medichat.test", *headers,
                 b"Content-Length: %d" % len(body)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def test_read_whole(self) -> None:
        """
        A whole POST, and the next on the same connection, reach the resource as
        twisted.web would have read them, and their answers are the same bytes; no line
        of theirs goes through the line reader.
        """
        first = self.post(b"Content-Type: application/json", b"Cookie: a=1; b=2",
                          b"authorization:  Bearer x.y.z ")
        seen, answer, closed = self.both(first, self.post(body=b""))
        self.assertEqual(len(seen), 2)
        self.assertEqual(seen[0][0:4], (b"POST", b"/api/v1/conversation/c/message?x=1",
                                        b"/api/v1/conversation/c/message", b"HTTP/1.1"))
        self.assertEqual(seen[0][7], {b"a": b"1", b"b": b"2"})
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(closed)
        self.lines = 0
        recorder, client, transport, pump, _ = self.open(True)
        transport.write(first)
        pump.flush()
        self.assertEqual((len(recorder.seen), self.lines), (1, 0))

    def test_then_line_by_line(self) -> None:
        """After a request read whole, one twisted.web reads (a GET) is read as before."""
        seen, answer, _ = self.both(self.post(), _HEAD, self.post())
        self.assertEqual([s[0] for s in seen], [b"POST", b"GET", b"POST"])
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 3)

    def test_declined_alike(self) -> None:
        """
        What the one pass declines (split over reads, two in one read, a form, a folded
        header, a malformed one) is read by twisted.web, with its outcome.
        """
        post = self.post()
        for writes in [
            (post[:20], post[20:]),
            (post + post,),
            (self.post(b"Transfer-Encoding: chunked", body=b""),),
            (self.post(b"X-A: 1", b" folded", b"Content-Type: application/x-www-form-urlencoded",
                       body=b"a=1"),),
            (self.post(b"Bad Name: 1"),),
        ]:
            self.both(*writes)
        self.assertGreater(self.lines, 0)

    def test_closes_when_asked(self) -> None:
        """C{Connection: close} is honoured: answered, then closed."""
        seen, answer, closed = self.both(self.post(b"Connection: close"))
        self.assertEqual(len(seen), 1)
        self.assertTrue(closed)

    def test_bytes_while_handled(self) -> None:
        """
        A request that comes while one read whole is still being answered waits for it
        (twisted.web's raw mode and buffer), then is read and answered in turn.
        """
        recorder, client, transport, pump, _ = self.open(True)
        recorder.hold = True
        transport.write(self.post())
        pump.flush()
        transport.write(_HEAD)
        pump.flush()
        self.assertEqual(len(recorder.seen), 1)
        recorder.hold = False
        recorder.held[0].write(b"done")
        recorder.held[0].finish()
        pump.flush()
        self.assertEqual([s[0] for s in recorder.seen], [b"POST", b"GET"])
        self.assertEqual(client.received.count(b"HTTP/1.1 200 OK"), 2)

    def test_idle_timeout_kept(self) -> None:
        """
        The idle timeout is off while a request read whole is handled, and counts again
        from its answer, as for any request.
        """
        recorder, client, transport, pump, clock = self.open(True, idle_timeout=30)
        recorder.hold = True
        transport.write(self.post())
        pump.flush()
        clock.advance(60)
        pump.flush()
        self.assertFalse(client.closed)
        recorder.held[0].finish()
        pump.flush()
        clock.advance(29)
        pump.flush()
        self.assertFalse(client.closed)
        clock.advance(2)
        pump.flush()
        self.assertTrue(client.closed)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @example([(b"X-A", b"a\x00b")], b"ab", b"/api/x", True)
    @example([(b"X-A", b"a\rb")], b"ab", b"/api/x", True)
    @example([(b"x-b", b"a\nb")], b"", b"/api/x", True)
    @example([(b"Bad Name", b"1")], b"ab", b"/api/x", True)
    @example([(b"Content-Length", b"2")], b"ab", b"/api/x", True)
    @example([(b"Content-Type", b"a\x0bb")], b"ab", b"/api/x", True)
    @given(
        st.lists(st.tuples(
            st.sampled_from([b"X-A", b"x-b", b"Content-Type", b"Cookie", b"Connection",
                             b"Content-Length", b"Bad Name", b"", b"X:Y", b"Expect"]),
            st.one_of(st.binary(max_size=12),
                      st.sampled_from([b" v\t", b"a\x00b", b"a\rb", b"a\nb", b"1", b""])),
        ), max_size=5),
        st.binary(max_size=20),
        st.sampled_from([b"/api/x", b"/a%20b?q=1", b"/\xff", b"*", b"/a b"]),
        st.booleans(),
    )
    def test_same_outcome(self, headers: list[tuple[bytes, bytes]], body: bytes,
                          target: bytes, length: bool) -> None:
        """
        Any POST in one read, well formed or not, gets the same request to the resource
        and the same answer bytes, read whole or a line at a time.
        """
        lines = [b"POST " + target + b" HTTP/1.1", b"Host: h"]
        lines += [name + b":" + value for name, value in headers]
        if length:
            lines.append(b"Content-Length: %d" % len(body))
        self.both(b"\r\n".join(lines) + b"\r\n\r\n" + body)
