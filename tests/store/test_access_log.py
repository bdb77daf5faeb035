"""
Tests for the access log in L{medichat.store} (NEN 7513): one scenario
(L{AccessLogStoreTestsMixin}) run against the SQLite and the PostgreSQL store on real
databases, and against L{medichat.testing.MemoryStore}.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import evolve
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from medichat.errors import StoreError
from medichat.model import AccessEntry, Conversation
from medichat.store import PostgreSQLStore, SQLiteStore
from medichat.store.scripts import SQLITE, SQLStore, access_query
from medichat.store.sqlite import SQLITE_FILE_NAME
from medichat.testing import MemoryStore, memory_database
from tests._inline import InlineTestCase
from tests._pg import create_test_database
from tests.store.test_store import T0, a_conversation, a_message, raised, raw_write

reactor: Any = _reactor

if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object

SECRET_TEXT = "my blood pressure is 180/110"


def an_access(
    conversation: Conversation | None,
    action: str = "view",
    at: int = T0,
    employee_id: str = "nurse-1",
) -> AccessEntry:
    """An access by an employee to C{conversation}."""
    return AccessEntry(
        at=at,
        employee_id=employee_id,
        employee_name=f"name of {employee_id}",
        role="employee",
        action=action,
        conversation_id=None if conversation is None else conversation.id,
        customer_id=None if conversation is None else conversation.customer_id,
        address="192.0.2.7",
    )


def without_seq(entries: Sequence[AccessEntry]) -> list[AccessEntry]:
    """The entries as recorded, without the store's sequence numbers."""
    return [evolve(e, seq=0) for e in entries]


