"""
Tests for L{medichat.http._direct}: a chat message's POST, read whole, answered without
twisted.web's request.  Its headers behave as twisted.web's L{Headers}; the resource sees
the same request and the client gets the same bytes, the access log the same line and the
metrics the same report, as through twisted.web's request, for a recording resource, for
resources that fail or answer oddly, and for the real API on the real SQL store; every
other request is left to twisted.web.
"""

from __future__ import annotations

import json
import re
from typing import Any

import argon2
import jwt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import Request as HTTPRequest
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyChannel

from medichat._connections import ConnectionCap
from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.realm import build_portal
from medichat.carriers._fastpath import FastPaths
from medichat.domain.accounts import Accounts, run_here
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.http import accesslog
from medichat.http import site as site_module
from medichat.http._channel import HTTPConnections
from medichat.http._direct import DirectHeaders, DirectRequest, DirectRoute, canonical_name
from medichat.http._whole import WholeRequest, whole_post
from medichat.http.accesslog import AccessLog
from medichat.http.observe import observe_requests
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root, make_site
from medichat.pubsub.hub import InProcessHub
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests.http.test_channel import _Client, connect_client

_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
_DATE = b"Tue, 01 Dec 2026 00:00:00 GMT"
_ID = "0be8c544-9518-4bce-8519-0eee0356989f"
_MESSAGE = b"/api/v1/conversation/" + _ID.encode() + b"/message"
_SECRET = b"k" * 32
_NOW = 1627301122.0
_DASHBOARD = "https://dashboard.example"
_UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_BYTES = re.compile(_UUID.pattern.encode("ascii"))

_NAMES = st.sampled_from([
    b"content-type", b"Content-Type", b"X-Request-Id", b"x-request-id", b"www-authenticate",
    b"ETag", b"etag", b"Set-Cookie", b"Connection", b"dnt", b"X-XSS-Protection", b"a-b-c",
    "Content-Length", "vary",
])
_VALUES = st.one_of(
    st.binary(max_size=8), st.sampled_from([b"a\r\nb", b"a\nb\r", b"\r", b"x\n", b""]),
    st.text(max_size=6),
)


def _outcome(function: Any, *args: Any) -> Any:
    """What C{function} returns, or the type of what it raises."""
    try:
        return function(*args)
    except Exception as e:
        return type(e)


class HeadersTests(SynchronousTestCase):
    """L{DirectHeaders} gives what twisted.web's L{Headers} gives, for what medichat does."""

    @given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#",
                   min_size=1, max_size=20))
    def test_canonical_name(self, name: str) -> None:
        """Names are spelled as twisted.web spells them, given as bytes or text."""
        headers = Headers()
        headers.setRawHeaders(name.encode("ascii"), [b"v"])
        ((expected, _),) = headers.getAllRawHeaders()
        self.assertEqual(canonical_name(name.encode("ascii")), expected)
        self.assertEqual(canonical_name(name), expected)

    def test_not_a_name(self) -> None:
        """A name that is not a token cannot be set."""
        for name in (b"a b", b"", b"a:b", b"a\r\nb"):
            self.assertRaises(ValueError, DirectHeaders().setRawHeaders, name, [b"v"])

    @settings(max_examples=300)
    @given(st.lists(st.tuples(
        st.sampled_from(["set", "add", "remove", "get", "has"]), _NAMES,
        st.lists(_VALUES, max_size=3),
    ), max_size=12))
    def test_same_as_headers(self, operations: list[tuple[str, Any, list[Any]]]) -> None:
        """Any sequence of operations leaves both with the same headers, in the same order."""
        ours, theirs = DirectHeaders(), Headers()
        for operation, name, values in operations:
            if operation == "set":
                ours.setRawHeaders(name, values)
                theirs.setRawHeaders(name, values)
            elif operation == "add" and values:
                ours.addRawHeader(name, values[0])
                theirs.addRawHeader(name, values[0])
            elif operation == "remove":
                ours.removeHeader(name)
                theirs.removeHeader(name)
            elif operation == "get":
                self.assertEqual(_outcome(ours.getRawHeaders, name, "none"),
                                 _outcome(theirs.getRawHeaders, name, "none"))
            else:
                self.assertEqual(ours.hasHeader(name), theirs.hasHeader(name))
        self.assertEqual(list(ours.getAllRawHeaders()), list(theirs.getAllRawHeaders()))

    def test_from_a_head(self) -> None:
        """A request's headers, as sent, are found under any spelling of their names."""
        headers = DirectHeaders([(b"content-TYPE", b"a"), (b"X-A", b"1"), (b"x-a", b"2")])
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"a"])
        self.assertEqual(headers.getRawHeaders("x-A"), ["1", "2"])
        self.assertEqual(list(headers.getAllRawHeaders()),
                         [(b"Content-Type", [b"a"]), (b"X-A", [b"1", b"2"])])


