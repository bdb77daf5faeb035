"""
What the WebSocket and TCP carriers of a STOMP session share: a bounded write buffer.

A client that cannot keep up must be dropped rather than buffered without bound.  The
carrier registers itself as the transport's push producer: the transport pauses it when its
buffer passes its own high-water mark, and from then on every byte written counts against
C{max_buffer}; over it, the connection is aborted.  Resuming resets the count.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

DEFAULT_MAX_BUFFER = 1024 * 1024


@implementer(IPushProducer)
class WriteBudget:
    """
    Tracks what a transport holds beyond its high-water mark and aborts it when too much.

    @ivar overflowed: C{True} once the budget was exceeded and the transport aborted.
    @ivar paused: whether the transport has paused it, so that writes count (the carriers
        call L{written} only then: it is a no-op otherwise).
    """

    _log = Logger()

    def __init__(self, transport: Any, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._transport = transport
        self._max = max_buffer
        self.paused = False
        self._excess = 0
        self.overflowed = False
        producer = getattr(transport, "producer", None)
        if producer is not None:
            # twisted.web's HTTPChannel stays registered after a WebSocket takeover.
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def written(self, size: int) -> bool:
        """
        Account for C{size} bytes just written.

        @return: C{False} if the budget is now exceeded and the connection was aborted.
        """
        if not self.paused:
            return True
        self._excess += size
        if self._excess <= self._max:
            return True
        if not self.overflowed:
            self.overflowed = True
            self._log.warn(
                "peer {peer} is not reading: dropped with {size} bytes unsent",
                peer=self._transport.getPeer(),
                size=self._excess,
            )
            self._transport.abortConnection()
        return False

    def pauseProducing(self) -> None:
        """The transport's buffer is full: start counting."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport drained: stop counting."""
        self.paused = False
        self._excess = 0

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.paused = False
