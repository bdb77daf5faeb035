"""
The names of the hub's topics: what is published where.
"""

from __future__ import annotations

HEARTBEAT_TOPIC = "/v1/topic/heartbeat"
ONLINE_EMPLOYEES_TOPIC = "/v1/topic/online-employees"
CONVERSATIONS_TOPIC = "/v1/topic/conversations"
"""The employees' feed: C{conversationCreated} and C{conversationUpdated}."""
TOPIC_PREFIX = "/v1/topic/"


def conversation_topic(conversation_id: str) -> str:
    """
    The topic on which a conversation's events are published.
    """
    return f"/v1/topic/conversation/{conversation_id.lower()}"
