"""
A hub for a cluster of processes: each process delivers to its own subscribers, and
ephemeral events cross to the other processes through an L{IBroadcast}.

Two kinds of broadcast message:

  - C{{"kind":"event","destination":D,"event":E}}: an ephemeral event (typing, presence,
    online employees) published on one process; every other process publishes it to its
    own subscribers, once.  The heartbeat topic never leaves its process;
  - C{{"kind":"wake"}}: something durable was committed (into the events table, read by
    every process's event feed); the other processes call their catch-up function.

Durable events (L{DURABLE_KINDS}) never travel in broadcasts, whichever way they are
published: every process reads them from the store, in commit order, and publishes them to
its own subscribers (L{ClusterHub.publish_encoded}, or L{ClusterHub.publish}, which keeps
them local too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from medichat.interfaces import IBroadcast, IHub, ISubscriber
from medichat.pubsub.hub import InProcessHub
from medichat.pubsub.topics import HEARTBEAT_TOPIC, TOPIC_PREFIX

_log = Logger()

EVENT = "event"
"""The kind of a broadcast that carries an ephemeral event."""

WAKE = "wake"
"""The kind of a broadcast that asks the other processes to catch up with the store."""

DURABLE_KINDS = frozenset(
    {"message", "read", "received", "conversationCreated", "conversationUpdated"}
)
"""The events (named by their one key) that are stored, and so never broadcast."""


@implementer(IHub)
class ClusterHub:
    """
    L{IHub} for one process of a cluster: an in-process hub for this process's
    subscribers, and a broadcast to the others.

    @ivar local: the in-process hub that this process's subscribers are in.
    @ivar broadcast: what carries events to the other processes.
    """

    def __init__(self, local: InProcessHub, broadcast: IBroadcast, clock: IReactorTime) -> None:
        """
        @param local: the hub of this process's subscribers.
        @param broadcast: shared with no other hub; this hub becomes its receiver and its
            reconnected callback.
        @param clock: turns are counted with it, so that one wake leaves per turn.
        """
        self.local = local
        self.broadcast = broadcast
        self._clock = clock
        self._catch_up: Callable[[], object] | None = None
        self._wake_sent: IDelayedCall | None = None
        broadcast.set_receiver(self._received)
        broadcast.set_reconnected(self._reconnected)

    # -- IHub ------------------------------------------------------------------------------

    def subscribe(self, destination: str, subscriber: ISubscriber) -> None:
        """See L{IHub.subscribe}: this process's subscriber."""
        self.local.subscribe(destination, subscriber)

    def unsubscribe(self, destination: str, subscriber: ISubscriber) -> None:
        """See L{IHub.unsubscribe}."""
        self.local.unsubscribe(destination, subscriber)

    def publish(self, destination: str, event: dict[str, Any]) -> None:
        """
        See L{IHub.publish}: deliver to this process's subscribers, and have every other
        process deliver it to theirs, unless it is durable (L{DURABLE_KINDS}: the other
        processes read it from the store) or on the heartbeat topic.
        """
        self.local.publish(destination, event)
        if destination != HEARTBEAT_TOPIC and not DURABLE_KINDS.intersection(event):
            self.broadcast.send({"kind": EVENT, "destination": destination, "event": event})

    # -- durable events --------------------------------------------------------------------

    def publish_encoded(self, destination: str, body: bytes, offset: int | None = None) -> None:
        """
        See L{IHub.publish_encoded}: deliver to this process's subscribers only.  The event
        feed publishes durable events so, and every process's feed reads them from the
        store itself.
        """
        self.local.publish_encoded(destination, body, offset)

    def set_catch_up(self, catch_up: Callable[[], object]) -> None:
        """
        Call C{catch_up()} when another process says it committed events (L{wake}) and
        when the broadcast listens again after a loss (notifications may have been missed).
        """
        self._catch_up = catch_up

    def wake(self) -> None:
        """
        Tell the other processes that events were committed; several calls in one
        reactor turn send one message.
        """
        if self._wake_sent is not None:
            return
        self._wake_sent = self._clock.callLater(0, self._next_turn)
        self.broadcast.send({"kind": WAKE})

    def _next_turn(self) -> None:
        self._wake_sent = None

    # -- receiving -------------------------------------------------------------------------

    def _received(self, node: str, message: Any) -> None:
        if node == self.broadcast.node_id:
            return
        kind = message.get("kind") if isinstance(message, dict) else None
        if kind == WAKE:
            self._call_catch_up()
            return
        if kind == EVENT:
            destination, event = message.get("destination"), message.get("event")
            if (
                isinstance(destination, str)
                and destination.startswith(TOPIC_PREFIX)
                and destination != HEARTBEAT_TOPIC
                and isinstance(event, dict)
            ):
                self.local.publish(destination, event)
                return
        _log.warn("ignoring a broadcast from {node} that is not understood", node=node)

    def _reconnected(self) -> None:
        self._call_catch_up()

    def _call_catch_up(self) -> None:
        if self._catch_up is None:
            return
        try:
            self._catch_up()
        except Exception:
            _log.failure("catching up with the store failed")


__all__ = ["DURABLE_KINDS", "EVENT", "WAKE", "ClusterHub"]
