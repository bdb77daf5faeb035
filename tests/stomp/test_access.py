"""
Tests for the access log over STOMP: an employee's SUBSCRIBE to a conversation topic is
recorded (with the connection's address) before it is answered; a customer's is not; and
the address a WebSocket handshake gives the session (L{handshake_address}).
"""

from __future__ import annotations

from ipaddress import ip_network

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from medichat.carriers.websocket import handshake_address
from medichat.domain.conversations import ConversationService
from medichat.errors import StoreUnavailable
from medichat.model import Conversation, User
from medichat.pubsub.topics import conversation_topic
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests._stomp import Client, make_services, mint, realistic_clock

CUSTOMER = User("0be8c544-9518-4bce-8519-0eee0356989f", "c1", "customer")
NURSE_ID = "3d43c23b-c637-4a7a-a780-28c2c29f1194"


class SubscribeTests(SynchronousTestCase):
    """
    SUBSCRIBE to a conversation by an employee leaves a C{subscribe} row.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.store = MemoryStore(self.clock)
        self.successResultOf(self.store.start())
        self.addCleanup(self.store.stop)
        self.services = make_services(self.clock)
        feed = started_feed(self.store, self.services.hub, self.clock)
        self.service = ConversationService(
            self.store, self.services.hub, self.clock, self.services.presence, feed
        )
        self.services.conversations = self.service
        self.conversation: Conversation = self.successResultOf(self.service.create(CUSTOMER))
        self.topic = conversation_topic(self.conversation.id)

    def log(self) -> list[tuple[str, str, str | None, str | None, str | None]]:
        rows = self.successResultOf(self.store.access_log(descending=False, limit=100))
        return [
            (r.action, r.employee_id, r.conversation_id, r.customer_id, r.address) for r in rows
        ]

    def subscribe(self, client: Client, destination: str) -> str:
        client.send("SUBSCRIBE", {"id": "s", "destination": destination, "receipt": "r"})
        commands = [frame.command for frame in client.frames()]
        return commands[-1]

    def test_employee(self) -> None:
        """An employee's subscription is recorded with the connection's address."""
        client = Client(self.services, port=40001)
        client.connect(mint(NURSE_ID, "Nurse Joy", "employee"))
        self.assertEqual(self.subscribe(client, self.topic), "RECEIPT")
        self.assertEqual(
            self.log(),
            [("subscribe", NURSE_ID, self.conversation.id, CUSTOMER.user_id, "127.0.0.1")],
        )
        [row] = self.successResultOf(self.store.access_log(limit=1))
        self.assertEqual((row.employee_name, row.role), ("Nurse Joy", "employee"))

    def test_customer(self) -> None:
        """A customer subscribing to their own conversation is not recorded."""
        client = Client(self.services)
        client.connect(mint(CUSTOMER.user_id, "c1"))
        self.assertEqual(self.subscribe(client, self.topic), "RECEIPT")
        self.assertEqual(self.log(), [])

    def test_other_topics(self) -> None:
        """Topics without conversation data (heartbeat, online employees) are not recorded."""
        client = Client(self.services)
        client.connect(mint(NURSE_ID, "Nurse Joy", "employee"))
        self.assertEqual(self.subscribe(client, "/v1/topic/heartbeat"), "RECEIPT")
        self.assertEqual(self.log(), [])

    def test_unrecorded_is_refused(self) -> None:
        """If the access cannot be recorded, the subscription is refused with an ERROR."""
        self.patch(
            self.store, "record_access", lambda entries: fail(StoreUnavailable("down"))
        )
        client = Client(self.services)
        client.connect(mint(NURSE_ID, "Nurse Joy", "employee"))
        self.assertEqual(self.subscribe(client, self.topic), "ERROR")
        self.assertTrue(client.closed)
        self.assertEqual(self.services.hub.subscriber_count(self.topic), 0)


class HandshakeAddressTests(SynchronousTestCase):
    """
    L{handshake_address}: the peer's IP, or behind a trusted proxy the forwarded one.
    """

    peer = IPv4Address("TCP", "10.0.0.2", 5555)

    def test_direct(self) -> None:
        """Without trusted proxies, forwarding headers are ignored."""
        headers = {"x-forwarded-for": "203.0.113.9"}
        self.assertEqual(handshake_address(self.peer, headers, ()), "10.0.0.2")

    def test_trusted(self) -> None:
        """From a trusted proxy, X-Forwarded-For or Forwarded names the client."""
        trusted = (ip_network("10.0.0.0/8"),)
        self.assertEqual(
            handshake_address(self.peer, {"x-forwarded-for": "203.0.113.9, 10.0.0.7"}, trusted),
            "203.0.113.9",
        )
        self.assertEqual(
            handshake_address(self.peer, {"forwarded": "for=198.51.100.1"}, trusted),
            "198.51.100.1",
        )
        self.assertEqual(handshake_address(self.peer, {}, trusted), "10.0.0.2")

    def test_untrusted_peer(self) -> None:
        """A peer that is not a trusted proxy cannot name another address."""
        trusted = (ip_network("192.168.0.0/16"),)
        headers = {"x-forwarded-for": "203.0.113.9"}
        self.assertEqual(handshake_address(self.peer, headers, trusted), "10.0.0.2")

    def test_no_ip(self) -> None:
        """A peer without an IP (a UNIX socket) has no address."""
        self.assertIsNone(handshake_address(UNIXAddress(b"/tmp/s"), {}, ()))
