"""
Tests for bad input at the HTTP edge (L{medichat.http.site}, L{medichat.http.problems}):
whatever bytes arrive, the answer is a problem+json response, never a 500, a bare status
line or a closed connection.

Requests go through the real site (channel, request and resource tree) over a
L{StringTransport}, as a socket would deliver them.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from attrs import frozen
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from medichat.auth.checkers import JWTChecker
from medichat.auth.realm import build_portal
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.http.origins import OriginPolicy
from medichat.http.problems import Problem, write_problem
from medichat.http.rest import RestAPI
from medichat.http.site import build_root, make_site
from medichat.pubsub.hub import InProcessHub
from medichat.testing import MemoryStore
from tests._feed import started_feed

SECRET = b"k" * 32
DASHBOARD = "https://dashboard.example"
UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@frozen
class Answer:
    """One response as it went over the wire."""

    status: int
    reason: bytes
    headers: dict[bytes, bytes]
    body: bytes
    closed: bool

    @property
    def problem(self) -> Any:
        return json.loads(self.body)


def parse_answer(data: bytes, closed: bool) -> Answer:
    """Split one HTTP/1.1 response (with a Content-Length or chunked body)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    _, code, reason = (status_line.split(b" ", 2) + [b""])[:3]
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            body, rest = body + rest[:size], rest[size + 2 :]
    else:
        body = rest[: int(headers.get(b"content-length", b"0"))]
    return Answer(int(code), reason, headers, body, closed)


