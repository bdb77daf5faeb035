"""
Tests for the event options of L{medichat.app.tap}: C{--event-retention} and
C{--event-poll-interval}, and the wiring of the event feed and pruner around the store.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from medichat.app.tap import Options, makeService
from medichat.model import Conversation, Message, micros, new_id, parse_time
from medichat.store import SQLiteStore
from medichat.store.sqlite import SQLITE_FILE_NAME


class EventOptionTests(SynchronousTestCase):
    """
    The event options have documented defaults and refuse what is not positive.
    """

    def test_defaults(self) -> None:
        """Seven days of retention; a fallback read every second."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["event-retention"], 7 * 24 * 3600)
        self.assertEqual(options["event-poll-interval"], 1.0)

    def test_values(self) -> None:
        """Both take numbers of seconds."""
        options = Options()
        options.parseOptions(["--event-retention", "3600", "--event-poll-interval", "0.25"])
        self.assertEqual((options["event-retention"], options["event-poll-interval"]),
                         (3600, 0.25))

    def test_bad(self) -> None:
        """Zero, negative or non-numeric values are usage errors naming the option."""
        for option, bad in (("event-retention", "0"), ("event-retention", "1.5"),
                            ("event-poll-interval", "0"), ("event-poll-interval", "soon")):
            with self.subTest(option=option, bad=bad):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, [f"--{option}", bad]
                )
                self.assertIn(f"--{option}", str(error))


class EventWiringTests(TestCase):
    """
    Once the store runs, the feed starts after the newest event and the pruner deletes
    events past the retention.
    """

    async def test_started_with_the_store(self) -> None:
        """An old event is pruned at start; the feed starts after the newest event."""
        data_dir = self.mktemp()
        store = SQLiteStore(f"{data_dir}/{SQLITE_FILE_NAME}", reactor)
        await store.start()
        conversation = Conversation(new_id(), parse_time("2021-07-14T12:00:00Z"), "c", "C")
        await store.create_conversation(conversation)
        for created in (conversation.created, micros(reactor.seconds())):
            message = Message(new_id(), conversation.id, created, "c", "C", "customer", "hi")
            await store.add_message(message, None)
        await store.stop()

        options = Options()
        options.parseOptions(["--data-dir", data_dir,
                              "--listen", "tcp:0:interface=127.0.0.1"])
        service: Any = makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        # The pruner's delete ran first: the one SQLite connection runs operations in order.
        events = await service.store.events_after(0, 10)
        self.assertEqual([e.offset for e in events], [2])
        feed, pruner = service._after_store
        self.assertEqual(feed.position, 2)
        self.assertEqual(pruner.retention, 7 * 24 * 3600)
