"""
An in-memory L{IBroadcast} for tests: L{Bus} links the broadcasts of several "processes",
and carries what each sends in one reactor turn (of the bus's L{Clock}) as one batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from zope.interface import implementer

from medichat.interfaces import IBroadcast
from medichat.store.broadcast import encode_message, message_room


class Bus:
    """
    The cluster: every started, connected L{MemoryBroadcast} made by L{join}.

    @ivar batches: each batch carried, as C{(sender, messages)}, in order.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.members: list[MemoryBroadcast] = []
        self.batches: list[tuple[str, list[Any]]] = []

    def join(self, node_id: str) -> MemoryBroadcast:
        """A new member's broadcast, not yet started."""
        member = MemoryBroadcast(self, node_id)
        self.members.append(member)
        return member

    def carry(self, sender: str, messages: list[Any]) -> None:
        """Deliver one batch to every listening member, the sender included."""
        self.batches.append((sender, messages))
        for member in list(self.members):
            if member.connected:
                for message in messages:
                    member.receive(sender, message)


@implementer(IBroadcast)
class MemoryBroadcast:
    """
    One member of a L{Bus}: messages round-trip through JSON, like PostgreSQL's payloads.
    """

    def __init__(self, bus: Bus, node_id: str) -> None:
        self.node_id = node_id
        self.connected = False
        self._bus = bus
        self._pending: list[bytes] = []
        self._flush: IDelayedCall | None = None
        self._receiver: Callable[[str, Any], None] | None = None
        self._reconnected: Callable[[], None] | None = None

    def start(self) -> Deferred[None]:
        """Listen at once."""
        self.reconnect()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Carry what is queued, then stop listening."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
            self._deliver()
        self.connected = False
        return succeed(None)

    def send(self, message: Any) -> bool:
        """Queue for the end of this turn; refuse what PostgreSQL could not carry."""
        data = encode_message(message)
        if len(data) > message_room(self.node_id):
            return False
        self._pending.append(data)
        if self._flush is None:
            self._flush = self._bus.clock.callLater(0, self._deliver)
        return True

    def set_receiver(self, receiver: Callable[[str, Any], None]) -> None:
        """See L{IBroadcast.set_receiver}."""
        self._receiver = receiver

    def set_reconnected(self, callback: Callable[[], None]) -> None:
        """See L{IBroadcast.set_reconnected}."""
        self._reconnected = callback

    def _deliver(self) -> None:
        self._flush = None
        pending, self._pending = self._pending, []
        self._bus.carry(self.node_id, [json.loads(data) for data in pending])

    def receive(self, sender: str, message: Any) -> None:
        """One message from the bus."""
        if self._receiver is not None:
            self._receiver(sender, message)

    def disconnect(self) -> None:
        """Stop listening, as a lost connection would: what is carried meanwhile is missed."""
        self.connected = False

    def reconnect(self) -> None:
        """Listen (again), and say so."""
        self.connected = True
        if self._reconnected is not None:
            self._reconnected()
