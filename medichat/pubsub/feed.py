"""
The durable event feed: from the store's events table to the hub.

The durable conversation events (C{message}, C{read}, C{received}) are committed by the
store in the transaction of the change they report, each with a global position (gap-free,
in commit order) and an offset in its conversation's stream.  The events of the employees'
feed (C{conversationCreated}, C{conversationUpdated}) share those positions, belong to no
stream, and are published on C{/v1/topic/conversations}.  L{EventFeed} publishes them
on the hub in position order, each exactly once in this process, by reading what was
committed after the last position it published whenever it is told that something may
have been committed (L{EventFeed.catch_up}): after each commit of this process, on each
tick of a fallback poll, and (with several processes) on a wake-up from the others.
Whoever calls, it is the same read, so a lost wake-up only delays an event.

A feed that the store hands this process's commits to (C{hand_off=True},
L{medichat.interfaces.IStore.hand_off}) publishes them without reading them back, when
they follow its last position.  What is handed over while a read is under way waits for
it, and is published after it if it then follows on (a read does not start another for
them); if it does not (what another process committed came between), the feed reads.

L{EventPruner} deletes the events older than the retention, on the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from medichat._writebatch import write_batch
from medichat.interfaces import IEventFeed, IHub, IStore
from medichat.model import CONVERSATION_FEED_KINDS, StoredEvent, micros
from medichat.pubsub.topics import CONVERSATIONS_TOPIC, conversation_topic

__all__ = ["DEFAULT_PAGE", "DEFAULT_POLL_INTERVAL", "DEFAULT_RETENTION", "EventFeed", "EventPruner"]

DEFAULT_PAGE = 500
"""Events the feed reads at once."""

DEFAULT_POLL_INTERVAL = 1.0
"""Seconds between the feed's fallback reads."""

DEFAULT_RETENTION = 7 * 24 * 3600
"""Seconds an event is kept for replay (C{--event-retention})."""

_log = Logger()


