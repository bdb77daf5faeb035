"""
The in-process publish/subscribe hub.

A publication is encoded once: L{InProcessHub.publish} turns the event into JSON a single
time and hands the same L{Publication} to every subscriber.  Whatever a protocol layer
derives from it for the wire (for STOMP, the bytes of a C{MESSAGE} frame around the
subscription id) it caches on the publication the first time one of its subscribers needs
it, so a fan-out to many sessions costs little more than writing bytes.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from medichat.interfaces import IHub, ISubscriber
from medichat.model import compact_json

_log = Logger()


class Publication:
    """
    One event on one destination, encoded once for all of its subscribers.

    @ivar destination: where it was published.
    @ivar body: the event's JSON, UTF-8.
    @ivar message_id: unique among all publications of this process.
    @ivar offset: for a durable conversation event, its place in the conversation's stream
        (the C{x-stream-offset} of its STOMP C{MESSAGE} frame); L{None} for the others.
    @ivar encoded: what the delivering protocol layer derived from this publication, kept
        by that layer the first time one of its subscribers needed it (L{None} until then),
        so that it is derived once per publication rather than once per subscriber.
    """

    __slots__ = ("destination", "body", "message_id", "offset", "encoded")

    def __init__(
        self, destination: str, body: bytes, message_id: str, offset: int | None = None
    ) -> None:
        self.destination = destination
        self.body = body
        self.message_id = message_id
        self.offset = offset
        self.encoded: Any = None


def encode_event(event: dict[str, Any]) -> bytes:
    """
    Encode an event as compact UTF-8 JSON, keeping key order.
    """
    return compact_json(event).encode("utf-8")


@implementer(IHub)
class InProcessHub:
    """
    A hub for one process: destinations map to ordered sets of subscribers.

    @param node_id: prefixes this hub's message ids (random when not given).

    @ivar publications: publications that had at least one subscriber, since start.
    @ivar deliveries: publications handed to subscribers, since start (one per
        subscriber of each publication; counted once per publication, not per delivery).
    """

    def __init__(self, node_id: str | None = None) -> None:
        self._subscribers: dict[str, dict[ISubscriber, None]] = {}
        self._node = node_id or os.urandom(4).hex()
        self._counter = itertools.count(1)
        self.publications = 0
        self.deliveries = 0

    def subscribe(self, destination: str, subscriber: ISubscriber) -> None:
        self._subscribers.setdefault(destination, {})[subscriber] = None

    def unsubscribe(self, destination: str, subscriber: ISubscriber) -> None:
        subs = self._subscribers.get(destination)
        if subs is None or subscriber not in subs:
            return
        del subs[subscriber]
        if not subs:
            del self._subscribers[destination]

    def publish(self, destination: str, event: dict[str, Any]) -> None:
        if destination not in self._subscribers:
            return
        self.publish_encoded(destination, encode_event(event))

    def publish_encoded(self, destination: str, body: bytes, offset: int | None = None) -> None:
        subs = self._subscribers.get(destination)
        if not subs:
            return
        publication = Publication(
            destination, body, f"{self._node}-{next(self._counter)}", offset
        )
        # A snapshot: a delivery may end a session, which unsubscribes it.
        snapshot = list(subs)
        self.publications += 1
        self.deliveries += len(snapshot)
        for subscriber in snapshot:
            try:
                subscriber.deliver(publication)
            except Exception:
                _log.failure(
                    "delivery to a subscriber of {destination} failed",
                    destination=destination,
                )

    def subscriber_count(self, destination: str) -> int:
        """
        How many subscriptions C{destination} has now (for operators and tests).
        """
        return len(self._subscribers.get(destination, ()))

    def subscription_count(self) -> int:
        """
        How many subscriptions all destinations have now (for metrics).
        """
        return sum(len(subs) for subs in self._subscribers.values())
