"""
Tests for L{medichat.http.observe}: the site tells an observer about each answered request
by route template, method and status; driven through the real site (L{make_site}) and REST
API over a L{StringTransport}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from medichat.auth.checkers import JWTChecker
from medichat.auth.realm import build_portal
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.http.observe import RouteTemplates, observe_requests
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root, make_site
from medichat.pubsub.hub import InProcessHub
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests._inline import InlineTestCase

NOW = 1_780_000_000.0
CONVERSATION = "6b92c178-c22b-4bbb-8dec-8d497660b5bf"


class _Chat(Resource):
    """Stands where the WebSocket resource is: answers plain HTTP with 426."""

    isLeaf = True

    def render(self, request: object) -> bytes:
        request.setResponseCode(426)  # type: ignore[attr-defined]
        return b""


class ObserveRequestsTests(InlineTestCase):
    """
    Each answered request is reported once, with labels from a fixed set.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        store = MemoryStore(self.clock)
        await store.start()
        self.addCleanup(store.stop)
        hub = InProcessHub()
        presence = InProcessPresence(hub)
        conversations = ConversationService(
            store, hub, self.clock, presence, started_feed(store, hub, self.clock)
        )
        api = RestAPI(
            conversations=conversations,
            portal=build_portal([JWTChecker(secret=b"s" * 32, clock=self.clock)]),
            accounts=None,
            origins=OriginPolicy([]),
            store=store,
            clock=self.clock,
        )
        self.site = make_site(build_root("/api", api.resource(), _Chat()), 65536,
                              clock=self.clock)
        self.seen: list[tuple[str, str, int, float]] = []

        def started() -> object:
            began = self.clock.seconds()

            def answered(route: str, method: str, status: int) -> None:
                self.seen.append((route, method, status, self.clock.seconds() - began))

            return answered

        observe_requests(self.site, started, RestAPI.router.url_map)  # type: ignore[arg-type]

    def request(self, head: bytes) -> bytes:
        """Send one request on a new connection; what came back."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(head + b"Host: medichat.test\r\nConnection: close\r\n\r\n")
        return transport.value()

    def test_route_templates(self) -> None:
        """Routes are reported by template, never by the ids in the path."""
        self.request(b"GET /api/livez HTTP/1.1\r\n")
        self.request(b"GET /api/v1/conversation/" + CONVERSATION.encode() + b" HTTP/1.1\r\n")
        self.request(b"POST /api/v1/conversation/" + CONVERSATION.encode()
                     + b"/message HTTP/1.1\r\nContent-Length: 0\r\n")
        self.assertEqual([s[:3] for s in self.seen], [
            ("/livez", "GET", 200),
            ("/v1/conversation/<conversation_id>", "GET", 401),
            ("/v1/conversation/<conversation_id>/message", "POST", 401),
        ])
        for route, *_ in self.seen:
            self.assertNotIn(CONVERSATION, route)

    def test_unmatched(self) -> None:
        """Paths outside the API, or matching no route, are one label."""
        self.request(b"GET /elsewhere/" + CONVERSATION.encode() + b" HTTP/1.1\r\n")
        self.request(b"GET /api/v1/nothing-here HTTP/1.1\r\n")
        self.assertEqual([s[:3] for s in self.seen], [
            ("unmatched", "GET", 404),
            ("unmatched", "GET", 404),
        ])

    def test_chat_endpoint(self) -> None:
        """Plain HTTP at the WebSocket endpoint is reported under its path."""
        self.request(b"GET /api/v1/chat HTTP/1.1\r\n")
        self.assertEqual([s[:3] for s in self.seen], [("/v1/chat", "GET", 426)])

    def test_unknown_method(self) -> None:
        """A method HTTP does not define is reported as OTHER, not as sent."""
        self.request(b"BREW /api/livez HTTP/1.1\r\n")
        self.assertEqual([s[1] for s in self.seen], ["OTHER"])

    def test_lost_before_answer_not_reported(self) -> None:
        """A request whose connection goes before the answer is not reported."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /api/v1/conversation HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 10\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.seen, [])


class RouteTemplatesTests(SynchronousTestCase):
    """
    L{RouteTemplates} finds the template the routing matched, from the path alone.
    """

    def test_every_api_route(self) -> None:
        """Each rule of the API, filled in with an id, is found as itself."""
        templates = RouteTemplates.of(RestAPI.router.url_map)
        for rule in RestAPI.router.url_map.iter_rules():
            path = rule.rule.replace("<conversation_id>", CONVERSATION)
            self.assertEqual(templates.match(path), rule.rule)

    def test_trailing_slash_kept_apart(self) -> None:
        """A path with a trailing slash is its own template, as in the routing."""
        templates = RouteTemplates(["/c/<id>", "/c/<id>/"])
        self.assertEqual(templates.match("/c/x"), "/c/<id>")
        self.assertEqual(templates.match("/c/x/"), "/c/<id>/")

    def test_literal_first_then_variable(self) -> None:
        """A literal segment wins; when its branch leads nowhere, the variable one is tried."""
        templates = RouteTemplates(["/c/new", "/c/<id>/message", "/c/new/x"])
        self.assertEqual(templates.match("/c/new"), "/c/new")
        self.assertEqual(templates.match("/c/new/message"), "/c/<id>/message")
        self.assertEqual(templates.match("/c/new/x"), "/c/new/x")

    def test_no_match(self) -> None:
        """Unknown paths, and an empty segment where a variable is, match nothing."""
        templates = RouteTemplates(["/c/<id>/message", "/health"])
        for path in ("/c//message", "/c/x", "/other", "/health/x", "", "/"):
            self.assertIsNone(templates.match(path), path)
