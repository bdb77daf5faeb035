"""
The in-process publish/subscribe hub.

A publication is encoded once: its JSON body, and the bytes of a STOMP C{MESSAGE} frame up
to the C{subscription} header and after it.  Each subscriber then only joins in its own
subscription id (see L{Publication.frame}), so delivering to many sessions costs little
more than writing bytes.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from medichat.interfaces import IHub, ISubscriber

_log = Logger()


class Publication:
    """
    One event on one destination, encoded once for all of its subscribers.

    @ivar destination: where it was published.
    @ivar body: the event's JSON, UTF-8.
    @ivar message_id: unique among all publications of this process.
    """

    __slots__ = ("destination", "body", "message_id", "_head", "_tail")

    def __init__(self, destination: str, body: bytes, message_id: str) -> None:
        self.destination = destination
        self.body = body
        self.message_id = message_id
        # Destinations and message ids never contain characters that STOMP 1.1/1.2 escape
        # (the router only accepts fixed names and UUIDs), so these bytes serve all versions.
        self._head = (
            b"MESSAGE\ndestination:%s\nmessage-id:%s\ncontent-type:application/json\n"
            b"content-length:%d\nsubscription:"
            % (destination.encode("utf-8"), message_id.encode("ascii"), len(body))
        )
        self._tail = b"\n\n" + body + b"\x00"

    def frame(self, subscription: bytes, extra: bytes = b"") -> bytes:
        """
        The complete C{MESSAGE} frame for one subscriber.

        @param subscription: the subscription id, already escaped for the session's
            STOMP version.
        @param extra: further header lines, each ending in C{\\n} but the last
            (e.g. C{b"\\nack:..."}), placed after the subscription header.
        """
        return self._head + subscription + extra + self._tail


def encode_event(event: dict[str, Any]) -> bytes:
    """
    Encode an event as compact UTF-8 JSON, keeping key order.
    """
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@implementer(IHub)
class InProcessHub:
    """
    A hub for one process: destinations map to ordered sets of subscribers.

    It also counts each user's subscriptions per destination, so that callers learn when a
    user's first subscription appears and their last one ends (conversation presence), and
    which users are subscribed (auto-received).
    """

    def __init__(self, node_id: str | None = None) -> None:
        self._subscribers: dict[str, dict[ISubscriber, None]] = {}
        self._users: dict[str, dict[str, int]] = {}
        self._node = node_id or os.urandom(4).hex()
        self._counter = itertools.count(1)

    def subscribe(self, destination: str, subscriber: ISubscriber) -> bool:
        subs = self._subscribers.setdefault(destination, {})
        if subscriber in subs:
            return False
        subs[subscriber] = None
        users = self._users.setdefault(destination, {})
        count = users.get(subscriber.user_id, 0)
        users[subscriber.user_id] = count + 1
        return count == 0

    def unsubscribe(self, destination: str, subscriber: ISubscriber) -> bool:
        subs = self._subscribers.get(destination)
        if subs is None or subscriber not in subs:
            return False
        del subs[subscriber]
        if not subs:
            del self._subscribers[destination]
        users = self._users[destination]
        count = users[subscriber.user_id] - 1
        if count:
            users[subscriber.user_id] = count
            return False
        del users[subscriber.user_id]
        if not users:
            del self._users[destination]
        return True

    def publish(self, destination: str, event: dict[str, Any]) -> None:
        subs = self._subscribers.get(destination)
        if not subs:
            return
        publication = self.prepare(destination, event)
        # A snapshot: a delivery may end a session, which unsubscribes it.
        for subscriber in list(subs):
            try:
                subscriber.deliver(publication)
            except Exception:
                _log.failure(
                    "delivery to a subscriber of {destination} failed",
                    destination=destination,
                )

    def prepare(self, destination: str, event: dict[str, Any]) -> Publication:
        """
        Encode C{event} for C{destination} once, with a fresh message id.
        """
        return Publication(
            destination, encode_event(event), f"{self._node}-{next(self._counter)}"
        )

    def subscribed_users(self, destination: str) -> frozenset[str]:
        return frozenset(self._users.get(destination, ()))

    def subscriber_count(self, destination: str) -> int:
        """
        How many subscriptions C{destination} has now.
        """
        return len(self._subscribers.get(destination, ()))
