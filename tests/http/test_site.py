"""
Tests for L{medichat.http.site}: the base path, and bounded request bodies.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import IOPump, connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from medichat._connections import ConnectionCap
from medichat.http import site as site_module
from medichat.http._channel import HTTPConnections
from medichat.http.site import (
    BoundedRequest,
    HTTPDate,
    build_root,
    make_site,
    normalise_base_path,
)
from tests._stomp import make_services
from tests.carriers._memory import ws_factory
from tests.http.test_channel import _answer, _Client


class BasePathTests(SynchronousTestCase):
    """
    --base-path normalisation.
    """

    def test_forms(self) -> None:
        """Leading and trailing slashes do not matter; / and empty mean the root."""
        for given, expected in [("/api", "/api"), ("api/", "/api"), ("/a/b/", "/a/b"),
                                ("/", ""), ("", "")]:
            self.assertEqual(normalise_base_path(given), expected)

    def test_refused(self) -> None:
        """Empty segments, dot segments, queries and escapes are refused."""
        for bad in ("/a//b", "/a/../b", "/a?x", "/a%20b", "/./a"):
            self.assertRaises(ValueError, normalise_base_path, bad)


class BoundedRequestTests(SynchronousTestCase):
    """
    A body over the limit is not kept in memory.
    """

    def test_declared_length(self) -> None:
        """A huge Content-Length keeps only max_body + 1 bytes."""
        request = BoundedRequest(DummyChannel(), max_body=100)
        request.gotLength(10**9)
        for _ in range(50):
            request.handleContentChunk(b"x" * 1000)
        self.assertEqual(len(request.content.getvalue()), 101)

    def test_chunked(self) -> None:
        """A chunked body (no length) is cut the same way."""
        request = BoundedRequest(DummyChannel(), max_body=10)
        request.gotLength(None)
        request.handleContentChunk(b"a" * 7)
        request.handleContentChunk(b"b" * 7)
        self.assertEqual(request.content.getvalue(), b"aaaaaaabbbb")

    def test_within_limit(self) -> None:
        """A body within the limit is kept whole."""
        request = BoundedRequest(DummyChannel(), max_body=10)
        request.gotLength(5)
        request.handleContentChunk(b"hello")
        self.assertEqual(request.content.getvalue(), b"hello")


class _Echo(Resource):
    """Records each request's args and body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[bytes, list[bytes]], bytes]] = []
        self.clients: list[Any] = []
        self.paths: list[list[bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append((dict(request.args or {}), request.content.read()))
        self.clients.append(request.getClientAddress())
        self.paths.append(list(request.postpath or []))
        return b"ok"


class RequestCostTests(SynchronousTestCase):
    """
    What twisted.web does per request that medichat does not need is skipped, with the
    same outcome.
    """

    def setUp(self) -> None:
        self.echo = _Echo()
        self.clock = Clock()
        site = make_site(self.echo, 1000, clock=self.clock)
        self.factory = HTTPConnections(site, ConnectionCap(10, self.clock), self.clock)
        self.parsed: list[bytes] = []
        real = http._parseContentType

        def parse(line: bytes) -> bytes:
            self.parsed.append(line)
            return real(line)

        self.patch(http, "_parseContentType", parse)

    def connect(self) -> tuple[Any, Any, Any, IOPump]:
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert server is not None
        client = _Client()
        client_transport = makeFakeClient(client)
        server_transport = makeFakeServer(server)
        pump = connect(server, server_transport, client, client_transport,
                       greet=False, clock=self.clock)
        return client, client_transport, server_transport, pump

    def post(self, content_type: bytes, body: bytes) -> tuple[int, bytes]:
        client, transport, _, pump = self.connect()
        transport.write(
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        pump.flush()
        code, _, answer = _answer(client.received)
        return code, answer

    def test_json_not_parsed_for_forms(self) -> None:
        """
        A JSON body's Content-Type is not parsed with the email package; the body
        arrives whole and the args stay empty.
        """
        for content_type in (b"application/json", b"Application/JSON; charset=utf-8",
                             b" application/json;charset=UTF-8", b"application/json\t;x=1"):
            self.assertEqual(self.post(content_type, b'{"a": 1}'), (200, b"ok"))
        self.assertEqual(self.parsed, [])
        self.assertEqual(self.echo.seen, [({}, b'{"a": 1}')] * 4)

    def test_other_types_parsed(self) -> None:
        """
        Any other type is parsed as twisted.web does: a form still fills the args, and
        a type that only starts like JSON is not taken for it.
        """
        self.assertEqual(
            self.post(b"application/x-www-form-urlencoded", b"a=1&b=2"), (200, b"ok"))
        self.assertEqual(self.post(b"application/jsonx", b"{}"), (200, b"ok"))
        self.assertEqual(self.parsed, [b"application/x-www-form-urlencoded",
                                       b"application/jsonx"])
        self.assertEqual(self.echo.seen[0], ({b"a": [b"1"], b"b": [b"2"]}, b"a=1&b=2"))

    def test_type_the_email_package_refuses(self) -> None:
        """
        A type holding a byte the email package takes for a line break (it would raise,
        and the connection close unanswered) is not parsed: the request reaches the
        resource, which answers it.
        """
        for byte in b"\x0b\x0c\x1c\x1d\x1e\x85":
            content_type = b"multipart/form-data;" + bytes([byte]) + b" boundary=zz"
            self.assertEqual(self.post(content_type, b"a=1"), (200, b"ok"))
        self.assertEqual(self.parsed, [])
        self.assertEqual(self.echo.seen, [({}, b"a=1")] * 6)

    def test_multipart_parsed(self) -> None:
        """A multipart form still fills the args."""
        body = (b"--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
                b"--zz--\r\n")
        self.assertEqual(self.post(b"multipart/form-data; boundary=zz", body), (200, b"ok"))
        self.assertEqual(self.echo.seen[0][0], {b"a": [b"1"]})

    def get(self, transport: Any, client: Any, pump: IOPump, path: bytes = b"/x"
            ) -> dict[bytes, bytes]:
        """One GET on a connection already open; its answer's headers."""
        client.received = b""
        transport.write(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        pump.flush()
        code, headers, _ = _answer(client.received)
        self.assertEqual(code, 200)
        return headers

    def test_date_made_once_a_second(self) -> None:
        """
        Every answer has twisted.web's Server header and its Date, whose text is made
        once a second, not once a request.
        """
        start = 1_764_000_000
        now = [start + 0.25]
        made: list[float] = []

        def counted(seconds: float) -> bytes:
            made.append(seconds)
            return datetimeToString(seconds)

        self.patch(site_module, "datetimeToString", counted)
        self.patch(site_module, "http_date", HTTPDate(lambda: now[0]))
        client, transport, _, pump = self.connect()
        dates = []
        for offset in (0.25, 0.5, 0.99, 1.0, 1.5):
            now[0] = start + offset
            headers = self.get(transport, client, pump)
            self.assertTrue(headers[b"server"].startswith(b"TwistedWeb/"))
            dates.append(headers[b"date"])
        self.assertEqual(
            dates, [datetimeToString(start)] * 3 + [datetimeToString(start + 1)] * 2)
        self.assertEqual(made, [start, start + 1])

    def test_date_now(self) -> None:
        """The site's own Date is the wall clock's second, as twisted.web's is."""
        client, transport, _, pump = self.connect()
        before = datetimeToString()
        date = self.get(transport, client, pump)[b"date"]
        self.assertIn(date, (before, datetimeToString()))

    def test_path_segments_decoded(self) -> None:
        """Segments are percent-decoded as twisted.web decodes them; others kept."""
        client, transport, _, pump = self.connect()
        self.get(transport, client, pump, b"/a%20b/c/%2F%zz/")
        self.assertEqual(self.echo.paths, [[b"a b", b"c", b"/%zz", b""]])

    def test_server_as_a_whole(self) -> None:
        """
        A request for the server as a whole (C{*}) gets twisted.web's own answer (200 to
        OPTIONS, 405 to anything else), with the same default headers; no resource
        sees it.
        """
        client, transport, _, pump = self.connect()
        for method, expected in ((b"OPTIONS", 200), (b"GET", 405)):
            client.received = b""
            transport.write(method + b" * HTTP/1.1\r\nHost: h\r\n\r\n")
            pump.flush()
            code, headers, _ = _answer(client.received)
            self.assertEqual((code, headers[b"content-length"]), (expected, b"0"))
            self.assertTrue(headers[b"server"].startswith(b"TwistedWeb/"))
            self.assertIn(b"date", headers)
        self.assertEqual(headers[b"allow"], b"OPTIONS")
        self.assertEqual(self.echo.seen, [])

    def read_once(self, name: str) -> tuple[list[Any], Any]:
        """
        Three requests on one connection, counting the calls of its transport's method
        C{name}; what the requests saw as their client's address, and what the method
        itself gives.
        """
        client, transport, server_transport, pump = self.connect()
        calls = []
        real = getattr(server_transport, name)

        def counted() -> Any:
            calls.append(None)
            return real()

        setattr(server_transport, name, counted)
        for _ in range(3):
            transport.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            pump.flush()
        self.assertEqual(len(self.echo.seen), 3)
        self.assertEqual(len(calls), 1)
        return self.echo.clients, real()

    def test_local_address_read_once(self) -> None:
        """The connection's local address is asked for once, not once per request."""
        self.read_once("getHost")

    def test_peer_address_read_once(self) -> None:
        """The client's address is asked for once, not once per request, and is the same."""
        clients, peer = self.read_once("getPeer")
        self.assertEqual(clients, [peer] * 3)


class UpgradeTests(SynchronousTestCase):
    """
    A connection taken over by the WebSocket endpoint leaves its HTTP channel holding
    nothing.
    """

    def test_channel_lets_go_of_the_request(self) -> None:
        """
        Once Autobahn has taken the connection over, the channel no longer lists the
        upgrade request: the two referred to each other, a reference cycle per WebSocket
        connection for the garbage collector.
        """
        services = make_services()
        clock = services.clock
        root = build_root("/api", Resource(), WebSocketResource(ws_factory(services)))
        site = make_site(root, 1000, clock=clock)
        factory = HTTPConnections(site, ConnectionCap(10, clock), clock)
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert server is not None
        channel = server.wrappedProtocol
        client = _Client()
        client_transport = makeFakeClient(client)
        pump = connect(server, makeFakeServer(server), client, client_transport,
                       greet=False, clock=clock)
        client_transport.write(
            b"GET /api/v1/chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n")
        pump.flush()
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received[:80])
        self.assertIsNot(server.wrappedProtocol, channel)
        self.assertEqual(channel.requests, [])
        # Nor does a timer of the channel's (its request head's deadline) keep it.
        self.assertEqual(
            [call for call in clock.getDelayedCalls()
             if getattr(call.func, "__self__", None) is channel], [])