class CookieTests(SynchronousTestCase):
    """A request's cookies are read as twisted.web reads them."""

    @given(st.lists(st.binary(max_size=30).filter(lambda v: b"\r" not in v and b"\n" not in v),
                    max_size=3))
    def test_same_cookies(self, values: list[bytes]) -> None:
        theirs = HTTPRequest(DummyChannel())
        for value in values:
            theirs.requestHeaders.addRawHeader(b"Cookie", value)
        theirs.parseCookies()
        ours = DirectRequest(DummyChannel(), b"/", [(b"Cookie", v) for v in values], b"", 10)
        self.assertEqual(ours.received_cookies, theirs.received_cookies)


def whole(target: bytes, *headers: bytes) -> WholeRequest:
    """A message POST to C{target} with C{headers}, read whole."""
    request = whole_post(_post(*headers, target=target), 16384, 16384, 100)
    assert request is not None
    return request


class RouteTests(SynchronousTestCase):
    """Which whole POSTs L{DirectRoute} takes."""

    def test_match(self) -> None:
        route = DirectRoute("/api", Resource(), lambda: _DATE, 10)
        json_type = b"Content-Type: application/json; charset=utf-8"
        self.assertEqual(route.match(whole(_MESSAGE, json_type)),
                         [b"v1", b"conversation", _ID.encode(), b"message"])
        self.assertIsNotNone(route.match(whole(_MESSAGE, b"Content-Type:")))
        self.assertIsNotNone(route.match(whole(_MESSAGE)))
        self.assertIsNotNone(route.match(whole(_MESSAGE, json_type, b"content-type: text/x")))
        for target in [
            _MESSAGE + b"?a=1", _MESSAGE + b"/", b"/api/v1/conversation//message",
            b"/api/v1/conversation/a%2Fb/message", b"/api/v1/conversation/a.b/message",
            b"/v1/conversation/" + _ID.encode() + b"/message", b"/apix" + _MESSAGE[4:],
            b"/api/v1/conversation/" + _ID.encode() + b"/read", b"/api/v1/conversation",
        ]:
            self.assertIsNone(route.match(whole(target, json_type)), target)
        for header in [
            b"Content-Type: application/x-www-form-urlencoded",
            b"Content-Type: multipart/form-data; boundary=x",
            b"content-type: text/plain",
            "X-Name: Zoë".encode(),
        ]:
            self.assertIsNone(route.match(whole(_MESSAGE, header)), header)

    def test_base_paths(self) -> None:
        """At the root, and under a base of several segments."""
        self.assertIsNotNone(DirectRoute("", Resource(), lambda: _DATE, 10).match(
            whole(_MESSAGE[4:])))
        self.assertIsNotNone(DirectRoute("/a/b", Resource(), lambda: _DATE, 10).match(
            whole(b"/a/b" + _MESSAGE[4:])))


class _Recorder(Resource):
    """
    Records what each request looks like, and answers it as C{mode} says: bytes, a 201
    with headers, a 204, an answer without a length (chunked), later, or by raising.
    """

    isLeaf = True

    def __init__(self, mode: str = "bytes") -> None:
        super().__init__()
        self.mode = mode
        self.seen: list[tuple[Any, ...]] = []
        self.kinds: list[type] = []
        self.held: list[Any] = []
        self.finished: list[object] = []

    def render(self, request: Any) -> Any:
        self.kinds.append(type(request))
        self.seen.append((
            request.method, request.uri, request.path, request.clientproto,
            sorted(request.requestHeaders.getAllRawHeaders()), request.content.read(),
            request.args, request.received_cookies, request.prepath, request.postpath,
            request.getHeader(b"Authorization"), request.getHeader("cookie"),
            request.getCookie(b"a"), request.isSecure(),
            type(request.getClientAddress()).__name__,
        ))
        request.notifyFinish().addBoth(self.finished.append)
        mode = self.mode
        if mode == "raise":
            raise ValueError("the resource failed")
        if mode == "created":
            request.setResponseCode(201)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader("X-Two", "a\r\nb")
            request.setHeader(b"X-Three", b"c\nd")
            request.responseHeaders.addRawHeader(b"Set-Cookie", b"s=1")
            request.responseHeaders.addRawHeader(b"Set-Cookie", b"t=2")
            if self.seen[-1][0] == b"POST" and len(self.seen) > 1:
                # As twisted.web's addCookie keeps them: they replace the header's.
                request.cookies.append(b"u=3")
            return b'{"ok":true}'
        if mode == "none":
            request.setResponseCode(204)
            request.write(b"ignored")
            request.write(b"and this")
            request.finish()
            return NOT_DONE_YET
        if mode == "chunked":
            request.write(b"one,")
            request.write(b"two")
            request.finish()
            return NOT_DONE_YET
        if mode == "later":
            self.held.append(request)
            return NOT_DONE_YET
        return b"seen %d" % len(self.seen)


