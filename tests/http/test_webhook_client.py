"""
Tests for L{medichat.http.webhook_client}: the treq sender against an in-memory
twisted.web resource (C{StubTreq}), and its timeout on a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from medichat.http.webhook_client import MAX_BODY, TreqSender, parse_retry_after
from medichat.model import WebhookResponse

URL = "https://receiver.example/hooks"


class Answering(Resource):
    """Answers every POST with a fixed status, headers and body, and keeps the requests."""

    isLeaf = True

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None,
                 body: bytes = b"") -> None:
        super().__init__()
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.seen: list[tuple[str, dict[str, str], bytes]] = []

    def render_POST(self, request: Request) -> bytes:
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((request.uri.decode(), headers, request.content.read()))
        request.setResponseCode(self.status)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.body


class SenderTests(SynchronousTestCase):
    """
    L{TreqSender} posts the body with the headers and reports the status.
    """

    def send(self, resource: Answering, clock: Clock | None = None) -> WebhookResponse:
        sender = TreqSender(StubTreq(resource), URL, clock or Clock(), 10.0)
        d = sender.send({"webhook-id": "msg_1", "webhook-timestamp": "5",
                         "webhook-signature": "v1,abc"}, b'{"type":"x"}')
        result: WebhookResponse = self.successResultOf(d)
        return result

    def test_posts(self) -> None:
        """The body and the Standard Webhooks headers arrive, as JSON."""
        resource = Answering(204)
        self.assertEqual(self.send(resource), WebhookResponse(204, None))
        [(uri, headers, body)] = resource.seen
        self.assertEqual(uri, "/hooks")
        self.assertEqual(body, b'{"type":"x"}')
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(
            (headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]),
            ("msg_1", "5", "v1,abc"),
        )

    def test_status_reported(self) -> None:
        """Failures are answers too: the status comes back, with the body dropped."""
        for status in (404, 410, 500, 503):
            self.assertEqual(self.send(Answering(status, body=b"x" * 1000)).status, status)

    def test_big_body(self) -> None:
        """A body past the limit is not kept; the status still counts."""
        self.assertEqual(self.send(Answering(200, body=b"x" * (MAX_BODY + 10))).status, 200)

    def test_redirect_not_followed(self) -> None:
        """A 3xx is reported, not followed."""
        resource = Answering(301, {"Location": "https://elsewhere.example/"})
        self.assertEqual(self.send(resource).status, 301)
        self.assertEqual(len(resource.seen), 1)

    def test_retry_after_seconds(self) -> None:
        """Retry-After in seconds is reported."""
        response = self.send(Answering(429, {"Retry-After": "120"}))
        self.assertEqual(response, WebhookResponse(429, 120.0))

    def test_retry_after_date(self) -> None:
        """Retry-After as an HTTP date is counted from the clock's now."""
        clock = Clock()
        clock.advance(784111717.0)  # Sun, 06 Nov 1994 08:48:37 GMT
        response = self.send(
            Answering(503, {"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}), clock
        )
        self.assertEqual(response.retry_after, 60.0)

    def test_timeout(self) -> None:
        """A receiver that does not answer in time fails the send with a timeout."""

        class Silent:
            def __init__(self) -> None:
                self.cancelled = False

            def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                def cancel(d: Deferred[Any]) -> None:
                    self.cancelled = True

                return Deferred(cancel)

        silent = Silent()
        clock = Clock()
        d = TreqSender(silent, URL, clock, 10.0).send({}, b"{}")
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, TimeoutError, CancelledError)
        self.assertTrue(silent.cancelled)


class RetryAfterTests(SynchronousTestCase):
    """
    L{parse_retry_after} reads both forms and ignores the rest.
    """

    def test_forms(self) -> None:
        """Seconds, a date in the future or past, and nonsense."""
        now = 784111717.0
        self.assertEqual(parse_retry_after(None, now), None)
        self.assertEqual(parse_retry_after(" 30 ", now), 30.0)
        self.assertEqual(parse_retry_after("Sun, 06 Nov 1994 08:48:47 GMT", now), 10.0)
        self.assertEqual(parse_retry_after("Sun, 06 Nov 1994 08:48:27 GMT", now), 0.0)
        self.assertEqual(parse_retry_after("soon", now), None)
        self.assertEqual(parse_retry_after("-5", now), None)
        self.assertEqual(parse_retry_after("", now), None)