class EdgeTestCase(SynchronousTestCase):
    """
    The whole site: the REST API under C{/api} (its store never started: nothing here may
    reach it) and a real Autobahn WebSocket resource at C{/api/v1/chat}.
    """

    allowed_origins = [DASHBOARD]

    def setUp(self) -> None:
        self.clock = Clock()
        store = MemoryStore(self.clock)
        hub = InProcessHub()
        self.api = api = RestAPI(
            conversations=ConversationService(
                store, hub, self.clock, InProcessPresence(hub), started_feed(store, hub, self.clock)
            ),
            portal=build_portal([JWTChecker(secret=SECRET, clock=self.clock)]),
            accounts=None,
            origins=OriginPolicy(self.allowed_origins),
            store=store,
            clock=self.clock,
        )
        factory = WebSocketServerFactory(reactor=self.clock)
        factory.protocol = WebSocketServerProtocol
        chat = WebSocketResource(factory)
        root = build_root("/api", api.resource(), chat, OriginPolicy(self.allowed_origins))
        self.site = make_site(root, 65536, clock=self.clock)

    def send(self, data: bytes) -> Answer:
        """Deliver C{data} on a new connection; return what was answered."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        assert channel is not None
        transport = StringTransport()
        transport.protocol = channel  # as on a TCP transport, for Autobahn's takeover
        channel.makeConnection(transport)
        channel.dataReceived(data)
        self.assertTrue(transport.value(), "nothing was answered")
        return parse_answer(transport.value(), transport.disconnecting)

    def get(self, path: bytes, headers: bytes = b"") -> Answer:
        """A C{GET} of C{path} with extra raw header lines."""
        return self.send(
            b"GET " + path + b" HTTP/1.1\r\nHost: medichat.test\r\n" + headers + b"\r\n"
        )

    def assertProblem(self, answer: Answer, status: int, reason: bytes) -> str:
        """C{answer} is a problem+json C{status} with C{reason}; return its detail."""
        self.assertEqual((answer.status, answer.reason), (status, reason), answer.body)
        self.assertEqual(answer.headers[b"content-type"], b"application/problem+json")
        problem = answer.problem
        self.assertEqual(list(problem), ["type", "title", "status", "detail"])
        self.assertEqual(problem["status"], status)
        self.assertEqual(problem["title"].encode("ascii"), reason)
        self.assertNotIn("Traceback", problem["detail"])
        detail: str = problem["detail"]
        return detail


class HeaderEncodingTests(EdgeTestCase):
    """
    A header value that is not UTF-8 is refused at the edge: 403 for C{Origin}, 400 for
    any other header, on every path and before any WebSocket upgrade.
    """

    def test_origin_on_health(self) -> None:
        """A non-UTF-8 Origin on the unauthenticated health check is a 403, not a 500."""
        answer = self.get(b"/api/health", b"Origin: https://\xff.example\r\n")
        detail = self.assertProblem(answer, 403, b"Forbidden")
        self.assertEqual(detail, "Origin header: not UTF-8")

    def test_origin_wins(self) -> None:
        """With several bad headers, a bad Origin still answers 403."""
        answer = self.get(b"/api/v1/me", b"Authorization: Bearer \xff\r\nOrigin: \xfe\r\n")
        self.assertProblem(answer, 403, b"Forbidden")

    def test_any_header(self) -> None:
        """Authorization, Idempotency-Key, Cookie, Content-Type, Host or any other: 400."""
        for name in (b"Authorization", b"Idempotency-Key", b"Cookie", b"Content-Type",
                     b"X-Anything"):
            answer = self.get(b"/api/v1/me", name + b": a\xc3\x28b\r\n")
            detail = self.assertProblem(answer, 400, b"Bad Request")
            self.assertEqual(detail, f"{name.decode()} header: not UTF-8")
        answer = self.send(b"GET /api/health HTTP/1.1\r\nHost: \xff\r\n\r\n")
        self.assertEqual(self.assertProblem(answer, 400, b"Bad Request"), "Host header: not UTF-8")

    def test_outside_base_path(self) -> None:
        """Paths outside the API are guarded too."""
        answer = self.get(b"/elsewhere", b"Cookie: x=\xff\r\n")
        self.assertProblem(answer, 400, b"Bad Request")

    def test_utf8_accepted(self) -> None:
        """UTF-8 beyond ASCII passes the guard (an unauthenticated /v1/me is then a 401)."""
        answer = self.get(b"/api/v1/me", "X-Name: Zoë\r\n".encode())
        self.assertProblem(answer, 401, b"Unauthorized")

    def test_websocket_handshake(self) -> None:
        """A bad byte in a WebSocket handshake is refused before the upgrade."""
        for header, status in ((b"Cookie: medichat_session=\xff", 400),
                               (b"Authorization: Bearer \xff", 400),
                               (b"Sec-WebSocket-Protocol: v12.stomp\xff", 400),
                               (b"Origin: http://\xff", 403)):
            answer = self.get(b"/api/v1/chat", UPGRADE + header + b"\r\n")
            self.assertEqual(answer.status, status, header)
            self.assertEqual(answer.headers[b"content-type"], b"application/problem+json")


class UnguardedAPITests(EdgeTestCase):
    """
    The REST resource alone (without the site's guard) refuses non-UTF-8 headers too.
    """

    def setUp(self) -> None:
        super().setUp()
        self.site = make_site(self.api.resource(), 65536, clock=self.clock)

    def test_origin(self) -> None:
        """A non-UTF-8 Origin: 403."""
        answer = self.get(b"/health", b"Origin: https://\xff.example\r\n")
        detail = self.assertProblem(answer, 403, b"Forbidden")
        self.assertEqual(detail, "Origin header: not UTF-8")

    def test_authorization(self) -> None:
        """A non-UTF-8 Authorization: 400."""
        answer = self.get(b"/v1/me", b"Authorization: Bearer \xff\r\n")
        detail = self.assertProblem(answer, 400, b"Bad Request")
        self.assertEqual(detail, "Authorization header: not UTF-8")

    def test_idempotency_key(self) -> None:
        """A non-UTF-8 Idempotency-Key: 400 (after authentication)."""
        token = jwt.encode({"sub": "c1", "exp": 2_000_000_000}, SECRET, algorithm="HS256")
        answer = self.send(
            b"POST /v1/conversation/28ccd489-f588-4d35-99a9-1e74ec2475b2/message HTTP/1.1\r\n"
            b"Host: medichat.test\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
            b"Idempotency-Key: \xff\r\n\r\n"
        )
        detail = self.assertProblem(answer, 400, b"Bad Request")
        self.assertEqual(detail, "Idempotency-Key header: not UTF-8")


class AnyOriginTests(EdgeTestCase):
    """
    With C{--allowed-origin *}, any UTF-8 origin is echoed back, as UTF-8.
    """

    allowed_origins = ["*"]

    def test_non_ascii_origin(self) -> None:
        """An internationalised origin is allowed and echoed, not a 500."""
        origin = "https://日本.example".encode()
        answer = self.get(b"/api/v1/openapi.json", b"Origin: " + origin + b"\r\n")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers[b"access-control-allow-origin"], origin)


class TwistedWebErrorTests(EdgeTestCase):
    """
    What twisted.web itself refuses (RFC 9112 framing, its size limits) is answered with
    problem+json and the connection closed, not with a bare status line or nothing.
    """

    def test_request_line_too_long(self) -> None:
        """A request line over 16 KiB: 414."""
        answer = self.get(b"/api/health?q=" + b"a" * 17000)
        detail = self.assertProblem(answer, 414, b"URI Too Long")
        self.assertIn("16384", detail)
        self.assertTrue(answer.closed)

    def test_request_line_without_end(self) -> None:
        """16 KiB of request line with no end in sight: 414 at once."""
        answer = self.send(b"GET /" + b"a" * 17000)
        self.assertProblem(answer, 414, b"URI Too Long")

    def test_header_line_too_long(self) -> None:
        """One header line over 16 KiB: 431."""
        answer = self.get(b"/api/health", b"X-Big: " + b"a" * 17000 + b"\r\n")
        self.assertProblem(answer, 431, b"Request Header Fields Too Large")
        self.assertTrue(answer.closed)

    def test_head_too_large(self) -> None:
        """Short header lines adding up to over 16 KiB: 431."""
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        answer = self.get(b"/api/health", lines)
        self.assertProblem(answer, 431, b"Request Header Fields Too Large")

    def test_too_many_headers(self) -> None:
        """1,000 headers: 431."""
        lines = b"".join(b"X%d: y\r\n" % i for i in range(1000))
        answer = self.get(b"/api/health", lines)
        detail = self.assertProblem(answer, 431, b"Request Header Fields Too Large")
        self.assertIn("500", detail)

    def test_bad_method(self) -> None:
        """A method that is not an HTTP token: 400."""
        answer = self.send(b"G(T /api/health HTTP/1.1\r\nHost: medichat.test\r\n\r\n")
        self.assertProblem(answer, 400, b"Bad Request")
        self.assertTrue(answer.closed)

    def test_malformed(self) -> None:
        """NUL in Cookie, a header without a colon, a bad Content-Length: 400."""
        for line in (b"Cookie: a=\x00b", b"No colon here", b"Content-Length: ten"):
            answer = self.get(b"/api/health", line + b"\r\n")
            self.assertProblem(answer, 400, b"Bad Request")

    def test_within_limits(self) -> None:
        """A request just within the limits is served as usual."""
        lines = b"".join(b"X%d: y\r\n" % i for i in range(490))
        answer = self.get(b"/api/v1/openapi.json", lines)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.reason, b"OK")


class ChatWithoutUpgradeTests(EdgeTestCase):
    """
    The WebSocket endpoint answers plain HTTP with 426, not Autobahn's HTML page.
    """

    def test_plain_get(self) -> None:
        """A GET without Upgrade: 426 problem+json with Upgrade: websocket."""
        answer = self.get(b"/api/v1/chat", b"Connection: close\r\n")
        detail = self.assertProblem(answer, 426, b"Upgrade Required")
        self.assertEqual(answer.headers[b"upgrade"], b"websocket")
        self.assertEqual(answer.headers[b"cache-control"], b"no-store")
        self.assertEqual(answer.headers[b"connection"], b"close")
        self.assertIn("WebSocket", detail)

    def test_other_upgrade(self) -> None:
        """An upgrade to something else is no WebSocket either."""
        answer = self.get(b"/api/v1/chat", b"Upgrade: h2c\r\nConnection: Upgrade\r\n")
        self.assertProblem(answer, 426, b"Upgrade Required")

    def test_foreign_origin(self) -> None:
        """A handshake from an origin that is not allowed: 403 problem+json."""
        answer = self.get(b"/api/v1/chat", UPGRADE + b"Origin: https://evil.example\r\n")
        detail = self.assertProblem(answer, 403, b"Forbidden")
        self.assertEqual(detail, "origin https://evil.example is not allowed")

    def test_allowed_origin(self) -> None:
        """A handshake from an allowed origin is switched."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        assert channel is not None
        transport = StringTransport()
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET /api/v1/chat HTTP/1.1\r\nHost: medichat.test\r\n" + UPGRADE
            + b"Origin: " + DASHBOARD.encode() + b"\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())

    def test_upgrade(self) -> None:
        """A WebSocket handshake is still switched to Autobahn."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        assert channel is not None
        transport = StringTransport()
        transport.protocol = channel  # as on a TCP transport, for Autobahn's takeover
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET /api/v1/chat HTTP/1.1\r\nHost: medichat.test\r\n" + UPGRADE + b"\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())


class ReasonPhraseTests(SynchronousTestCase):
    """
    Every status medichat answers with carries its reason phrase.
    """

    def test_problem_statuses(self) -> None:
        """The status line of each problem says its title (429: Too Many Requests)."""
        expected = {
            400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 413: b"Payload Too Large", 414: b"URI Too Long",
            415: b"Unsupported Media Type", 426: b"Upgrade Required",
            429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable",
        }
        for status, phrase in expected.items():
            request = Request(DummyChannel())
            write_problem(request, Problem.of(status, "x"))
            self.assertEqual((request.code, request.code_message), (status, phrase))
