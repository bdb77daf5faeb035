"""
What one API request leaves for the garbage collector: reference cycles make the
collector's passes (and, once they reach the oldest generation, the full ones that pause
the server) more frequent and longer.  The chat's own traffic, message POSTs, must leave
none.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import jwt
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from medichat._connections import ConnectionCap
from medichat.auth.checkers import JWTChecker
from medichat.auth.realm import build_portal
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.http import rest
from medichat.http._channel import HTTPConnections
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root, make_site
from medichat.pubsub.hub import InProcessHub
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests.http.test_channel import _answer, _Client

SECRET = b"k" * 32
real_is_message_post = rest._is_message_post
NOW = 1627301122.0


def cyclic_garbage(action: Any) -> list[object]:
    """The objects that C{action} leaves unreachable but not freed (in reference cycles)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        action()
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return garbage


class RequestGarbageTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        store = MemoryStore(clock)
        store.start()
        self.addCleanup(store.stop)
        hub = InProcessHub()
        service = ConversationService(
            store, hub, clock, InProcessPresence(InProcessHub()),
            started_feed(store, hub, clock),
        )
        api = RestAPI(
            conversations=service, portal=build_portal([JWTChecker(secret=SECRET, clock=clock)]),
            accounts=None, origins=OriginPolicy([]), store=store, clock=clock,
            message_rate=1_000_000,
        )
        site = make_site(build_root("/api", api.resource(), Resource()), 65536, clock=clock)
        factory = HTTPConnections(site, ConnectionCap(10, clock), clock)
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert server is not None
        self.client = _Client()
        self.transport = makeFakeClient(self.client)
        self.pump = connect(server, makeFakeServer(server), self.client, self.transport,
                            greet=False, clock=clock)
        self.token = jwt.encode({"sub": "c1", "name": "c", "exp": NOW + 3600}, SECRET, "HS256")
        code, body = self.request(b"POST", b"/api/v1/conversation")
        self.assertEqual(code, 201)
        self.conversation = json.loads(body)["id"].encode("ascii")

    def request(self, method: bytes, path: bytes, body: bytes | None = None) -> tuple[int, bytes]:
        self.client.received = b""
        data = b"%s %s HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\n" % (
            method, path, self.token.encode("ascii"))
        if body is not None:
            data += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.transport.write(data + b"\r\n" + (body or b""))
        self.pump.flush()
        code, _, answer = _answer(self.client.received)
        return code, answer

    def post_message(self) -> None:
        code, _ = self.request(
            b"POST", b"/api/v1/conversation/%s/message" % self.conversation, b'{"message":"hi"}')
        self.assertEqual(code, 201)

    def test_message_post(self) -> None:
        """A message POST, answered 201, leaves no cyclic garbage."""
        for _ in range(3):
            self.post_message()
        self.assertEqual(cyclic_garbage(self.post_message), [])

    def test_refused_message_post(self) -> None:
        """Nor does one refused by the API (a problem+json answer)."""
        def refused() -> None:
            code, _ = self.request(
                b"POST", b"/api/v1/conversation/%s/message" % self.conversation, b"{}")
            self.assertEqual(code, 400)

        refused()
        self.assertEqual(cyclic_garbage(refused), [])

    def test_other_routes_bounded(self) -> None:
        """
        Any other route, served by Klein, leaves a bounded handful of objects (its request
        and closures), not an amount that grows with what the request did.
        """
        def get() -> None:
            code, _ = self.request(b"GET", b"/api/v1/conversation/%s" % self.conversation)
            self.assertEqual(code, 200)

        get()
        self.assertLess(len(cyclic_garbage(get)), 80)


class DirectRouteTests(RequestGarbageTests):
    """
    The message POST served without Klein answers exactly as Klein's route did.
    """

    def both(self, method: bytes, path: bytes, body: bytes | None) -> tuple[Any, Any]:
        direct = self.request(method, path, body)
        self.patch(rest, "_is_message_post", lambda request: False)
        routed = self.request(method, path, body)
        self.patch(rest, "_is_message_post", real_is_message_post)
        return direct, routed

    def test_same_answers(self) -> None:
        """Errors, odd ids and near misses get the same status and body either way."""
        c = self.conversation
        cases = [
            (b"POST", b"/api/v1/conversation/%s/message" % c, b"{}"),
            (b"POST", b"/api/v1/conversation/%s/message" % c, b"not json"),
            (b"POST", b"/api/v1/conversation/%s/message" % c, b'{"message": 5}'),
            (b"POST", b"/api/v1/conversation/%s/message" % c, b'{"message": "   "}'),
            (b"POST", b"/api/v1/conversation/nope/message", b'{"message":"x"}'),
            (b"POST", b"/api/v1/conversation/%41bc/message", b'{"message":"x"}'),
            (b"POST", b"/api/v1/conversation/a%2Fb/message", b'{"message":"x"}'),
            (b"POST", b"/api/v1/conversation/%s/message/" % c, b'{"message":"x"}'),
            (b"POST", b"/api/v1/conversation//message", b'{"message":"x"}'),
            (b"PUT", b"/api/v1/conversation/%s/message" % c, b'{"message":"x"}'),
        ]
        for method, path, body in cases:
            direct, routed = self.both(method, path, body)
            self.assertEqual(direct, routed, (method, path, body))

    def test_success(self) -> None:
        """A message is posted either way, 201 with the message."""
        direct, routed = self.both(
            b"POST", b"/api/v1/conversation/%s/message" % self.conversation, b'{"message":"x"}')
        self.assertEqual((direct[0], routed[0]), (201, 201))
        self.assertEqual(json.loads(direct[1])["message"], json.loads(routed[1])["message"])

    def test_unauthenticated(self) -> None:
        """Without a token: the same 401 either way."""
        self.token = "nope"
        direct, routed = self.both(
            b"POST", b"/api/v1/conversation/%s/message" % self.conversation, b'{"message":"x"}')
        self.assertEqual(direct, routed)
        self.assertEqual(direct[0], 401)