class AccessLogStoreTestsMixin(_Base):
    """
    What every store must do for the access log.
    """

    def new_location(self) -> Deferred[Any]:
        """A fresh, empty database."""
        raise NotImplementedError()

    def make_store(self, location: Any) -> SQLStore:
        """A store, not started, on C{location}."""
        raise NotImplementedError()

    async def started(self) -> SQLStore:
        """A started store on a fresh database, stopped at cleanup."""
        store = self.make_store(await self.new_location())
        await store.start()
        self.addCleanup(store.stop)
        return store

    async def stored(self, store: SQLStore, customer_id: str = "customer-1",
                     created: int = T0) -> Conversation:
        conversation = a_conversation(created=created, customer_id=customer_id)
        await store.create_conversation(conversation)
        return conversation

    async def everything(self, store: SQLStore) -> list[AccessEntry]:
        """The whole log, oldest first."""
        return list(await store.access_log(descending=False, limit=10_000))

    async def test_record_and_read(self) -> None:
        """Recorded rows come back whole, newest first by default, with increasing seqs."""
        store = await self.started()
        conversation = await self.stored(store)
        first = an_access(conversation, "list", T0 + 1)
        second = an_access(conversation, "view", T0 + 2)
        await store.record_access([first, second])
        rows = list(await store.access_log())
        self.assertEqual(without_seq(rows), [second, first])
        self.assertGreater(rows[0].seq, rows[1].seq)
        await store.record_access([])
        self.assertEqual(len(await self.everything(store)), 2)

    async def test_many_rows_at_once(self) -> None:
        """A thousand rows (a long list) are recorded in one call, in order."""
        store = await self.started()
        entries = [an_access(None, "list", T0 + i) for i in range(1000)]
        await store.record_access(entries)
        self.assertEqual(without_seq(await self.everything(store)), entries)

    async def test_filters(self) -> None:
        """Customer, employee, conversation, since (inclusive) and until (exclusive) filter."""
        store = await self.started()
        mine = await self.stored(store, "customer-1")
        theirs = await self.stored(store, "customer-2")
        rows = [
            an_access(mine, "view", T0 + 1, "nurse-1"),
            an_access(theirs, "view", T0 + 2, "nurse-1"),
            an_access(mine, "read", T0 + 3, "nurse-2"),
            an_access(theirs, "message", T0 + 4, "nurse-2"),
        ]
        await store.record_access(rows)

        async def found(**filters: Any) -> list[AccessEntry]:
            return without_seq(await store.access_log(descending=False, limit=100, **filters))

        self.assertEqual(await found(customer_id="customer-1"), [rows[0], rows[2]])
        self.assertEqual(await found(employee_id="nurse-2"), [rows[2], rows[3]])
        self.assertEqual(await found(conversation_id=theirs.id), [rows[1], rows[3]])
        self.assertEqual(await found(since=T0 + 2, until=T0 + 4), [rows[1], rows[2]])
        self.assertEqual(
            await found(customer_id="customer-2", employee_id="nurse-2", since=T0 + 4),
            [rows[3]],
        )
        self.assertEqual(await found(customer_id="nobody"), [])

    async def test_paging(self) -> None:
        """Paging by (at, seq) neither skips nor repeats rows that share a time."""
        store = await self.started()
        conversation = await self.stored(store)
        await store.record_access(
            [an_access(conversation, "list", T0 + i // 3) for i in range(10)]
        )
        for descending in (True, False):
            seen: list[AccessEntry] = []
            after = None
            while True:
                page = list(
                    await store.access_log(
                        customer_id=conversation.customer_id,
                        descending=descending,
                        limit=4,
                        after=after,
                    )
                )
                seen += page
                if len(page) < 4:
                    break
                after = (page[-1].at, page[-1].seq)
            keys = [(e.at, e.seq) for e in seen]
            self.assertEqual(keys, sorted(keys, reverse=descending))
            self.assertEqual(len(set(keys)), 10)

    async def test_message_records_in_its_transaction(self) -> None:
        """
        add_message records the access with the message; a replay of its key records
        one too; a message that cannot be stored records nothing.
        """
        store = await self.started()
        conversation = await self.stored(store)
        message = a_message(conversation, T0 + 1, SECRET_TEXT, "nurse-1", "employee")
        access = an_access(conversation, "message", T0 + 1)
        await store.add_message(message, "key-1", access)
        await store.add_message(evolve(message, id="another"), "key-1", access)
        self.assertEqual(without_seq(await self.everything(store)), [access, access])
        orphan = a_message(a_conversation(), T0 + 2, SECRET_TEXT, "nurse-1", "employee")
        await raised(store.add_message(orphan, None, access), StoreError)
        self.assertEqual(len(await self.everything(store)), 2)
        # No message text anywhere in the log.
        for row in await self.everything(store):
            self.assertNotIn(SECRET_TEXT, repr(row))

    async def test_receipts_record_whether_or_not_they_move(self) -> None:
        """mark_read and mark_received record their access even when the time stays put."""
        store = await self.started()
        conversation = await self.stored(store)
        read = an_access(conversation, "read", T0 + 5)
        received = an_access(conversation, "received", T0 + 5)
        self.assertTrue(await store.mark_read(conversation.id, "nurse-1", T0 + 5, read))
        self.assertFalse(await store.mark_read(conversation.id, "nurse-1", T0 + 1, read))
        self.assertTrue(await store.mark_received(conversation.id, "nurse-1", T0 + 5, received))
        self.assertEqual(without_seq(await self.everything(store)), [read, read, received])
        # Without an access (a customer's own), nothing.
        await store.mark_read(conversation.id, "customer-1", T0 + 9)
        self.assertEqual(len(await self.everything(store)), 3)

    async def test_append_only(self) -> None:
        """The database itself refuses to change a recorded row."""
        store = await self.started()
        await store.record_access([an_access(None)])
        error = await raised(
            raw_write(store, "UPDATE access_log SET employee_name = ?", "someone else"),
            StoreError,
        )
        self.assertIn("append-only", str(error))
        self.assertEqual(without_seq(await self.everything(store)), [an_access(None)])

    async def test_prune(self) -> None:
        """Pruning deletes the rows older than a time, in batches, and nothing newer."""
        store = await self.started()
        await store.record_access([an_access(None, "list", T0 + i) for i in range(7)])
        self.assertEqual(await store.prune_access_log(T0 + 5, batch=2), 5)
        self.assertEqual([e.at for e in await self.everything(store)], [T0 + 5, T0 + 6])
        self.assertEqual(await store.prune_access_log(T0 + 5, batch=2), 0)

    async def test_erase_customer(self) -> None:
        """
        Erasing a customer removes their conversations, messages, receipts, events and
        idempotency keys, keeps every access-log row and adds one per conversation erased;
        other customers keep everything.
        """
        store = await self.started()
        first = await self.stored(store, "customer-1", T0)
        second = await self.stored(store, "customer-1", T0 + 1)
        other = await self.stored(store, "customer-2", T0 + 2)
        for conversation in (first, second, other):
            access = an_access(conversation, "message")
            message = a_message(conversation, T0 + 3, SECRET_TEXT, "nurse-1", "employee")
            await store.add_message(message, "key", access)
            await store.mark_read(conversation.id, "nurse-1", T0 + 4, an_access(conversation))
        before = await self.everything(store)
        actor = AccessEntry(T0 + 10, "operator:root", "root", "operator", "erase", None, None,
                            None)
        erased = await store.erase_customer("customer-1", actor)
        self.assertEqual(list(erased), [first.id, second.id])
        for conversation in (first, second):
            self.assertIsNone(await store.get_conversation(conversation.id))
            self.assertEqual(list(await store.list_messages(conversation.id, None, False, None)),
                             [])
            self.assertEqual(await store.receipts(conversation.id), ([], []))
            self.assertEqual(list(await store.conversation_events(conversation.id, 1, 10)), [])
        # Nothing of theirs is left in the event tables either (the employees' feed's too).
        left = {e.conversation_id for e in await store.events_after(0, 1000)}
        self.assertEqual(left, {other.id})
        self.assertEqual(
            await store.get_conversation(other.id), evolve(other, last_activity=T0 + 3)
        )
        self.assertEqual(len(await store.list_messages(other.id, None, False, None)), 1)
        self.assertEqual(len(await store.conversation_events(other.id, 1, 10)), 2)
        after = await self.everything(store)
        self.assertEqual(after[: len(before)], before)
        self.assertEqual(
            without_seq(after[len(before):]),
            [evolve(actor, conversation_id=c.id, customer_id="customer-1")
             for c in (first, second)],
        )
        # Their idempotency keys went too: only the other customer's is left.
        count = await raw_write_count(store, "idempotency_keys")
        self.assertEqual(count, 1)
        self.assertEqual(list(await store.erase_customer("customer-1", actor)), [])
        self.assertEqual(len(await self.everything(store)), len(after))


def raw_write_count(store: SQLStore, table: str) -> Deferred[int]:
    """The number of rows in a table."""

    def script() -> Any:
        result = yield store._dialect.statement(f"SELECT count(*) FROM {table}")
        return int(result.rows[0][0])

    return store._run(script())


class SQLiteAccessLogTests(AccessLogStoreTestsMixin, TestCase):
    """The access log on SQLite."""

    def new_location(self) -> Deferred[str]:
        return succeed(os.path.join(self.mktemp(), SQLITE_FILE_NAME))

    def make_store(self, location: str) -> SQLStore:
        return SQLiteStore(location, reactor)

    async def test_queries_use_indexes(self) -> None:
        """A customer's page and a time range are answered from indexes, without sorting."""
        location = await self.new_location()
        store = self.make_store(location)
        await store.start()
        self.addCleanup(store.stop)
        connection = sqlite3.connect(location)
        self.addCleanup(connection.close)
        cases = [
            (access_query(SQLITE, customer_id="c", limit=51, after=(T0, 9)),
             "access_log_customer"),
            (access_query(SQLITE, since=T0, until=T0 + 9, descending=False, limit=1000),
             "access_log_at"),
        ]
        for statement, index in cases:
            plan = " | ".join(
                row[-1]
                for row in connection.execute(
                    "EXPLAIN QUERY PLAN " + statement.sql, statement.params
                )
            )
            self.assertIn(index, plan)
            self.assertNotIn("TEMP B-TREE", plan)


class MemoryAccessLogTests(AccessLogStoreTestsMixin, InlineTestCase):
    """The access log on the memory store."""

    def new_location(self) -> Deferred[Any]:
        database = memory_database()
        self.addCleanup(database.close)
        return succeed(database)

    def make_store(self, location: Any) -> SQLStore:
        return MemoryStore(Clock(), database=location)


class PostgreSQLAccessLogTests(AccessLogStoreTestsMixin, TestCase):
    """The access log on PostgreSQL."""

    def new_location(self) -> Deferred[str]:
        return create_test_database(self)

    def make_store(self, location: str) -> SQLStore:
        return PostgreSQLStore(location, reactor)
