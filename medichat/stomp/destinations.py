"""
STOMP destinations (SPEC section 5): which ones exist and what they mean.
"""

from __future__ import annotations

import re
from typing import Literal

from attrs import frozen

from medichat.pubsub.topics import (
    CONVERSATIONS_TOPIC,
    HEARTBEAT_TOPIC,
    ONLINE_EMPLOYEES_TOPIC,
    conversation_topic,
)

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_CONVERSATION = re.compile(rf"^/v1/topic/conversation/({_UUID})$")
_TYPING = re.compile(rf"^/v1/app/conversation/({_UUID})/typing/(start|stop)$")



@frozen
class Route:
    """
    Where a destination leads.

    @ivar kind: C{heartbeat}, C{online-employees}, C{conversations} (the employees' feed)
        or C{conversation} for subscriptions; C{typing} for sends.
    @ivar destination: the canonical destination (conversation ids in lower case).
    @ivar conversation_id: for conversation topics and typing, the conversation.
    @ivar started: for typing, C{True} for start and C{False} for stop.
    """

    kind: Literal["heartbeat", "online-employees", "conversations", "conversation", "typing"]
    destination: str
    conversation_id: str | None = None
    started: bool | None = None


def route_subscription(destination: str) -> Route | None:
    """
    The route of a SUBSCRIBE destination, or L{None} if there is no such topic.
    """
    if destination == HEARTBEAT_TOPIC:
        return Route("heartbeat", destination)
    if destination == ONLINE_EMPLOYEES_TOPIC:
        return Route("online-employees", destination)
    if destination == CONVERSATIONS_TOPIC:
        return Route("conversations", destination)
    match = _CONVERSATION.match(destination)
    if match:
        cid = match.group(1).lower()
        return Route("conversation", conversation_topic(cid), cid)
    return None


def route_send(destination: str) -> Route | None:
    """
    The route of a SEND destination, or L{None} if nothing may be sent there.
    """
    match = _TYPING.match(destination)
    if match:
        cid = match.group(1).lower()
        return Route("typing", destination, cid, match.group(2) == "start")
    return None