def _post(*headers: bytes, body: bytes = b'{"message": "hi"}', target: bytes = _MESSAGE
          ) -> bytes:
    lines = [b"POST " + target + b" HTTP/1.1", b"Host: medichat.test", *headers,
             b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Site:
    """A site on a clock, with or without the direct route, and its log and metrics."""

    def __init__(self, case: SynchronousTestCase, api: Resource, direct: bool,
                 clock: Clock | None = None) -> None:
        case.patch(site_module, "http_date", lambda: _DATE)
        self.clock = clock or Clock()
        root = build_root("/api", api, Resource())
        self.access: list[LogEvent] = []
        case.patch(accesslog._log, "observer", self.access.append)
        self.site = make_site(
            root, 64, clock=self.clock, access_log=AccessLog(),
            whole_requests=FastPaths.probe().whole_request_handover(),
            direct=("/api", api) if direct else None,
        )
        self.reports: list[tuple[str, str, int]] = []

        def observer() -> Any:
            return lambda route, method, code: self.reports.append((route, method, code))

        observe_requests(self.site, observer, RestAPI.router.url_map)
        self.factory = HTTPConnections(self.site, ConnectionCap(10, self.clock), self.clock)

    def connect(self) -> tuple[_Client, FakeTransport, IOPump]:
        return connect_client(self.factory, self.clock)

    def log(self) -> list[dict[str, Any]]:
        """The access log's events, without their times and request ids."""
        return [
            {k: _UUID.sub("<uuid>", v) if isinstance(v, str) else v for k, v in event.items()
             if k not in ("log_time", "request_id", "client", "access", "log_logger")}
            for event in self.access
        ]


def _normal(received: bytes) -> bytes:
    """An answer with its request id, and any UUID, made the same."""
    received = re.sub(rb"X-Request-Id: [^\r]*", b"X-Request-Id: -", received)
    return _UUID_BYTES.sub(b"<uuid>", received)


class SameOutcomeTests(SynchronousTestCase):
    maxDiff = None
    """
    A whole message POST gets the same request to the resource and the same answer bytes,
    log line and metrics, through a L{DirectRequest} as through twisted.web's request.
    """

    def both(self, mode: str, *writes: bytes, direct_expected: bool = True
             ) -> tuple[_Recorder, bytes, bool]:
        results = []
        recorders = []
        for direct in (True, False):
            recorder = _Recorder(mode)
            recorders.append(recorder)
            site = _Site(self, recorder, direct)
            client, transport, pump = site.connect()
            for data in writes:
                transport.write(data)
                pump.flush()
            results.append((recorder.seen, _normal(client.received), client.closed,
                            site.log(), site.reports, len(recorder.finished)))
        self.assertEqual(results[0], results[1])
        kinds = recorders[0].kinds
        self.assertEqual(DirectRequest in kinds, direct_expected, kinds)
        self.assertNotIn(DirectRequest, recorders[1].kinds)
        return recorders[0], results[0][1], results[0][2]

    def test_answered_alike(self) -> None:
        """Bytes, a 201 with headers and cookies, a 204, chunks: the same bytes."""
        for mode in ("bytes", "created", "none", "chunked"):
            _, answer, closed = self.both(
                mode, _post(b"Content-Type: application/json", b"Cookie: a=1; b=2",
                            b"authorization:  Bearer x.y.z ", b"X-A: 1", b"x-a: 2"),
                _post(body=b""))
            self.assertFalse(closed)
            self.assertEqual(answer.count(b"HTTP/1.1 "), 2, answer)

    def test_failures_alike(self) -> None:
        """A resource that raises: twisted.web's 500, logged."""
        _, answer, _ = self.both("raise", _post(), _post())
        self.assertEqual(answer.count(b"HTTP/1.1 500 Internal Server Error"), 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 4)

    def test_others_left(self) -> None:
        """Other routes, queries, forms, odd ids and non-ASCII headers: twisted.web's."""
        for write in [
            _post(target=b"/api/v1/conversation"), _post(target=_MESSAGE + b"?x=1"),
            _post(b"Content-Type: application/x-www-form-urlencoded", body=b"a=1"),
            _post(b"Content-Type: multipart/form-data; boundary=x", body=b"junk"),
            _post(target=b"/api/v1/conversation/a%2Fb/message"),
            _post("X-Name: Zoë".encode()),
        ]:
            self.both("bytes", write, direct_expected=False)

    def test_closes_when_asked(self) -> None:
        """C{Connection: close}: answered so, then closed."""
        _, answer, closed = self.both("bytes", _post(b"Connection: close"))
        self.assertIn(b"Connection: close", answer)
        self.assertTrue(closed)

    def test_body_over_the_limit(self) -> None:
        """The body the resource reads is cut where twisted.web's request cuts it."""
        recorder, _, _ = self.both("bytes", _post(body=b"x" * 200))
        self.assertEqual(len(recorder.seen[0][5]), 65)

    def test_then_other_requests(self) -> None:
        """After a direct request, twisted.web reads the next (a GET) as before."""
        get = b"GET /api/v1/me HTTP/1.1\r\nHost: medichat.test\r\n\r\n"
        recorder, answer, _ = self.both("bytes", _post(), get, _post())
        self.assertEqual([s[0] for s in recorder.seen], [b"POST", b"GET", b"POST"])
        self.assertEqual(recorder.kinds[0], DirectRequest)
        self.assertNotEqual(recorder.kinds[1], DirectRequest)

    def held(self, direct: bool) -> tuple[_Recorder, _Site, _Client, FakeTransport, IOPump]:
        """A site whose resource holds its requests, and one posted to it, held."""
        recorder = _Recorder("later")
        site = _Site(self, recorder, direct)
        client, transport, pump = site.connect()
        transport.write(_post())
        pump.flush()
        return recorder, site, client, transport, pump

    def test_answered_later(self) -> None:
        """
        An answer written after the request's turn; a request that comes meanwhile waits
        for it; one whose connection goes first is told, and its answer goes nowhere.
        """
        outcomes = []
        for direct in (True, False):
            recorder, site, client, transport, pump = self.held(direct)
            transport.write(_post())
            pump.flush()
            self.assertEqual(len(recorder.held), 1)
            recorder.held[0].write(b"done")
            recorder.held[0].finish()
            pump.flush()
            self.assertEqual(len(recorder.held), 2)
            transport.loseConnection()
            pump.flush()
            late = recorder.held[1]
            late.write(b"nobody")
            self.assertRaises(RuntimeError, late.finish)
            outcomes.append((_normal(client.received), [
                r.type if isinstance(r, Failure) else r for r in recorder.finished
            ], site.log(), site.reports))
        self.assertEqual(outcomes[0], outcomes[1])

    def test_draining(self) -> None:
        """A request being answered when the server drains says C{Connection: close}."""
        outcomes = []
        for direct in (True, False):
            recorder, site, client, transport, pump = self.held(direct)
            site.factory.drain(10)
            recorder.held[0].write(b"done")
            recorder.held[0].finish()
            pump.flush()
            outcomes.append((_normal(client.received), client.closed))
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertIn(b"Connection: close", outcomes[0][0])
        self.assertTrue(outcomes[0][1])


class APITests(SynchronousTestCase):
    maxDiff = None
    """
    The real API on the real SQL store: every outcome of a message POST is the same
    through a L{DirectRequest} as through twisted.web's request (ids aside).
    """

    def stack(self, direct: bool) -> tuple[_Site, str]:
        clock = Clock()
        clock.advance(_NOW)
        store = MemoryStore(clock)
        self.successResultOf(store.start())
        self.addCleanup(store.stop)
        hub = InProcessHub()
        portal = build_portal([
            JWTChecker(secret=_SECRET, clock=clock),
            SessionCookieChecker(3600, store=store, clock=clock),
        ])
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        accounts = Accounts(store, clock, session_ttl=3600, hasher=hasher, run_blocking=run_here)
        service = ConversationService(store, hub, clock, InProcessPresence(InProcessHub()),
                                      started_feed(store, hub, clock))
        api = RestAPI(conversations=service, portal=portal, accounts=accounts,
                      origins=OriginPolicy([_DASHBOARD]), store=store, clock=clock,
                      max_body=64, message_rate=9)
        self.successResultOf(
            accounts.add_employee("nurse@example.org", "Nurse Joy", "correct horse"))
        site = _Site(self, api.resource(), direct, clock)
        client, transport, pump = site.connect()
        transport.write(b"POST /api/v1/conversation HTTP/1.1\r\nHost: h\r\nAuthorization: "
                        b"Bearer " + self.token("customer") + b"\r\nContent-Length: 0\r\n\r\n")
        pump.flush()
        conversation = json.loads(client.received.partition(b"\r\n\r\n")[2])["id"]
        login = b'{"email": "nurse@example.org", "password": "correct horse"}'
        transport.write(_post(b"Content-Type: application/json", body=login,
                              target=b"/api/v1/auth/login"))
        pump.flush()
        self.cookie = re.findall(rb"Set-Cookie: (medichat_session=[^;]*)", client.received)[0]
        return site, conversation

    def token(self, sub: str, role: str = "customer") -> bytes:
        payload = {"sub": {"customer": _ID, "other": "6f1c0f7e-32a4-4b0e-9a59-6a3f3c1f0a11"}
                   .get(sub, sub), "name": sub, "role": role, "exp": _NOW + 3600}
        return jwt.encode(payload, _SECRET, algorithm="HS256").encode("ascii")

    def test_outcomes_alike(self) -> None:
        """
        Posted, posted again with the same key, refused for every reason a message can
        be (credentials, participation, conversation, body, type, size, rate), and
        answered to an allowed origin and to another: the same answers and log lines.
        """
        bearer = b"Authorization: Bearer " + self.token("customer")
        json_type = b"Content-Type: application/json"

        def requests(conversation: bytes) -> list[bytes]:
            target = b"/api/v1/conversation/" + conversation + b"/message"
            cookie = b"Cookie: " + self.cookie
            return [
                _post(cookie, json_type, b"Origin: " + _DASHBOARD.encode(), target=target),
                _post(cookie, json_type, b"Origin: https://elsewhere.example", target=target),
                _post(cookie, json_type, target=target),
                _post(bearer, json_type, b"Idempotency-Key: k1", target=target),
                _post(bearer, json_type, b"Idempotency-Key: k1", target=target),
                _post(json_type, target=target),
                _post(b"Authorization: Bearer nope", json_type, target=target),
                _post(b"Authorization: Bearer " + self.token("other"), json_type, target=target),
                _post(bearer, json_type, target=b"/api/v1/conversation/nosuch/message"),
                _post(bearer, json_type, body=b'{"message": ', target=target),
                _post(bearer, json_type, body=b"[]", target=target),
                _post(bearer, b"Content-Type: text/plain", target=target),
                _post(bearer, json_type, body=b'{"message": "' + b"x" * 80 + b'"}',
                      target=target),
                _post(bearer, json_type, b"Origin: " + _DASHBOARD.encode(), target=target),
                _post(bearer, json_type, b"Origin: https://elsewhere.example", target=target),
                _post(bearer, json_type, target=target),
            ]

        outcomes = []
        made: list[DirectRequest] = []
        for direct in (True, False):
            site, conversation = self.stack(direct)
            if direct:
                route = site.site.direct  # type: ignore[attr-defined]
                make = route.request_factory

                def counted(*args: Any, make: Any = make) -> Any:
                    made.append(make(*args))
                    return made[-1]

                route.request_factory = counted
            client, transport, pump = site.connect()
            for request in requests(conversation.encode("ascii")):
                transport.write(request)
                pump.flush()
                site.clock.advance(0.01)
                pump.flush()
            # After the 429, the connection is held (reads nothing for a while).
            held = [call.func.__name__ for call in site.clock.getDelayedCalls()
                    if call.func.__name__ == "_release"]
            outcomes.append((_normal(client.received), client.closed, site.log()[2:],
                             site.reports[2:], held))
        self.assertEqual(outcomes[0], outcomes[1])
        answer = outcomes[0][0]
        statuses = re.findall(rb"HTTP/1.1 (\d+)", answer)
        self.assertEqual(statuses, [b"201", b"403", b"201", b"201", b"201", b"401", b"401",
                                    b"404", b"404", b"400", b"400", b"415", b"413", b"201",
                                    b"201", b"429"])
        self.assertIn(b"Retry-After: ", answer)
        self.assertEqual(outcomes[0][4], ["_release"])
        # Every message POST went the direct way but the one typed text/plain (whose
        # type twisted.web's request looks at for a form).
        self.assertEqual(len(made), 15)
        self.assertIn(b"Access-Control-Allow-Origin: " + _DASHBOARD.encode(), answer)
        self.assertIn(("/v1/conversation/<conversation_id>/message", "POST", 201),
                      outcomes[0][3])
