"""
The wiring of the event feed and pruner around the real store, through
L{medichat.app.tap.makeService} on the real reactor (the SQLite store runs in its thread).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from medichat.app.tap import Options, makeService
from medichat.domain.access import YEAR
from medichat.model import AccessEntry, Conversation, Message, micros, new_id, parse_time
from medichat.store import SQLiteStore
from medichat.store.sqlite import SQLITE_FILE_NAME


class EventWiringTests(TestCase):
    """
    Once the store runs, the feed starts after the newest event and the pruner deletes
    events past the retention.
    """

    async def test_started_with_the_store(self) -> None:
        """Old events are pruned at start; the feed starts after the newest event."""
        data_dir = self.mktemp()
        store = SQLiteStore(f"{data_dir}/{SQLITE_FILE_NAME}", reactor)
        await store.start()
        conversation = Conversation(new_id(), parse_time("2021-07-14T12:00:00Z"), "c", "C")
        await store.create_conversation(conversation)
        for created in (conversation.created, micros(reactor.seconds())):
            message = Message(new_id(), conversation.id, created, "c", "C", "customer", "hi")
            await store.add_message(message, None)
        now = micros(reactor.seconds())
        await store.record_access([
            AccessEntry(at, "e", "E", "employee", action, conversation.id, "c", None)
            for at, action in ((now - micros(5 * YEAR) - 1, "list"), (now, "view"))
        ])
        await store.stop()

        options = Options()
        options.parseOptions(["--data-dir", data_dir,
                              "--listen", "tcp:0:interface=127.0.0.1"])
        service: Any = makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        # The pruner's delete ran first: the one SQLite connection runs operations in order.
        # What is left: the new message's event and its conversationUpdated (offset 0: the
        # employees' feed); the old message and conversationCreated are gone.
        events = await service.store.events_after(0, 10)
        self.assertEqual([(e.kind, e.offset) for e in events],
                         [("message", 2), ("conversationUpdated", 0)])
        feed, pruner, access_pruner = service._after_store
        self.assertEqual(feed.position, 4)
        self.assertEqual(pruner.retention, 7 * 24 * 3600)
        # And the access log's rows past its retention (5 years) went at start too.
        self.assertEqual(access_pruner.retention, 5 * YEAR)
        kept = await service.store.access_log(limit=10)
        self.assertEqual([e.action for e in kept], ["view"])
