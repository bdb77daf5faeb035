"""
Tests for the employees' feed topic on the STOMP session: C{/v1/topic/conversations} is for
employees; a customer's SUBSCRIBE is an ERROR that ends only that session.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from medichat.pubsub.topics import CONVERSATIONS_TOPIC
from medichat.stomp.destinations import Route, route_subscription
from tests._stomp import Client, make_services, mint, realistic_clock

EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"


class ConversationsTopicTests(SynchronousTestCase):
    """
    SUBSCRIBE to C{/v1/topic/conversations}.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock)

    def test_route(self) -> None:
        """The destination is known, exactly as written."""
        self.assertEqual(
            route_subscription("/v1/topic/conversations"),
            Route("conversations", CONVERSATIONS_TOPIC),
        )
        self.assertIsNone(route_subscription("/v1/topic/conversations/"))

    def test_employee_receives(self) -> None:
        """An employee's subscription gets what is published there, as MESSAGE frames."""
        employee = Client(self.services)
        employee.connect(mint(EMPLOYEE, "nurse", "employee"))
        employee.send(
            "SUBSCRIBE", {"id": "feed", "destination": CONVERSATIONS_TOPIC, "receipt": "r"}
        )
        self.assertEqual(employee.next().get("receipt-id"), "r")
        body = b'{"conversationUpdated":{"id":"x","status":"resolved"}}'
        self.services.hub.publish_encoded(CONVERSATIONS_TOPIC, body)
        frame = employee.next()
        self.assertEqual(
            (frame.command, frame.get("destination"), frame.get("subscription"), frame.body),
            ("MESSAGE", CONVERSATIONS_TOPIC, "feed", body),
        )
        self.assertIsNone(frame.get("x-stream-offset"))

    def test_customer_refused(self) -> None:
        """A customer's SUBSCRIBE is an ERROR and closes that session only."""
        employee = Client(self.services, 40001)
        employee.connect(mint(EMPLOYEE, "nurse", "employee"))
        employee.send("SUBSCRIBE", {"id": "feed", "destination": CONVERSATIONS_TOPIC})
        customer = Client(self.services, 40002)
        customer.connect()
        customer.send(
            "SUBSCRIBE", {"id": "1", "destination": CONVERSATIONS_TOPIC, "receipt": "r"}
        )
        frame = customer.next()
        self.assertEqual((frame.command, frame.get("message")), ("ERROR", "forbidden"))
        self.assertEqual(frame.get("receipt-id"), "r")
        self.assertEqual(
            frame.body, b"only employees may subscribe to /v1/topic/conversations"
        )
        self.assertTrue(customer.closed)
        self.assertEqual(self.services.hub.subscriber_count(CONVERSATIONS_TOPIC), 1)
        self.services.hub.publish_encoded(CONVERSATIONS_TOPIC, b"{}")
        self.assertEqual(employee.next().body, b"{}")
