"""
Tests for L{medichat.http.shapes}: the domain's objects as the REST API writes them, key
order included.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from medichat.domain.conversations import ConversationDetail, ConversationPage
from medichat.http.shapes import conversation_json, conversation_page_json
from medichat.model import Conversation, Message, Overview, Receipt

CID = "6b92c178-c22b-4bbb-8dec-8d497660b5bf"
CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
AT = 1627301122_000000  # 2021-07-26T12:05:22Z
CONVERSATION = Conversation(CID, AT, CUSTOMER, "c1")


def text(value: object) -> str:
    """JSON as the REST API writes it: key order kept."""
    return json.dumps(value, separators=(",", ":"))


class ShapeTests(SynchronousTestCase):
    """
    The conversation and the page of conversations, in SPEC section 3's shapes.
    """

    def test_conversation(self) -> None:
        """A conversation: summary keys, then messages, read and received, in that order."""
        message = Message("m1", CID, AT + 935376, CUSTOMER, "c1", "customer", "Hello")
        detail = ConversationDetail(
            CONVERSATION,
            messages=[message],
            read=[Receipt(CID, NURSE, AT + 1_000000)],
            received=[Receipt(CID, NURSE, AT)],
        )
        self.assertEqual(
            text(conversation_json(detail)),
            text({
                "id": CID,
                "created": "2021-07-26T12:05:22Z",
                "customerId": CUSTOMER,
                "customerName": "c1",
                "status": "open",
                "assigneeId": None,
                "assigneeName": None,
                "lastActivity": "2021-07-26T12:05:22Z",
                "messages": [{
                    "userId": CUSTOMER,
                    "userName": "c1",
                    "userRole": "customer",
                    "id": "m1",
                    "created": "2021-07-26T12:05:22.935376Z",
                    "message": "Hello",
                }],
                "read": [{"userId": NURSE, "readAt": "2021-07-26T12:05:23Z"}],
                "received": [{"userId": NURSE, "receivedAt": "2021-07-26T12:05:22Z"}],
            }),
        )

    def test_triage_and_overview(self) -> None:
        """
        A claimed, resolved conversation names its assignee; a listed one carries the
        caller's unread count and the newest message, as the message object.
        """
        message = Message("m1", CID, AT + 5_000000, NURSE, "Nurse Joy", "employee", "Hi")
        conversation = Conversation(
            CID, AT, CUSTOMER, "c1", "resolved", NURSE, "Nurse Joy", AT + 5_000000
        )
        page = ConversationPage([conversation], None, {CID: Overview(3, message)})
        self.assertEqual(
            text(conversation_page_json(page)),
            text({
                "conversations": [{
                    "id": CID,
                    "created": "2021-07-26T12:05:22Z",
                    "customerId": CUSTOMER,
                    "customerName": "c1",
                    "status": "resolved",
                    "assigneeId": NURSE,
                    "assigneeName": "Nurse Joy",
                    "lastActivity": "2021-07-26T12:05:27Z",
                    "unread": 3,
                    "lastMessage": message.as_json(),
                }],
                "next": None,
            }),
        )

    def test_page(self) -> None:
        """A page lists summaries (no messages or receipts) and the next cursor."""
        self.assertEqual(
            text(conversation_page_json(ConversationPage([CONVERSATION], "abc"))),
            text({
                "conversations": [{
                    "id": CID,
                    "created": "2021-07-26T12:05:22Z",
                    "customerId": CUSTOMER,
                    "customerName": "c1",
                    "status": "open",
                    "assigneeId": None,
                    "assigneeName": None,
                    "lastActivity": "2021-07-26T12:05:22Z",
                    "unread": 0,
                    "lastMessage": None,
                }],
                "next": "abc",
            }),
        )
        self.assertEqual(conversation_page_json(ConversationPage([], None)),
                         {"conversations": [], "next": None})
