"""
Tests for L{medichat.http.accesslog} and the site's request ids: one access event per
request, with the user once authenticated and never the query string, credentials or
body; the request id in the response and on every event logged on the request's behalf.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from medichat.app.logs import json_line
from medichat.http.accesslog import AccessLog, RequestIds, remember_user
from medichat.http.forwarded import parse_trusted_proxy
from medichat.http.site import build_root, make_site
from medichat.model import User

_log = Logger()
USER = User(user_id="u-1", user_name="Ann", user_role="employee")
TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln"


class _Answer(Resource):
    """Answers after the clock moves on, logging on the way (as a store callback would)."""

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, request: Any) -> Any:
        remember_user(request, USER)

        async def answer() -> None:
            waiting: Deferred[None] = Deferred()
            self.clock.callLater(0.25, waiting.callback, None)
            await waiting
            _log.info("handled a request later")
            request.write(b'{"ok":true}')
            request.finish()

        Deferred.fromCoroutine(answer())
        return NOT_DONE_YET


class AccessLogTests(SynchronousTestCase):
    """
    The site logs each request once, cheaply and without secrets.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.events: Any = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )

    def serve(self, request: bytes, access_log: AccessLog | None = None,
              peer: str = "192.0.2.7") -> bytes:
        root = build_root("/api", _Answer(self.clock), Resource())
        site = make_site(root, 65536, clock=self.clock, access_log=access_log)
        channel = site.buildProtocol(IPv4Address("TCP", peer, 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 5555))
        channel.makeConnection(transport)
        channel.dataReceived(request)
        self.clock.advance(0.25)
        channel.connectionLost(None)  # type: ignore[arg-type]
        return transport.value()

    def access(self) -> list[Any]:
        return [e for e in self.events if e.get("log_namespace") == "medichat.http.access"]

    def test_one_line_per_request(self) -> None:
        """A request is logged once, with method, path, status, size, time and user."""
        response = self.serve(
            b"GET /api/v1/me?access_token=" + TOKEN.encode() + b" HTTP/1.1\r\n"
            b"Host: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Cookie: medichat_session=cookie-value-1\r\nReferer: http://x/?t=ref-secret\r\n"
            b"User-Agent: test-agent\r\n\r\n"
        )
        self.assertIn(b'{"ok":true}', response)
        (event,) = self.access()
        self.assertEqual(
            {k: event[k] for k in ("method", "path", "status", "bytes", "duration_ms",
                                   "client", "user_id", "user_role", "user_agent")},
            {"method": "GET", "path": "/api/v1/me", "status": 200, "bytes": 11,
             "duration_ms": 250.0, "client": "192.0.2.7", "user_id": "u-1",
             "user_role": "employee", "user_agent": "test-agent"},
        )
        text = formatEvent(event) + json_line(event)
        for secret in (TOKEN, "cookie-value-1", "ref-secret", "access_token"):
            self.assertNotIn(secret, text)

    def test_request_id(self) -> None:
        """The request id is sent back and named on events logged while it is handled."""
        lines: list[str] = []

        def observer(event: Any) -> None:
            lines.append(json_line(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        response = self.serve(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        header = [line for line in response.split(b"\r\n") if line.startswith(b"X-Request-Id")]
        self.assertEqual(len(header), 1)
        request_id = header[0].split(b": ")[1].decode()
        (access,) = self.access()
        self.assertEqual(access["request_id"], request_id)
        (later,) = [json.loads(line) for line in lines
                    if json.loads(line)["log_format"] == "handled a request later"]
        # The event itself does not name it: the JSON log adds it from the context.
        self.assertEqual(later["request_id"], request_id)
        _log.info("outside of any request")
        self.assertNotIn("request_id", json.loads(lines[-1]))

    def test_disabled(self) -> None:
        """--access-log off: nothing is logged for requests."""
        self.serve(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n", AccessLog(enabled=False))
        self.assertEqual(self.access(), [])

    def test_trusted_proxy(self) -> None:
        """Behind a trusted proxy the client is the forwarded address."""
        log = AccessLog(trusted_proxies=[parse_trusted_proxy("10.0.0.1")])
        self.serve(b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n",
                   log, peer="10.0.0.1")
        (event,) = self.access()
        self.assertEqual(event["client"], "198.51.100.9")

    def test_unprintable_path(self) -> None:
        """Control characters in a path are escaped, so a line stays one line."""
        self.serve(b"GET /api/a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n")
        (event,) = self.access()
        self.assertEqual(event["path"], "/api/a\\x7fb")

    def test_ids_unique(self) -> None:
        """Request ids differ within a process and between processes."""
        one, two = RequestIds(), RequestIds()
        ids = {one.next(), one.next(), two.next()}
        self.assertEqual(len(ids), 3)
