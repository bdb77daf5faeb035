"""
The JSON shapes of the REST API (SPEC section 3): how the domain's objects look on the
wire.  Key order is part of the shape (clients and the seed's examples rely on it): the
keys that triage added (C{status}, C{assigneeId}, C{assigneeName}, C{lastActivity}) come
after the original four, and the list's per-caller C{unread} and C{lastMessage} after them.
"""

from __future__ import annotations

from typing import Any

from medichat.domain.access import AccessPage
from medichat.domain.conversations import ConversationDetail, ConversationPage
from medichat.model import Conversation, Overview, Receipt, format_time

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
    A conversation without messages or receipts: C{id}, C{created}, C{customerId},
    C{customerName}, C{status}, C{assigneeId}, C{assigneeName} (L{None} when
    unassigned), C{lastActivity}.  What the triage routes answer with.
    """
    return conversation.as_json()


def conversation_json(detail: ConversationDetail) -> dict[str, Any]:
    """
    The full conversation: the keys of L{conversation_summary}, then C{messages},
    C{read} (C{userId}, C{readAt}) and C{received} (C{userId}, C{receivedAt}).
    """
    result = conversation_summary(detail.conversation)
    result["messages"] = [m.as_json() for m in detail.messages]
    result["read"] = [_receipt_json(r, "readAt") for r in detail.read]
    result["received"] = [_receipt_json(r, "receivedAt") for r in detail.received]
    return result


def _listed(conversation: Conversation, overview: Overview | None) -> dict[str, Any]:
    result = conversation_summary(conversation)
    if overview is None:
        overview = Overview(unread=0, last_message=None)
    result["unread"] = overview.unread
    last = overview.last_message
    result["lastMessage"] = None if last is None else last.as_json()
    return result


def conversation_page_json(page: ConversationPage) -> dict[str, Any]:
    """
    One page of C{GET /v1/conversation}: C{{"conversations": [...], "next"}}, each
    conversation as L{conversation_summary} followed by the caller's C{unread} count and
    C{lastMessage} (the message object, L{None} when there is none); C{next} is L{None}
    on the last page.
    """
    return {
        "conversations": [
            _listed(c, page.overviews.get(c.id)) for c in page.conversations
        ],
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
