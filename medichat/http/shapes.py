"""
The JSON shapes of the REST API (SPEC section 3): how the domain's objects look on the
wire.  Key order is part of the shape (clients and the seed's examples rely on it).
"""

from __future__ import annotations

from typing import Any

from medichat.domain.access import AccessPage
from medichat.domain.conversations import ConversationDetail, ConversationPage
from medichat.model import Conversation, Receipt, format_time

__all__ = [
    "access_page_json",
    "conversation_json",
    "conversation_page_json",
    "conversation_summary",
]


def _receipt_json(receipt: Receipt, key: str) -> dict[str, str]:
    return {"userId": receipt.user_id, key: format_time(receipt.at)}


def conversation_summary(conversation: Conversation) -> dict[str, Any]:
    """
    A conversation without messages or receipts, as listed by C{GET /v1/conversation}:
    C{id}, C{created}, C{customerId}, C{customerName}.
    """
    return {
        "id": conversation.id,
        "created": format_time(conversation.created),
        "customerId": conversation.customer_id,
        "customerName": conversation.customer_name,
    }


def conversation_json(detail: ConversationDetail) -> dict[str, Any]:
    """
    The full conversation: C{id}, C{created}, C{customerId}, C{customerName},
    C{messages}, C{read} (C{userId}, C{readAt}) and C{received} (C{userId},
    C{receivedAt}).
    """
    result = conversation_summary(detail.conversation)
    result["messages"] = [m.as_json() for m in detail.messages]
    result["read"] = [_receipt_json(r, "readAt") for r in detail.read]
    result["received"] = [_receipt_json(r, "receivedAt") for r in detail.received]
    return result


def conversation_page_json(page: ConversationPage) -> dict[str, Any]:
    """
    One page of C{GET /v1/conversation}: C{{"conversations": [summary, ...], "next"}},
    C{next} being L{None} on the last page.
    """
    return {
        "conversations": [conversation_summary(c) for c in page.conversations],
        "next": page.next,
    }


def access_page_json(page: AccessPage) -> dict[str, Any]:
    """
    One page of C{GET /v1/me/access-log}: C{{"accesses": [{"time", "employeeName",
    "action", "conversationId"}, ...], "next"}}, newest first, C{next} being L{None} on
    the last page.  The employee's id and the client's address stay with the privacy
    officer (C{medichat-admin audit}).
    """
    return {
        "accesses": [
            {
                "time": format_time(e.at),
                "employeeName": e.employee_name,
                "action": e.action,
                "conversationId": e.conversation_id,
            }
            for e in page.entries
        ],
        "next": page.next,
    }