@implementer(IEventFeed)
class EventFeed:
    """
    Publishes committed events to the hub in position order, each once.

    At most one read of the store is under way at a time: however many commits ask for a
    catch-up meanwhile, they make one more read once it is done.  A read that returns a
    full page is followed by the next at once.

    @ivar position: the position of the last event published (L{None} until started).
    @ivar reads: how many reads of the store it made (for operators and tests).
    @ivar published: events it published, since start.
    @ivar published_handed: of those, the events the store handed over as they were
        committed here (C{hand_off}), published without a read.
    @ivar published_by_poll: of those, the events that a read of the fallback poll found
        (no commit in this process nor a wake-up from another asked for that read): each
        is an event that a lost wake-up would have left unseen until the poll.
    @ivar lag_observer: called with the seconds from each event's commit to its
        publication here, when set (for metrics).
    """

    def __init__(
        self,
        store: IStore,
        hub: IHub,
        clock: IReactorTime,
        *,
        poll_interval: float | None = DEFAULT_POLL_INTERVAL,
        page: int = DEFAULT_PAGE,
        tell_others: Callable[[], object] | None = None,
        hand_off: bool = False,
    ) -> None:
        """
        @param store: where events are committed.
        @param hub: where they are published.
        @param clock: drives the fallback poll.
        @param poll_interval: seconds between fallback reads, or L{None} for none.
        @param page: events read at once.
        @param tell_others: called after this process's commits, to wake the feeds of the
            other processes on the same store (L{medichat.pubsub.cluster.ClusterHub.wake});
            L{None} for one process.
        @param hand_off: take what this process commits from the store as it commits
            (L{IStore.hand_off}, while started) instead of reading it back after each
            commit.
        """
        self._store = store
        self._hub = hub
        self._clock = clock
        self._poll_interval = poll_interval
        self._page = page
        self._tell_others = tell_others
        self._hand_off = hand_off
        self.position: int | None = None
        self._reading = False
        self._again = False
        # What the store handed over while a read was under way, in commit order.
        self._meanwhile: list[StoredEvent] = []
        self._failing = False
        self._poll: LoopingCall | None = None
        self.reads = 0
        self.published = 0
        self.published_handed = 0
        self.published_by_poll = 0
        self.lag_observer: Callable[[float], object] | None = None
        # What asked for the reads since the last one began: the poll, anything else.
        self._polled = False
        self._nudged = False
        self._read_by_poll = False

    def start(self, position: int | None = None) -> Deferred[None]:
        """
        Start after the newest event committed now (older ones are nobody's news: a
        client that wants them replays them with C{x-stream-offset}), or after
        C{position}; then poll.
        """
        if position is not None:
            self._started(position)
            return succeed(None)
        return self._store.last_event_position().addCallback(self._started)

    def _started(self, position: int) -> None:
        self.position = position
        _log.info("event feed starts after position {position}", position=position)
        if self._hand_off:
            self._store.hand_off(self._handed)
        if self._poll_interval is not None:
            self._poll = LoopingCall(self._poll_due)
            self._poll.clock = self._clock
            self._poll.start(self._poll_interval, now=False)

    def stop(self) -> None:
        """
        Stop polling and publishing.
        """
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._hand_off and self.position is not None:
            self._store.hand_off(None)
        self.position = None
        self._meanwhile = []

    def _poll_due(self) -> None:
        self._polled = True
        self._catch_up()

    def catch_up(self) -> None:
        """See L{IEventFeed.catch_up}."""
        self._nudged = True
        self._catch_up()

    def _catch_up(self) -> None:
        if self.position is None:
            return
        if self._reading:
            self._again = True
            return
        self._reading = True
        self._read()

    def committed(self) -> None:
        """
        See L{IEventFeed.committed}.  With C{hand_off}, this process's events came as
        they were committed (L{_handed}), so there is nothing to read here for them.
        """
        if not self._hand_off:
            self.catch_up()
        if self._tell_others is not None:
            self._tell_others()

    def _handed(self, events: Sequence[StoredEvent]) -> None:
        """
        The store committed C{events} (in position order, consecutive): publish them now
        if they are the next ones; if they are not (what another process committed came
        between), a read publishes them in turn.  If a read is under way they wait for it
        (L{_after_read}): under a steady stream of commits, starting another read for
        each would keep the feed reading for as long as the stream lasts.  A read may have
        published them already (with PostgreSQL, a read on another connection can be
        answered before the commit is): then there is nothing to do.
        """
        if self.position is None or events[-1].position <= self.position:
            return
        if self._reading:
            self._meanwhile.extend(events)
            return
        if not _follow_on(self.position, events):
            self.catch_up()
            return
        self._publish(events, handed=True)

    def _after_read(self) -> bool:
        """
        Publish what was handed over during the read that just ended, if it follows on.

        @return: whether to read again: what was handed over does not follow on.
        """
        meanwhile, self._meanwhile = self._meanwhile, []
        assert self.position is not None
        fresh = [event for event in meanwhile if event.position > self.position]
        if not fresh:
            return False
        if not _follow_on(self.position, fresh):
            return True
        self._publish(fresh, handed=True)
        return False

    def _read(self) -> None:
        # Loops while the store answers at once (an in-memory store), rather than
        # recursing page after page; otherwise carries on from the callback.
        while True:
            if self.position is None:
                self._reading = False
                return
            self._again = False
            self.reads += 1
            if self._polled or self._nudged:
                # Otherwise this is the next page of the same catch-up.
                self._read_by_poll = self._polled and not self._nudged
                self._polled = self._nudged = False
            outcome: list[Any] = []
            d: Deferred[Any] = self._store.events_after(self.position, self._page)
            d.addBoth(outcome.append)
            if not outcome:
                d.addCallback(self._later, outcome)
                return
            if not self._handled(outcome[0]):
                return

    def _later(self, _: None, outcome: list[Any]) -> None:
        if self._handled(outcome[0]):
            self._read()

    def _handled(self, result: Sequence[StoredEvent] | Failure) -> bool:
        """
        Publish what a read returned.

        @return: whether to read again now.
        """
        if isinstance(result, Failure):
            if not self._failing:
                self._failing = True
                _log.warn(
                    "event feed cannot read the store, retrying at the next catch-up: {error}",
                    error=result.getErrorMessage(),
                )
            # What was handed over meanwhile is in the store: the next read has it.
            self._meanwhile = []
            self._reading = False
            return False
        if self._failing:
            self._failing = False
            _log.info("event feed reads the store again")
        self._publish(result)
        if self.position is not None and (
            len(result) >= self._page or self._again or self._after_read()
        ):
            return True
        self._reading = False
        return False

    def _publish(self, events: Sequence[StoredEvent], handed: bool = False) -> None:
        """
        Publish the events past the last position, in order.

        @param handed: they were handed over by the store, not read.
        """
        lag_observer = self.lag_observer
        now = self._clock.seconds() if lag_observer is not None else 0.0
        # A connection that several of these events reach writes its frames at once, at
        # the end (a chat message's event and its receipt's reach both participants).
        with write_batch:
            for event in events:
                if self.position is None:
                    break
                if event.position <= self.position:
                    continue
                self.position = event.position
                self.published += 1
                if handed:
                    self.published_handed += 1
                elif self._read_by_poll:
                    self.published_by_poll += 1
                if lag_observer is not None:
                    lag_observer(max(0.0, now - event.created / 1_000_000))
                try:
                    if event.kind in CONVERSATION_FEED_KINDS:
                        self._hub.publish_encoded(CONVERSATIONS_TOPIC, event.body.encode("utf-8"))
                    else:
                        self._hub.publish_encoded(
                            conversation_topic(event.conversation_id),
                            event.body.encode("utf-8"),
                            event.offset,
                        )
                except Exception:
                    _log.failure(
                        "publishing event {position} of conversation {conversation} failed",
                        position=event.position,
                        conversation=event.conversation_id,
                    )


def _follow_on(position: int, events: Sequence[StoredEvent]) -> bool:
    """Whether C{events}, in their order, are the ones right after C{position}."""
    return all(event.position == position + i for i, event in enumerate(events, 1))


class EventPruner:
    """
    Deletes the events older than the retention: once at start, then every C{interval}
    seconds.  Messages themselves are never deleted; only their replay goes.
    """

    def __init__(self, store: IStore, clock: IReactorTime, retention: float,
                 interval: float = 3600.0) -> None:
        """
        @param store: where the events are.
        @param clock: gives the time and drives the runs.
        @param retention: seconds an event is kept.
        @param interval: seconds between runs.
        """
        self._store = store
        self._clock = clock
        self.retention = retention
        self._interval = interval
        self._loop: LoopingCall | None = None

    def start(self) -> Deferred[None]:
        """
        Prune now and every C{interval} seconds.
        """
        self._loop = LoopingCall(self.prune)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)
        return succeed(None)

    def stop(self) -> None:
        """
        Stop pruning.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def prune(self) -> Deferred[None]:
        """
        Delete the events older than the retention now; failures are logged (the next
        run tries again).
        """
        before = micros(self._clock.seconds() - self.retention)
        d = self._store.prune_events(before)

        def pruned(count: int) -> None:
            if count:
                _log.info("pruned {count} events older than the retention", count=count)

        def failed(failure: Failure) -> None:
            _log.warn("pruning events failed: {error}", error=failure.getErrorMessage())

        return d.addCallbacks(pruned, failed)
