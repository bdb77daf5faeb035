"""
Tests for L{medichat.pubsub.feed}: committed events reach the hub once each, in commit
order, with their offsets; catch-ups coalesce; old events are pruned.  On the real SQL
store run inline (L{MemoryStore}) and a L{Clock}: nothing waits.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from medichat._writebatch import write_batch
from medichat.errors import StoreUnavailable
from medichat.interfaces import ISubscriber
from medichat.model import Conversation, Message, micros, new_id
from medichat.pubsub.feed import EventFeed, EventPruner
from medichat.pubsub.hub import InProcessHub, Publication, encode_event
from medichat.pubsub.topics import conversation_topic
from medichat.testing import MemoryStore, memory_database
from tests._inline import InlineTestCase

NOW = 1_780_000_000.0


@implementer(ISubscriber)
class Keeper:
    """Keeps what is delivered to it."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []

    def deliver(self, publication: Publication) -> None:
        self.publications.append(publication)

    @property
    def offsets(self) -> list[int | None]:
        return [p.offset for p in self.publications]

    @property
    def texts(self) -> list[str]:
        """The texts of the C{message} events delivered."""
        return [json.loads(p.body)["message"]["message"] for p in self.publications]


class FeedTestCase(InlineTestCase):
    """A feed from a fresh in-memory store to a real hub, on a clock."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore(self.clock)
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.hub = InProcessHub("test")

    async def conversation(self) -> Conversation:
        conversation = Conversation(new_id(), micros(self.clock.seconds()), "c", "C")
        await self.store.create_conversation(conversation)
        return conversation

    async def post(self, conversation: Conversation, text: str = "hi",
                   store: MemoryStore | None = None) -> Message:
        message = Message(new_id(), conversation.id, micros(self.clock.seconds()), "c", "C",
                          "customer", text)
        stored, _ = await (store or self.store).add_message(message, None)
        return stored  # type: ignore[no-any-return]

    def listen(self, conversation: Conversation) -> Keeper:
        keeper = Keeper()
        self.hub.subscribe(conversation_topic(conversation.id), keeper)
        return keeper

    def feed(self, **kwargs: Any) -> EventFeed:
        feed = EventFeed(self.store, self.hub, self.clock, **kwargs)
        self.addCleanup(feed.stop)
        return feed


class EventFeedTests(FeedTestCase):
    """
    L{EventFeed} publishes what was committed since its last position.
    """

    async def test_counts_and_lag(self) -> None:
        """Published events are counted, and each one's commit-to-publication lag told."""
        conversation = await self.conversation()
        self.listen(conversation)
        feed = self.feed(poll_interval=None)
        lags: list[float] = []
        feed.lag_observer = lags.append
        await feed.start()
        await self.post(conversation)
        self.clock.advance(2.5)
        await self.post(conversation)
        self.clock.advance(0.5)
        feed.catch_up()
        # The second message moved the conversation's activity: its conversationUpdated
        # for the employees' feed was committed with it.
        self.assertEqual(lags, [3.0, 0.5, 0.5])
        self.assertEqual((feed.published, feed.published_by_poll), (3, 0))

    async def test_counts_what_only_the_poll_found(self) -> None:
        """Events that only the fallback poll's read found are counted as caught up by it."""
        conversation = await self.conversation()
        feed = self.feed(poll_interval=5.0)
        await feed.start()
        await self.post(conversation)
        feed.catch_up()
        self.assertEqual((feed.published, feed.published_by_poll), (1, 0))
        # Two commits whose wake-ups were lost: the poll finds them.
        await self.post(conversation)
        await self.post(conversation)
        self.clock.advance(5.0)
        self.assertEqual((feed.published, feed.published_by_poll), (3, 2))
        # A poll that finds nothing counts nothing.
        self.clock.advance(5.0)
        self.assertEqual((feed.published, feed.published_by_poll), (3, 2))

    async def test_poll_counts_every_page(self) -> None:
        """What the poll finds is counted on every page its catch-up reads."""
        conversation = await self.conversation()
        feed = self.feed(poll_interval=5.0, page=1)
        await feed.start()
        for _ in range(3):
            await self.post(conversation)
        self.clock.advance(5.0)
        self.assertEqual((feed.published, feed.published_by_poll), (3, 3))
        await self.post(conversation)
        feed.catch_up()
        # That message, later, also moved the activity: a conversationUpdated with it.
        self.assertEqual((feed.published, feed.published_by_poll), (5, 3))

    async def test_publishes_in_order_once(self) -> None:
        """Each committed event is published once, in commit order, with its offset."""
        one, two = await self.conversation(), await self.conversation()
        ones, twos = self.listen(one), self.listen(two)
        feed = self.feed(poll_interval=None)
        await feed.start()
        first = await self.post(one, "first")
        await self.post(two)
        await self.store.mark_read(one.id, "u", micros(NOW) + 1)
        feed.catch_up()
        feed.catch_up()
        self.assertEqual(ones.offsets, [1, 2])
        self.assertEqual(twos.offsets, [1])
        self.assertEqual(ones.publications[0].body, encode_event({"message": first.as_json()}))
        self.assertEqual(ones.publications[0].destination, conversation_topic(one.id))
        # After the two conversationCreated, nothing moved a conversation's activity
        # (the clock stood still): positions 3, 4, 5.
        self.assertEqual(feed.position, 5)

    async def test_published_in_one_write_batch(self) -> None:
        """
        The events of one pass are delivered inside the process's write batch, so that a
        connection they reach several times writes once, after the last.
        """
        conversation = await self.conversation()
        active: list[bool] = []

        @implementer(ISubscriber)
        class Watcher:
            def deliver(self, publication: Publication) -> None:
                active.append(write_batch.active)

        self.hub.subscribe(conversation_topic(conversation.id), Watcher())
        feed = self.feed(poll_interval=None)
        await feed.start()
        await self.post(conversation)
        await self.store.mark_read(conversation.id, "u", micros(NOW) + 1)
        feed.catch_up()
        self.assertEqual(active, [True, True])
        self.assertFalse(write_batch.active)

    async def test_starts_after_newest(self) -> None:
        """At start, events committed before are not published to anybody."""
        conversation = await self.conversation()
        await self.post(conversation)
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=None)
        await feed.start()
        self.assertEqual(feed.position, 2)  # conversationCreated and the message
        feed.catch_up()
        self.assertEqual(keeper.offsets, [])
        await self.post(conversation)
        feed.catch_up()
        self.assertEqual(keeper.offsets, [2])

    async def test_not_started(self) -> None:
        """A feed that was not started (or was stopped) publishes nothing."""
        conversation = await self.conversation()
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=None)
        await self.post(conversation)
        feed.catch_up()
        self.assertEqual((keeper.offsets, feed.reads), ([], 0))

    async def test_coalesced(self) -> None:
        """Catch-ups while a read is under way make one more read, however many."""
        conversation = await self.conversation()
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=None)
        await feed.start()
        for i in range(5):
            await self.post(conversation, str(i))
        self.store.hold()
        for _ in range(5):
            feed.catch_up()  # five commits ask, while the first read waits for the store
        self.assertEqual(feed.reads, 1)
        self.store.flush()
        # The first read published all five; the four later asks made one more read.
        self.assertEqual(keeper.offsets, [1, 2, 3, 4, 5])
        self.assertEqual(feed.reads, 2)
        self.store.flush()
        self.assertEqual(feed.reads, 2)
        self.store.release()
        self.assertEqual(keeper.offsets, [1, 2, 3, 4, 5])

    async def test_pages(self) -> None:
        """A full page is followed by the next read at once, until all are published."""
        conversation = await self.conversation()
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=None, page=2)
        await feed.start()
        for i in range(5):
            await self.post(conversation, str(i))
        feed.catch_up()
        self.assertEqual(keeper.offsets, [1, 2, 3, 4, 5])
        self.assertEqual(feed.reads, 3)

    async def test_poll(self) -> None:
        """Without being told, the poll publishes what was committed within an interval."""
        conversation = await self.conversation()
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=1.0)
        await feed.start()
        await self.post(conversation)
        self.clock.advance(0.9)
        self.assertEqual(keeper.offsets, [])
        self.clock.advance(0.1)
        self.assertEqual(keeper.offsets, [1])
        feed.stop()
        await self.post(conversation)
        self.clock.advance(5)
        self.assertEqual(keeper.offsets, [1])

    async def test_store_failure_retried(self) -> None:
        """A read that fails is logged once; the next catch-up publishes everything."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        conversation = await self.conversation()
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=None)
        await feed.start()
        await self.post(conversation)
        events_after = self.store.events_after

        def broken(position: int, limit: int) -> Deferred[Any]:
            return fail(StoreUnavailable("down"))

        self.store.events_after = broken  # type: ignore[method-assign]
        feed.catch_up()
        feed.catch_up()
        warnings = [e for e in logged if "cannot read the store" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(keeper.offsets, [])
        self.store.events_after = events_after  # type: ignore[method-assign]
        await self.post(conversation)
        feed.catch_up()
        self.assertEqual(keeper.offsets, [1, 2])


class HandOffTests(FeedTestCase):
    """
    L{EventFeed} with C{hand_off}: what this process commits is published as the store
    commits it, without a read, unless a read is under way or other commits came between.
    """

    async def test_published_as_committed(self) -> None:
        """
        Each commit's events are published in order, with their offsets, before the
        writer even says it committed, and no read is made; C{committed} reads nothing.
        """
        one, two = await self.conversation(), await self.conversation()
        ones, twos = self.listen(one), self.listen(two)
        feed = self.feed(poll_interval=None, hand_off=True)
        await feed.start()
        first = await self.post(one, "first")
        self.assertEqual(ones.offsets, [1])
        await self.post(two)
        await self.store.mark_read(one.id, "u", micros(NOW) + 1)
        feed.committed()
        self.assertEqual((ones.offsets, twos.offsets), ([1, 2], [1]))
        self.assertEqual(ones.publications[0].body, encode_event({"message": first.as_json()}))
        self.assertEqual(feed.position, await self.store.last_event_position())
        self.assertEqual((feed.reads, feed.published, feed.published_handed), (0, 3, 3))

    async def started(self) -> tuple[Conversation, Keeper, EventFeed]:
        """A conversation, a listener on it, and a started feed with the hand-off."""
        conversation = await self.conversation()
        keeper = self.listen(conversation)
        feed = self.feed(poll_interval=None, hand_off=True)
        await feed.start()
        return conversation, keeper, feed

    def slow_reads(self) -> list[tuple[Deferred[Any], Any]]:
        """
        From now on the store's reads take their rows when asked but answer only when
        the test fires what this returns (each read's Deferred and its result).
        """
        answers: list[tuple[Deferred[Any], Any]] = []
        events_after = self.store.events_after

        def slow(position: int, limit: int) -> Deferred[Any]:
            answer: Deferred[Any] = Deferred()
            events_after(position, limit).addBoth(lambda rows: answers.append((answer, rows)))
            return answer

        self.store.events_after = slow  # type: ignore[method-assign]
        self.addCleanup(setattr, self.store, "events_after", events_after)
        return answers

    async def test_while_reading(self) -> None:
        """
        Events committed before a read under way took its rows are published by the
        read, once, and need no other read.
        """
        conversation, keeper, feed = await self.started()
        self.store.hold()
        posted = Deferred.fromCoroutine(self.post(conversation))
        feed.catch_up()  # a poll or a wake-up, read after the commit
        self.store.flush()  # the commit (handed over mid-read), then the read
        self.assertEqual(keeper.offsets, [1])
        self.assertEqual((feed.reads, feed.published_handed), (1, 0))
        self.store.release()
        await posted
        self.assertEqual(keeper.offsets, [1])

    async def test_committed_after_read_taken(self) -> None:
        """
        Events committed after a read under way took its rows are published when it
        ends, in order, without another read: a steady stream of commits does not keep
        the feed reading.
        """
        conversation, keeper, feed = await self.started()
        await self.post(conversation, "before")  # handed over and published
        answers = self.slow_reads()
        feed.catch_up()  # the read takes its rows (none)...
        for text in ("one", "two", "three"):
            await self.post(conversation, text)  # ...then three commits are handed over
        self.assertEqual(keeper.offsets, [1])
        answer, rows = answers.pop()
        answer.callback(rows)
        self.assertEqual(keeper.offsets, [1, 2, 3, 4])
        self.assertEqual(keeper.texts, ["before", "one", "two", "three"])
        self.assertEqual((feed.reads, feed.published_handed, answers), (1, 4, []))
        await self.post(conversation, "after")  # and the feed is back to taking them
        self.assertEqual((keeper.offsets[-1], feed.reads, feed.published_handed), (5, 1, 5))

    async def test_read_fails_meanwhile(self) -> None:
        """
        When the read under way fails, what was handed over meanwhile is published by
        the next read, in order, once.
        """
        conversation, keeper, feed = await self.started()
        answers = self.slow_reads()
        feed.catch_up()
        await self.post(conversation)
        answer, _ = answers.pop()
        answer.errback(StoreUnavailable("down"))
        self.assertEqual(keeper.offsets, [])
        feed.catch_up()
        answer, rows = answers.pop()
        answer.callback(rows)
        await self.post(conversation)
        self.assertEqual((keeper.offsets, feed.reads, feed.published_handed), ([1, 2], 2, 1))

    async def another_writer(self) -> MemoryStore:
        """
        Make the test's store one of two on the same database (two processes); the
        other one.
        """
        database = memory_database()
        self.addCleanup(database.close)
        stores = []
        for _ in range(2):
            store = MemoryStore(self.clock, database=database)
            await store.start()
            self.addCleanup(store.stop)
            stores.append(store)
        self.store, theirs = stores
        return theirs

    async def test_after_another_writer(self) -> None:
        """
        When another writer's events came between (another process on the same
        database), the feed reads, and publishes everyone's in order, each once.
        """
        theirs = await self.another_writer()
        conversation, keeper, feed = await self.started()
        for store, text in ((self.store, "mine"), (theirs, "theirs"), (self.store, "mine again")):
            await self.post(conversation, text, store)
        self.assertEqual(keeper.offsets, [1, 2, 3])
        self.assertEqual((feed.reads, feed.published_handed), (1, 1))
        self.assertEqual(keeper.texts, ["mine", "theirs", "mine again"])

    async def test_another_writer_while_reading(self) -> None:
        """
        When another writer's events came between the read under way and what was
        handed over meanwhile, the feed reads again, and publishes everyone's in order.
        """
        theirs = await self.another_writer()
        conversation, keeper, feed = await self.started()
        answers = self.slow_reads()
        feed.catch_up()
        await self.post(conversation, "theirs", theirs)
        await self.post(conversation, "mine")
        answer, rows = answers.pop()
        answer.callback(rows)  # took nothing; "mine" does not follow on
        answer, rows = answers.pop()
        answer.callback(rows)
        self.assertEqual(keeper.texts, ["theirs", "mine"])
        self.assertEqual((keeper.offsets, feed.reads, feed.published_handed), ([1, 2], 2, 0))

    async def test_read_first(self) -> None:
        """
        Events that a read has published already (it was answered before the commit
        was) are neither published again nor read for when they are handed over.
        """
        conversation, keeper, feed = await self.started()
        handed: list[Any] = []
        self.store.hand_off(handed.append)  # in place of the feed, for a moment
        await self.post(conversation)
        feed.catch_up()
        self.assertEqual((keeper.offsets, feed.reads), ([1], 1))
        feed._handed(handed[0])
        self.assertEqual((keeper.offsets, feed.reads, feed.published_handed), ([1], 1, 0))

    async def test_stopped(self) -> None:
        """A stopped feed takes nothing more from the store."""
        conversation, keeper, feed = await self.started()
        feed.stop()
        await self.post(conversation)
        self.assertEqual((keeper.offsets, feed.published), ([], 0))


class EventPrunerTests(FeedTestCase):
    """
    L{EventPruner} deletes events older than the retention, at start and then
    periodically.
    """

    async def test_prunes_periodically(self) -> None:
        """Events older than the retention go at start and at each interval; messages stay."""
        conversation = await self.conversation()
        await self.post(conversation)
        self.clock.advance(100)
        await self.post(conversation)
        pruner = EventPruner(self.store, self.clock, retention=150, interval=60)
        await pruner.start()
        self.addCleanup(pruner.stop)
        # conversationCreated and the first message; the second, and its conversationUpdated.
        self.assertEqual([e.offset for e in await self.store.events_after(0, 10)], [0, 1, 2, 0])
        self.clock.advance(60)  # now 160 s after the first event, 60 after the second
        self.assertEqual([e.offset for e in await self.store.events_after(0, 10)], [2, 0])
        self.clock.advance(120)
        self.assertEqual(list(await self.store.events_after(0, 10)), [])
        messages = await self.store.list_messages(conversation.id, None, False, None)
        self.assertEqual(len(messages), 2)
