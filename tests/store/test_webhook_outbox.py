"""
Tests for the webhook outbox of the stores (L{medichat.store.webhook_scripts}): one
scenario run on SQLite, PostgreSQL and L{medichat.testing.MemoryStore}, plus PostgreSQL's
concurrent claims and the upgrade that fills C{conversation_employees}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from medichat.model import Conversation, Message, OfflineNotice, OutboxEntry, Role, new_id
from medichat.store import PostgreSQLStore, SQLiteStore
from medichat.store.scripts import Script, SQLStore, load_migrations
from medichat.store.sqlite import SQLITE_FILE_NAME
from medichat.testing import MemoryStore, memory_database
from tests._inline import InlineTestCase
from tests._pg import create_test_database

reactor: Any = _reactor

if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object

T0 = 1_800_000_000_000_000
CUSTOMER = "customer-1"
NURSE = "nurse-1"
DOCTOR = "doctor-1"


def rows(store: SQLStore) -> Deferred[list[tuple[Any, ...]]]:
    """(recipient, message, due, attempts, lease owner, failed, coalesced) of every row."""

    def script() -> Script[list[tuple[Any, ...]]]:
        result = yield store._dialect.statement(
            "SELECT recipient_user_id, message_id, due, attempts, lease_owner, failed,"
            " coalesced FROM webhook_outbox ORDER BY seq"
        )
        return [tuple(row) for row in result.rows]

    d: Deferred[list[tuple[Any, ...]]] = store._run(script())
    return d


class OutboxTestsMixin(_Base):
    """
    What every store's outbox must do.
    """

    def new_location(self) -> Deferred[Any]:
        raise NotImplementedError()

    def make_store(self, location: Any, migrations: Sequence[Any] | None = None) -> SQLStore:
        raise NotImplementedError()

    async def started(self, location: Any = None,
                      migrations: Sequence[Any] | None = None) -> SQLStore:
        if location is None:
            location = await self.new_location()
        store = self.make_store(location, migrations)
        await store.start()
        self.addCleanup(store.stop)
        return store

    async def conversation(self, store: SQLStore) -> Conversation:
        conversation = Conversation(new_id(), T0, CUSTOMER, "Carla")
        await store.create_conversation(conversation)
        return conversation

    async def post(self, store: SQLStore, conversation: Conversation, user: str, role: Role,
                   at: int, *, live: frozenset[str] = frozenset(), window: int = 5_000_000,
                   key: str | None = None) -> Message:
        message = Message(new_id(), conversation.id, at, user, user, role, "text")
        notice = OfflineNotice(live, at + window, window > 0)
        stored, _ = await store.add_message(message, key, notice=notice)
        return stored  # type: ignore[no-any-return]

    async def test_queued_with_message(self) -> None:
        """A message queues one row per offline user of the conversation, but the author."""
        store = await self.started()
        conversation = await self.conversation(store)
        first = await self.post(store, conversation, NURSE, "employee", T0)
        self.assertEqual(await rows(store),
                         [(CUSTOMER, first.id, T0 + 5_000_000, 0, None, None, 1)])
        await self.post(store, conversation, DOCTOR, "employee", T0 + 1,
                        live=frozenset({CUSTOMER}))
        # The customer is live: nothing for them; the nurse wrote here and is away.
        self.assertEqual([r[0] for r in await rows(store)], [CUSTOMER, NURSE])

    async def test_no_notice_no_rows(self) -> None:
        """Without a notice (webhooks off), nothing is queued, but authors are remembered."""
        store = await self.started()
        conversation = await self.conversation(store)
        message = Message(new_id(), conversation.id, T0, NURSE, "n", "employee", "text")
        await store.add_message(message, None)
        self.assertEqual(await rows(store), [])
        await self.post(store, conversation, CUSTOMER, "customer", T0 + 1)
        self.assertEqual([r[0] for r in await rows(store)], [NURSE])

    async def test_replay_queues_nothing(self) -> None:
        """An idempotent replay of a message queues nothing more."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, NURSE, "employee", T0, key="k", window=0)
        await self.post(store, conversation, NURSE, "employee", T0 + 1, key="k", window=0)
        self.assertEqual(len(await rows(store)), 1)

    async def test_coalesced(self) -> None:
        """A waiting row takes later messages for the same recipient; the due stays."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, NURSE, "employee", T0)
        last = await self.post(store, conversation, NURSE, "employee", T0 + 2_000_000)
        self.assertEqual(await rows(store),
                         [(CUSTOMER, last.id, T0 + 5_000_000, 0, None, None, 2)])
        [entry] = await store.claim_webhooks("a", T0 + 5_000_000, T0 + 9_000_000, 10)
        self.assertEqual((entry.message_id, entry.occurred, entry.coalesced),
                         (last.id, T0 + 2_000_000, 2))
        # Claimed: a later message makes a new row.
        await self.post(store, conversation, NURSE, "employee", T0 + 6_000_000)
        self.assertEqual(len(await rows(store)), 2)

    async def test_not_coalesced(self) -> None:
        """Without coalescing, each message makes its own row."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, NURSE, "employee", T0, window=0)
        await self.post(store, conversation, NURSE, "employee", T0 + 1, window=0)
        self.assertEqual(len(await rows(store)), 2)

    async def test_claim_order_and_due(self) -> None:
        """Claims take due rows only, oldest due first, up to the limit, and count attempts."""
        store = await self.started()
        messages = []
        for i in range(3):
            conversation = await self.conversation(store)
            messages.append(await self.post(store, conversation, NURSE, "employee",
                                            T0 + (2 - i) * 1000, window=1))
        self.assertEqual(await store.claim_webhooks("a", T0, T0 + 10, 10), [])
        claimed = await store.claim_webhooks("a", T0 + 1001, T0 + 10_000, 2)
        self.assertEqual([e.message_id for e in claimed], [messages[2].id, messages[1].id])
        self.assertTrue(all(isinstance(e, OutboxEntry) and e.attempts == 1 for e in claimed))
        self.assertEqual(claimed[0].recipient_user_id, CUSTOMER)
        self.assertEqual(claimed[0].recipient_role, "customer")
        self.assertTrue(claimed[0].webhook_id.startswith("msg_"))
        self.assertNotIn(".", claimed[0].webhook_id)

    async def test_lease(self) -> None:
        """A leased row is not claimed again until its lease runs out; then it is."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, NURSE, "employee", T0, window=0)
        [first] = await store.claim_webhooks("a", T0, T0 + 100, 10)
        self.assertEqual(await store.claim_webhooks("b", T0 + 99, T0 + 200, 10), [])
        [again] = await store.claim_webhooks("b", T0 + 100, T0 + 200, 10)
        self.assertEqual((again.seq, again.webhook_id, again.attempts),
                         (first.seq, first.webhook_id, 2))
        # The first owner lost it: its outcome no longer counts.
        self.assertFalse(await store.webhook_retry(first.seq, "a", T0 + 500, "late"))
        self.assertFalse(await store.webhook_failed(first.seq, "a", T0 + 500, "late"))
        self.assertTrue(await store.webhook_retry(first.seq, "b", T0 + 500, "HTTP 500"))
        self.assertEqual(await rows(store), [(CUSTOMER, first.message_id, T0 + 500, 2, None,
                                              None, 1)])
        self.assertEqual(await store.claim_webhooks("c", T0 + 499, T0 + 900, 10), [])
        self.assertEqual(len(await store.claim_webhooks("c", T0 + 500, T0 + 900, 10)), 1)

    async def test_delivered_and_failed(self) -> None:
        """Delivered rows go; failed rows stay, unclaimable, until pruned."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, NURSE, "employee", T0, window=0)
        await self.post(store, conversation, DOCTOR, "employee", T0 + 1, window=0)
        first, second, third = await store.claim_webhooks("a", T0 + 1, T0 + 100, 10)
        self.assertTrue(await store.webhook_delivered(first.seq))
        self.assertFalse(await store.webhook_delivered(first.seq))
        self.assertTrue(await store.webhook_failed(second.seq, "a", T0 + 50, "HTTP 410" * 100))
        self.assertTrue(await store.webhook_failed(third.seq, "a", T0 + 80, "expired"))
        self.assertEqual(await store.claim_webhooks("a", T0 + 10**9, T0 + 10**10, 10), [])
        self.assertEqual(await store.prune_webhooks(T0 + 60), 1)
        [remaining] = await rows(store)
        self.assertEqual(remaining[5], T0 + 80)
        self.assertEqual(await store.prune_webhooks(T0 + 81), 1)
        self.assertEqual(await rows(store), [])

    async def test_erased_conversation(self) -> None:
        """Deleting a conversation deletes its rows (erasure of a customer)."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, NURSE, "employee", T0)

        def erase() -> Script[None]:
            for table in ("events", "feed_events", "messages"):
                yield store._dialect.statement(
                    f"DELETE FROM {table} WHERE conversation_id = ?", conversation.id
                )
            yield store._dialect.statement(
                "DELETE FROM conversations WHERE id = ?", conversation.id
            )

        await store._run(erase(), True)
        self.assertEqual(await rows(store), [])

    async def test_upgrade_fills_employees(self) -> None:
        """Migrating to 0008 remembers the employees who wrote before it."""
        migrations = load_migrations(self.dialect)  # type: ignore[attr-defined]
        location = await self.new_location()
        old = await self.started(location, migrations[:7])
        conversation = await self.conversation(old)
        for user, role in [(NURSE, "employee"), (NURSE, "employee"), (CUSTOMER, "customer")]:
            def insert(user: str = user, role: str = role) -> Script[None]:
                yield old._dialect.statement(
                    "INSERT INTO messages (id, conversation_id, created, user_id, user_name,"
                    " user_role, message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    new_id(), conversation.id, T0, user, user, role, "text",
                )
            await old._run(insert(), True)
        await old.stop()
        store = await self.started(location)
        await self.post(store, conversation, CUSTOMER, "customer", T0 + 1)
        self.assertEqual([r[0] for r in await rows(store)], [NURSE])


class SQLiteOutboxTests(OutboxTestsMixin, TestCase):
    """The outbox on SQLite."""

    dialect = "sqlite"

    def new_location(self) -> Deferred[str]:
        return succeed(os.path.join(self.mktemp(), "data", SQLITE_FILE_NAME))

    def make_store(self, location: str, migrations: Sequence[Any] | None = None) -> SQLStore:
        return SQLiteStore(location, reactor, migrations=migrations)


class MemoryOutboxTests(OutboxTestsMixin, InlineTestCase):
    """The outbox on the in-memory store that the unit tests use."""

    dialect = "sqlite"

    def new_location(self) -> Deferred[Any]:
        database = memory_database()
        self.addCleanup(database.close)
        return succeed(database)

    def make_store(self, location: Any, migrations: Sequence[Any] | None = None) -> SQLStore:
        return MemoryStore(Clock(), database=location, migrations=migrations)


class PostgreSQLOutboxTests(OutboxTestsMixin, TestCase):
    """The outbox on PostgreSQL, and claims by several processes at once."""

    dialect = "postgresql"

    def new_location(self) -> Deferred[str]:
        return create_test_database(self)

    def make_store(self, location: str, migrations: Sequence[Any] | None = None) -> SQLStore:
        return PostgreSQLStore(location, reactor, migrations=migrations)

    async def test_concurrent_claims_disjoint(self) -> None:
        """
        Four processes claiming at once, many times over, never get the same row: each
        row is claimed exactly once.
        """
        url = await self.new_location()
        stores = [await self.started(url) for _ in range(4)]
        for _ in range(10):
            conversation = await self.conversation(stores[0])
            await self.post(stores[0], conversation, NURSE, "employee", T0, window=0)
            await self.post(stores[0], conversation, DOCTOR, "employee", T0, window=0)
        # 30 rows: the customer twice and the nurse once per conversation.
        claimed: list[OutboxEntry] = []
        for _ in range(4):
            rounds = await gatherResults([
                store.claim_webhooks(f"node-{i}", T0, T0 + 10**9, 3)
                for i, store in enumerate(stores)
            ])
            for batch in rounds:
                claimed.extend(batch)
        self.assertEqual(len(claimed), 30)
        self.assertEqual(len({e.seq for e in claimed}), 30)
