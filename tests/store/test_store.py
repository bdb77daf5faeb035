"""
Tests for L{medichat.store}: one scenario (L{StoreTestsMixin}) run against the SQLite and
the PostgreSQL store, on the real reactor with real databases (their drivers work in a
thread and on sockets), and against L{medichat.testing.MemoryStore}, with no reactor at
all; plus what is particular to each store and to L{medichat.store.open_store}.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg2
from attrs import evolve
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from medichat import rsql
from medichat.errors import DuplicateError, StoreError
from medichat.interfaces import IStore
from medichat.model import (
    CONVERSATION_FEED_KINDS,
    Conversation,
    Employee,
    LoginSession,
    Message,
    Receipt,
    Role,
    StoredEvent,
    format_time,
    new_id,
    parse_time,
)
from medichat.store import PostgreSQLStore, SQLiteStore, open_store
from medichat.store.postgres import DEFAULT_POOL_SIZE, redact
from medichat.store.scripts import (
    POSTGRESQL,
    SQLITE,
    Migration,
    Script,
    SQLStore,
    conversations_query,
    load_migrations,
    messages_query,
)
from medichat.store.sqlite import SQLITE_FILE_NAME, split_statements
from medichat.testing import MemoryStore, memory_database
from tests._inline import InlineTestCase
from tests._pg import create_test_database

reactor: Any = _reactor

if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object

SEED_QUERY = "created=le=2021-07-15T11:44:52Z;created=ge=2021-07-14T13:56:35Z"
T0 = parse_time("2021-07-14T12:00:00Z")
INJECTION = "'); DROP TABLE messages;--"


def a_conversation(
    created: int = T0, customer_id: str = "customer-1", customer_name: str = "Carla"
) -> Conversation:
    """A new conversation."""
    return Conversation(new_id(), created, customer_id, customer_name)


def a_message(
    conversation: Conversation,
    created: int,
    text: str = "Hello",
    user_id: str = "customer-1",
    role: Role = "customer",
) -> Message:
    """A new message in C{conversation}, not yet stored."""
    return Message(new_id(), conversation.id, created, user_id, f"name of {user_id}", role, text)


def an_employee(email: str = "Nora.Nurse@Example.org", name: str = "Nora") -> Employee:
    """A new employee."""
    return Employee(new_id(), email, name, "$argon2id$fake", False, T0, None)


def a_login_session(employee: Employee, token_hash: str | None = None) -> LoginSession:
    """A new login session of C{employee}."""
    return LoginSession(new_id(), employee.id, token_hash or new_id(), T0, T0 + 3600, False)


E = TypeVar("E", bound=BaseException)
V = TypeVar("V")


async def raised(d: Deferred[Any], kind: type[E]) -> E:
    """The exception of kind C{kind} that C{d} fails with; any other outcome fails."""
    try:
        result = await d
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}, got the result {result!r}")


def raw_write(store: SQLStore, sql: str, *params: object) -> Deferred[None]:
    """Run one statement (written with C{?} placeholders) in a write transaction."""

    def script() -> Script[None]:
        yield store._dialect.statement(sql, *params)

    return store._run(script(), write=True)


def in_streams(events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """The conversation events among C{events}: those of the employees' feed left out."""
    return [e for e in events if e.kind not in CONVERSATION_FEED_KINDS]


def present(value: V | None) -> V:
    """C{value}, which must not be L{None}."""
    assert value is not None
    return value


class StoreTestsMixin(_Base):
    """
    What every L{IStore} must do.  Subclasses say where a fresh database lives and how to
    open a store on it.
    """

    dialect = ""

    def new_location(self) -> Deferred[Any]:
        """A fresh, empty database: a file path, a URL or an open in-memory database."""
        raise NotImplementedError()

    def make_store(self, location: Any, migrations: Sequence[Any] | None = None) -> SQLStore:
        """A store, not started, on C{location}."""
        raise NotImplementedError()

    async def started(
        self, location: Any = None, migrations: Sequence[Any] | None = None
    ) -> SQLStore:
        """A started store on C{location} (a fresh one unless given), stopped at cleanup."""
        if location is None:
            location = await self.new_location()
        store = self.make_store(location, migrations)
        await store.start()
        self.addCleanup(store.stop)
        return store

    async def stored_conversation(self, store: SQLStore, **kwargs: Any) -> Conversation:
        """A conversation, stored."""
        conversation = a_conversation(**kwargs)
        await store.create_conversation(conversation)
        return conversation

    async def all_messages(self, store: SQLStore, conversation: Conversation) -> list[Message]:
        """Every message of the conversation, oldest first."""
        return list(await store.list_messages(conversation.id, None, False, None))

    # -- schema and lifecycle

    async def test_provides_istore(self) -> None:
        """The store provides IStore and names its kind."""
        store = await self.started()
        self.assertTrue(IStore.providedBy(store))
        self.assertEqual(store.kind, self.dialect)

    async def test_migrates_empty_database(self) -> None:
        """An empty database gets every migration; schema_version is the newest."""
        store = await self.started()
        self.assertEqual(await store.schema_version(), len(load_migrations(self.dialect)))

    async def test_restart_keeps_data(self) -> None:
        """Starting again on a migrated database applies nothing and keeps the rows."""
        location = await self.new_location()
        store = await self.started(location)
        conversation = await self.stored_conversation(store)
        await store.stop()
        again = await self.started(location)
        self.assertEqual(await again.schema_version(), len(load_migrations(self.dialect)))
        self.assertEqual(await again.get_conversation(conversation.id), conversation)

    async def test_upgrades_previous_version(self) -> None:
        """
        A database at an earlier schema version (5: before triage, whose migration fills
        columns from what is there) is upgraded in place; rows survive.
        """
        migrations = load_migrations(self.dialect)
        earlier = [m for m in migrations if m.version <= 5]
        self.assertEqual(len(earlier), 5)
        location = await self.new_location()
        old = await self.started(location, earlier)
        self.assertEqual(await old.schema_version(), 5)
        # Conversations, messages and receipts as the previous version wrote them: the
        # scripts of this one write columns and events that the previous schema lacks.
        conversation = a_conversation()
        await raw_write(
            old,
            "INSERT INTO conversations (id, created, customer_id, customer_name)"
            " VALUES (?, ?, ?, ?)",
            conversation.id, conversation.created, conversation.customer_id,
            conversation.customer_name,
        )
        quiet = a_conversation(created=T0 + 7)
        await raw_write(
            old,
            "INSERT INTO conversations (id, created, customer_id, customer_name)"
            " VALUES (?, ?, ?, ?)",
            quiet.id, quiet.created, quiet.customer_id, quiet.customer_name,
        )
        message = a_message(conversation, T0 + 1)
        await raw_write(
            old,
            "INSERT INTO messages (id, conversation_id, created, user_id, user_name,"
            " user_role, message) VALUES (?, ?, ?, ?, ?, ?, ?)",
            message.id, conversation.id, message.created, message.user_id,
            message.user_name, message.user_role, message.message,
        )
        await raw_write(
            old,
            "INSERT INTO receipts (conversation_id, kind, user_id, at) VALUES (?, ?, ?, ?)",
            conversation.id, "read", "customer-1", T0 + 2,
        )
        employee = an_employee()
        await old.add_employee(employee)
        session = a_login_session(employee)
        await old.add_login_session(session)
        [message] = await self.all_messages(old, conversation)
        await old.stop()

        new = await self.started(location)
        self.assertEqual(await new.schema_version(), len(migrations))
        # Open, unassigned, last active at its newest message (or its creation).
        self.assertEqual(
            await new.get_conversation(conversation.id),
            evolve(conversation, last_activity=T0 + 1),
        )
        self.assertEqual(await new.get_conversation(quiet.id), quiet)
        self.assertEqual(await self.all_messages(new, conversation), [message])
        self.assertEqual(await new.find_employee(employee.email), employee)
        self.assertEqual(await new.find_login_session(session.token_hash), session)
        read, _ = await new.receipts(conversation.id)
        self.assertEqual(read, [Receipt(conversation.id, "customer-1", T0 + 2)])
        self.assertEqual(await new.revoke_login_sessions(employee_id=employee.id), 1)

    async def test_refuses_newer_schema(self) -> None:
        """A medichat that does not know the database's newest migration refuses to start."""
        migrations = load_migrations(self.dialect)
        location = await self.new_location()
        store = await self.started(location)
        await store.stop()
        older = self.make_store(location, migrations[:-1])
        self.addCleanup(older.stop)
        error = await raised(older.start(), StoreError)
        self.assertIn("newer", str(error))

    async def test_not_running(self) -> None:
        """Operations fail with StoreError before start and after stop."""
        store = self.make_store(await self.new_location())
        await self.assertFailure(store.ping(), StoreError)
        await store.start()
        await store.stop()
        await self.assertFailure(store.get_conversation(new_id()), StoreError)

    async def test_stop_waits_for_operations_in_flight(self) -> None:
        """stop() lets operations already started finish and commit."""
        location = await self.new_location()
        store = await self.started(location)
        conversation = await self.stored_conversation(store)
        adding = [store.add_message(a_message(conversation, T0 + i), None) for i in range(5)]
        await store.stop()
        await gatherResults(adding)
        again = await self.started(location)
        self.assertEqual(len(await self.all_messages(again, conversation)), 5)

    async def test_ping(self) -> None:
        """ping() succeeds on a reachable database."""
        store = await self.started()
        await store.ping()

    # -- conversations

    async def test_create_and_get_conversation(self) -> None:
        """A stored conversation comes back equal; an unknown id gives None."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        self.assertEqual(await store.get_conversation(conversation.id), conversation)
        self.assertIsNone(await store.get_conversation(new_id()))

    async def test_duplicate_conversation(self) -> None:
        """Storing a conversation id twice fails with DuplicateError."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        await self.assertFailure(store.create_conversation(conversation), DuplicateError)

    async def test_list_conversations_of_customer(self) -> None:
        """With a customer id, only that customer's conversations are listed."""
        store = await self.started()
        mine = [await self.stored_conversation(store, created=T0 + i) for i in range(3)]
        await self.stored_conversation(store, customer_id="customer-2")
        self.assertEqual(await store.list_conversations("customer-1", None, False, 10, None), mine)
        everyone = await store.list_conversations(None, None, False, 10, None)
        self.assertEqual(len(everyone), 4)

    async def test_list_conversations_order_and_limit(self) -> None:
        """Conversations are ordered by (created, id), either way, and limited."""
        store = await self.started()
        stored = [
            await self.stored_conversation(store, created=T0 + created)
            for created in (5, 1, 5, 3, 1, 5)
        ]
        expected = sorted(stored, key=lambda c: (c.created, c.id))
        self.assertEqual(await store.list_conversations(None, None, False, 10, None), expected)
        self.assertEqual(await store.list_conversations(None, None, True, 10, None), expected[::-1])
        self.assertEqual(await store.list_conversations(None, None, False, 4, None), expected[:4])
        self.assertEqual(
            await store.list_conversations(None, None, True, 2, None), expected[::-1][:2]
        )
        self.assertEqual(await store.list_conversations(None, None, False, 0, None), [])

    async def test_list_conversations_paging(self) -> None:
        """Paging with the (created, id) cursor visits every row once, in order, both ways."""
        store = await self.started()
        stored = [
            await self.stored_conversation(store, created=T0 + created)
            for created in (2, 2, 2, 1, 3, 3, 1, 2, 4)
        ]
        expected = sorted(stored, key=lambda c: (c.created, c.id))
        for descending in (False, True):
            seen: list[Conversation] = []
            after = None
            while True:
                page = await store.list_conversations(None, None, descending, 2, after)
                if not page:
                    break
                seen.extend(page)
                after = (page[-1].created, page[-1].id)
            self.assertEqual(seen, expected[::-1] if descending else expected)

    async def test_list_conversations_query(self) -> None:
        """RSQL over created and customerId filters the list."""
        store = await self.started()
        a1 = await self.stored_conversation(store, created=T0 + 1, customer_id="a")
        b2 = await self.stored_conversation(store, created=T0 + 2, customer_id="b")
        c3 = await self.stored_conversation(store, created=T0 + 3, customer_id="c")

        async def listed(query: str, customer_id: str | None = None) -> list[Conversation]:
            node = rsql.parse(query)
            return list(await store.list_conversations(customer_id, node, False, 10, None))

        self.assertEqual(await listed(f"created=ge={format_time(T0 + 2)}"), [b2, c3])
        self.assertEqual(await listed("customerId=in=(a,c)"), [a1, c3])
        self.assertEqual(await listed("customerId==a,customerId==b"), [a1, b2])
        self.assertEqual(await listed("customerId!=b", customer_id="c"), [c3])
        self.assertEqual(
            await listed(f"(customerId==a,customerId==c);created=gt={format_time(T0 + 1)}"),
            [c3],
        )

    async def test_list_conversations_bad_query_value(self) -> None:
        """A value that is no time for created fails with RSQLError, naming the field."""
        store = await self.started()
        error = await raised(
            store.list_conversations(None, rsql.parse("created=ge=yesterday"), False, 10, None),
            rsql.RSQLError,
        )
        self.assertIn("created", str(error))

    # -- messages

    async def test_add_message_assigns_seq(self) -> None:
        """Each stored message gets a larger seq; the rest is stored as given."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        stored = []
        for i in range(3):
            message = a_message(conversation, T0 - i)
            result, created = await store.add_message(message, None)
            self.assertTrue(created)
            self.assertEqual(result.id, message.id)
            self.assertEqual(result.message, message.message)
            stored.append(result)
        seqs = [m.seq for m in stored]
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertGreater(seqs[0], 0)

    async def test_list_messages_order(self) -> None:
        """Messages come ordered by created, then by seq among equal times; desc reverses."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        stored = []
        for i, offset in enumerate((5, 3, 5, 1, 3, 5)):
            message, _ = await store.add_message(
                a_message(conversation, T0 + offset, f"#{i}"), None
            )
            stored.append(message)
        expected = sorted(stored, key=lambda m: (m.created, m.seq))
        self.assertEqual([m.message for m in expected], ["#3", "#1", "#4", "#0", "#2", "#5"])
        self.assertEqual(await store.list_messages(conversation.id, None, False, None), expected)
        self.assertEqual(
            await store.list_messages(conversation.id, None, True, None), expected[::-1]
        )
        self.assertEqual(await store.list_messages(conversation.id, None, False, 2), expected[:2])
        self.assertEqual(
            await store.list_messages(conversation.id, None, True, 2), expected[::-1][:2]
        )
        self.assertEqual(await store.list_messages(conversation.id, None, False, 0), [])

    async def test_list_messages_of_one_conversation(self) -> None:
        """A conversation's messages exclude other conversations'; unknown ones have none."""
        store = await self.started()
        first = await self.stored_conversation(store)
        second = await self.stored_conversation(store)
        mine, _ = await store.add_message(a_message(first, T0), None)
        await store.add_message(a_message(second, T0), None)
        self.assertEqual(await self.all_messages(store, first), [mine])
        self.assertEqual(await store.list_messages(new_id(), None, False, None), [])

    async def test_add_message_unknown_conversation(self) -> None:
        """A message for a conversation that does not exist fails with StoreError."""
        store = await self.started()
        orphan = a_message(a_conversation(), T0)
        await self.assertFailure(store.add_message(orphan, None), StoreError)
        await self.assertFailure(store.add_message(orphan, "key"), StoreError)

    async def test_duplicate_message_id(self) -> None:
        """A message id stored twice fails with DuplicateError (with or without a key)."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        message = a_message(conversation, T0)
        await store.add_message(message, None)
        await self.assertFailure(store.add_message(message, None), DuplicateError)
        await self.assertFailure(store.add_message(message, "fresh-key"), DuplicateError)
        self.assertEqual(len(await self.all_messages(store, conversation)), 1)

    async def test_seed_query(self) -> None:
        """The seed's created=le=…;created=ge=… query selects the window, bounds included."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        times = [
            "2021-07-14T13:56:34.999999Z",
            "2021-07-14T13:56:35Z",
            "2021-07-15T00:00:00Z",
            "2021-07-15T11:44:52Z",
            "2021-07-15T11:44:52.000001Z",
        ]
        for t in times:
            await store.add_message(a_message(conversation, parse_time(t), t), None)
        found = await store.list_messages(conversation.id, rsql.parse(SEED_QUERY), False, None)
        self.assertEqual([m.message for m in found], times[1:4])

    async def test_message_queries(self) -> None:
        """RSQL over userId, userRole, id and created: =in=, =out=, ',' and parentheses."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        ann, _ = await store.add_message(a_message(conversation, T0 + 1, "ann", "ann"), None)
        bob, _ = await store.add_message(a_message(conversation, T0 + 2, "bob", "bob"), None)
        nurse, _ = await store.add_message(
            a_message(conversation, T0 + 3, "nurse", "nurse", "employee"), None
        )

        async def found(query: str) -> list[str]:
            node = rsql.parse(query)
            return [
                m.message for m in await store.list_messages(conversation.id, node, False, None)
            ]

        self.assertEqual(await found("userRole==employee"), ["nurse"])
        self.assertEqual(await found("userRole!=employee"), ["ann", "bob"])
        self.assertEqual(await found("userId=in=(ann,nurse)"), ["ann", "nurse"])
        self.assertEqual(await found("userId=out=(ann,nurse)"), ["bob"])
        self.assertEqual(await found(f"id=={bob.id}"), ["bob"])
        self.assertEqual(
            await found(f"userRole==employee,(userId==ann;created=lt={format_time(T0 + 2)})"),
            ["ann", "nurse"],
        )
        self.assertEqual(
            await found(f"(userId==ann,userId==bob);created=gt={format_time(T0 + 1)}"), ["bob"]
        )
        self.assertEqual(await found("userId==nobody"), [])
        self.assertEqual(len([ann, bob, nurse]), 3)

    async def test_recovery_query_finds_exact_time(self) -> None:
        """created=ge= with a message's own formatted time finds that message (µs exact)."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        before, _ = await store.add_message(a_message(conversation, T0 + 123_455), None)
        target, _ = await store.add_message(a_message(conversation, T0 + 123_456), None)
        query = rsql.parse(f"created=ge={format_time(target.created)}")
        self.assertEqual(await store.list_messages(conversation.id, query, False, None), [target])
        self.assertNotEqual(before, target)

    async def test_bad_message_query_value(self) -> None:
        """A non-time for created fails with RSQLError; nothing reaches the database."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        await self.assertFailure(
            store.list_messages(conversation.id, rsql.parse("created=ge=2021-13-99"), False, None),
            rsql.RSQLError,
        )

    async def test_times_round_trip(self) -> None:
        """Times far beyond float precision come back exactly."""
        store = await self.started()
        # The latest time an event can carry (its JSON has RFC 3339 times, years up to
        # 9999), far beyond 2**53 microseconds, where floats lose microseconds.
        big = parse_time("9999-12-31T23:59:59.999999Z")
        self.assertGreater(big, 2**53)
        conversation = await self.stored_conversation(store, created=big)
        message, _ = await store.add_message(a_message(conversation, big - 1), None)
        self.assertEqual((await store.get_conversation(conversation.id)), conversation)
        self.assertEqual(await self.all_messages(store, conversation), [message])
        await store.mark_read(conversation.id, "u", big)
        read, _ = await store.receipts(conversation.id)
        self.assertEqual([r.at for r in read], [big])

    async def test_text_round_trip(self) -> None:
        """Quotes, SQL, Unicode and long text are stored verbatim."""
        store = await self.started()
        conversation = await self.stored_conversation(store, customer_name='O\'Brien "Bob"')
        texts = [INJECTION, "%s %(x)s ? :1 $1 \\", "Grüße 👩‍⚕️ مرحبا", "x" * 4000, " \n\t "]
        for i, text in enumerate(texts):
            await store.add_message(a_message(conversation, T0 + i, text), None)
        found = await self.all_messages(store, conversation)
        self.assertEqual([m.message for m in found], texts)
        self.assertEqual(
            await store.get_conversation(conversation.id),
            evolve(conversation, last_activity=T0 + len(texts) - 1),
        )

    async def test_injection_in_values_is_inert(self) -> None:
        """SQL in ids, keys and query values matches nothing and harms nothing."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        message, _ = await store.add_message(a_message(conversation, T0, INJECTION), INJECTION)
        self.assertIsNone(await store.get_conversation("x' OR '1'='1"))
        self.assertEqual(await store.list_messages("x' OR '1'='1", None, False, None), [])
        for query in ("userId==\"x' OR '1'='1\"", 'id=in=("\'); DROP TABLE messages;--")'):
            self.assertEqual(
                await store.list_messages(conversation.id, rsql.parse(query), False, None), []
            )
        self.assertIsNone(await store.find_employee("' OR 1=1 --"))
        self.assertEqual(
            await store.add_message(a_message(conversation, T0), INJECTION), (message, False)
        )
        self.assertEqual(await self.all_messages(store, conversation), [message])

    # -- idempotency

    async def test_idempotency_key_replays(self) -> None:
        """The same key returns the first message and stores nothing more."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        first, created = await store.add_message(a_message(conversation, T0, "one"), "k")
        self.assertTrue(created)
        again, created = await store.add_message(a_message(conversation, T0 + 9, "two"), "k")
        self.assertFalse(created)
        self.assertEqual(again, first)
        self.assertEqual(await self.all_messages(store, conversation), [first])

    async def test_idempotency_key_scope(self) -> None:
        """A key is per user and conversation; without a key every call stores."""
        store = await self.started()
        one = await self.stored_conversation(store)
        two = await self.stored_conversation(store)
        _, by_ann = await store.add_message(a_message(one, T0, user_id="ann"), "k")
        _, by_bob = await store.add_message(a_message(one, T0, user_id="bob"), "k")
        _, elsewhere = await store.add_message(a_message(two, T0, user_id="ann"), "k")
        self.assertEqual((by_ann, by_bob, elsewhere), (True, True, True))
        for _ in range(2):
            _, created = await store.add_message(a_message(one, T0, user_id="ann"), None)
            self.assertTrue(created)
        self.assertEqual(len(await self.all_messages(store, one)), 4)
        self.assertEqual(len(await self.all_messages(store, two)), 1)

    async def test_idempotency_key_concurrent(self) -> None:
        """Concurrent posts with one key store one message and all return it."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        results = await gatherResults(
            [
                store.add_message(a_message(conversation, T0 + i, f"try {i}"), "same")
                for i in range(8)
            ]
        )
        messages = {message for message, _ in results}
        self.assertEqual(len(messages), 1)
        self.assertEqual([created for _, created in results].count(True), 1)
        self.assertEqual(await self.all_messages(store, conversation), list(messages))

    # -- receipts

    async def test_mark_read_forward_only(self) -> None:
        """Read times only move forward; the result says whether the stored time changed."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        cid = conversation.id
        steps = [(T0 + 10, True), (T0 + 10, False), (T0 + 5, False), (T0 + 11, True)]
        for at, changed in steps:
            self.assertEqual(await store.mark_read(cid, "ann", at), changed, at)
        read, received = await store.receipts(cid)
        self.assertEqual(read, [Receipt(cid, "ann", T0 + 11)])
        self.assertEqual(received, [])

    async def test_mark_received_forward_only(self) -> None:
        """Received times only move forward, independently of read times."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        cid = conversation.id
        self.assertTrue(await store.mark_received(cid, "ann", T0 + 7))
        self.assertFalse(await store.mark_received(cid, "ann", T0 + 6))
        self.assertTrue(await store.mark_read(cid, "ann", T0 + 1))
        read, received = await store.receipts(cid)
        self.assertEqual(read, [Receipt(cid, "ann", T0 + 1)])
        self.assertEqual(received, [Receipt(cid, "ann", T0 + 7)])

    async def test_receipts_ordered_by_user(self) -> None:
        """Receipts are listed per kind, ordered by user id, per conversation."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        other = await self.stored_conversation(store)
        for user in ("carol", "Bob", "ann", "bob"):
            await store.mark_read(conversation.id, user, T0)
        await store.mark_read(other.id, "dave", T0)
        read, received = await store.receipts(conversation.id)
        self.assertEqual([r.user_id for r in read], ["Bob", "ann", "bob", "carol"])
        self.assertEqual(received, [])
        self.assertEqual(await store.receipts(new_id()), ([], []))

    async def test_mark_unknown_conversation(self) -> None:
        """Receipts for a conversation that does not exist fail with StoreError."""
        store = await self.started()
        await self.assertFailure(store.mark_read(new_id(), "ann", T0), StoreError)
        await self.assertFailure(store.mark_received(new_id(), "ann", T0), StoreError)

    # -- events

    async def test_events_written_with_changes(self) -> None:
        """A message and each receipt that moves write one event, in the seed's JSON."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        cid = conversation.id
        message, _ = await store.add_message(a_message(conversation, T0 + 1, "Grüße"), None)
        await store.mark_read(cid, "ann", T0 + 2)
        await store.mark_received(cid, "bob", T0 + 3)
        everything = list(await store.events_after(0, 10))
        # Between them, the feed's conversationCreated and the message's conversationUpdated.
        self.assertEqual([e.position for e in everything], [1, 2, 3, 4, 5])
        events = in_streams(everything)
        self.assertEqual([e.position for e in events], [2, 4, 5])
        self.assertEqual([e.offset for e in events], [1, 2, 3])
        self.assertEqual([e.kind for e in events], ["message", "read", "received"])
        self.assertEqual({e.conversation_id for e in events}, {cid})
        self.assertEqual([e.created for e in events], [T0 + 1, T0 + 2, T0 + 3])
        self.assertEqual(
            [e.body for e in events],
            [
                '{"message":{"userId":"customer-1","userName":"name of customer-1",'
                f'"userRole":"customer","id":"{message.id}",'
                f'"created":"{format_time(T0 + 1)}","message":"Grüße"}}}}',
                f'{{"read":{{"userId":"ann","readAt":"{format_time(T0 + 2)}"}}}}',
                f'{{"received":{{"userId":"bob","receivedAt":"{format_time(T0 + 3)}"}}}}',
            ],
        )
        self.assertEqual(await store.last_event_position(), 5)

    async def test_no_event_without_change(self) -> None:
        """A receipt that does not move and a replayed idempotent post write no event."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        cid = conversation.id
        await store.add_message(a_message(conversation, T0), "key")
        await store.add_message(a_message(conversation, T0 + 1), "key")
        self.assertTrue(await store.mark_read(cid, "ann", T0 + 5))
        self.assertFalse(await store.mark_read(cid, "ann", T0 + 5))
        self.assertFalse(await store.mark_read(cid, "ann", T0 + 4))
        self.assertEqual(
            [e.kind for e in in_streams(await store.events_after(0, 10))], ["message", "read"]
        )
        self.assertEqual(await store.stream_offsets(cid, None), (2, None))

    async def test_no_events_at_first(self) -> None:
        """A new database has no events: position 0, and nothing after it."""
        store = await self.started()
        self.assertEqual(await store.last_event_position(), 0)
        self.assertEqual(list(await store.events_after(0, 10)), [])
        self.assertEqual(await store.stream_offsets(new_id(), T0), (0, None))

    async def test_offsets_per_conversation(self) -> None:
        """Each conversation's offsets count 1, 2, 3, ...; positions count across all."""
        store = await self.started()
        one = await self.stored_conversation(store)
        two = await self.stored_conversation(store)
        for i, conversation in enumerate([one, two, one, one, two]):
            await store.add_message(a_message(conversation, T0 + i), None)
        everything = list(await store.events_after(0, 20))
        # Two conversationCreated, five messages, four conversationUpdated (the first
        # message, at its conversation's own time, moves nothing).
        self.assertEqual([e.position for e in everything], list(range(1, 12)))
        events = in_streams(everything)
        self.assertEqual(
            [(e.conversation_id, e.offset) for e in events],
            [(one.id, 1), (two.id, 1), (one.id, 2), (one.id, 3), (two.id, 2)],
        )
        self.assertEqual([e.offset for e in await store.conversation_events(one.id, 2, 10)],
                         [2, 3])
        self.assertEqual([e.offset for e in await store.conversation_events(two.id, 1, 1)],
                         [1])
        self.assertEqual(await store.stream_offsets(one.id, None), (3, None))

    async def test_events_after_pages(self) -> None:
        """events_after reads pages in position order from past the given position."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        for i in range(7):
            await store.add_message(a_message(conversation, T0 + i), None)
        seen: list[int] = []
        position = 0
        while True:
            page = list(await store.events_after(position, 3))
            if not page:
                break
            self.assertLessEqual(len(page), 3)
            seen.extend(e.position for e in page)
            position = page[-1].position
        # conversationCreated, then each message's event and (but for the first, at the
        # conversation's own time) its conversationUpdated.
        self.assertEqual(seen, list(range(1, 15)))
        self.assertEqual(list(await store.events_after(14, 3)), [])

    async def test_stream_offsets_since(self) -> None:
        """The first offset at or after a time, if any, and the newest offset."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        for at in (T0 + 10, T0 + 20, T0 + 30):
            await store.add_message(a_message(conversation, at), None)
        cid = conversation.id
        self.assertEqual(await store.stream_offsets(cid, T0), (3, 1))
        self.assertEqual(await store.stream_offsets(cid, T0 + 11), (3, 2))
        self.assertEqual(await store.stream_offsets(cid, T0 + 30), (3, 3))
        self.assertEqual(await store.stream_offsets(cid, T0 + 31), (3, None))

    async def test_prune_events(self) -> None:
        """Pruning deletes only older events, in batches; messages and offsets stay."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        for i in range(5):
            await store.add_message(a_message(conversation, T0 + i), None)
        # conversationCreated, three message events and two conversationUpdated (the
        # message at T0 moved nothing).
        self.assertEqual(await store.prune_events(T0 + 3, batch=2), 6)
        kept = list(await store.events_after(0, 20))
        self.assertEqual([e.offset for e in in_streams(kept)], [4, 5])
        self.assertEqual(
            [e.kind for e in kept if e.kind in CONVERSATION_FEED_KINDS], ["conversationUpdated"] * 2
        )
        self.assertEqual(await store.prune_events(T0 + 3), 0)
        self.assertEqual(len(await self.all_messages(store, conversation)), 5)
        # The stream goes on from where it was; a replay from the start finds the oldest kept.
        await store.add_message(a_message(conversation, T0 + 9), None)
        replay = await store.conversation_events(conversation.id, 1, 10)
        self.assertEqual([e.offset for e in replay], [4, 5, 6])
        self.assertEqual(await store.last_event_position(), 12)

    async def test_concurrent_positions_gap_free(self) -> None:
        """
        Concurrent writers to several conversations get positions 1..N without gaps, and a
        reader never sees a position before every smaller one is visible.
        """
        store = await self.started()
        conversations = [await self.stored_conversation(store) for _ in range(4)]
        observed: list[list[int]] = []
        writes = []
        for i in range(8):
            conversation = conversations[i % 4]
            writes.append(store.add_message(a_message(conversation, T0 + i), None))
            writes.append(store.mark_read(conversation.id, f"user-{i}", T0 + i))
            observed.append([e.position for e in await store.events_after(0, 100)])
        await gatherResults(writes)
        everything = list(await store.events_after(0, 100))
        # 4 conversationCreated, 8 messages, 8 reads, and 7 conversationUpdated (the
        # message at T0 moved nothing).
        self.assertEqual([e.position for e in everything], list(range(1, 28)))
        events = in_streams(everything)
        for seen in observed:
            self.assertEqual(seen, list(range(1, len(seen) + 1)))
        for conversation in conversations:
            mine = [e for e in events if e.conversation_id == conversation.id]
            # Within a conversation, offsets follow positions: one commit order.
            self.assertEqual([e.offset for e in mine], list(range(1, len(mine) + 1)))

    # -- employees

    async def test_add_get_find_employee(self) -> None:
        """An employee is found by id, and by email in any case; the email keeps its case."""
        store = await self.started()
        employee = an_employee()
        await store.add_employee(employee)
        self.assertEqual(await store.get_employee(employee.id), employee)
        self.assertEqual(await store.find_employee("nora.nurse@example.org"), employee)
        self.assertEqual(await store.find_employee("NORA.NURSE@EXAMPLE.ORG"), employee)
        self.assertIsNone(await store.find_employee("someone@example.org"))
        self.assertIsNone(await store.get_employee(new_id()))

    async def test_duplicate_email(self) -> None:
        """A second employee with the same email in another case fails with DuplicateError."""
        store = await self.started()
        await store.add_employee(an_employee("nurse@example.org"))
        await self.assertFailure(
            store.add_employee(an_employee("NURSE@Example.ORG")), DuplicateError
        )
        self.assertEqual(len(await store.list_employees()), 1)

    async def test_list_employees(self) -> None:
        """Employees are listed ordered by email, ignoring case."""
        store = await self.started()
        for email in ("b@example.org", "C@example.org", "a@example.org"):
            await store.add_employee(an_employee(email))
        listed = await store.list_employees()
        self.assertEqual(
            [e.email for e in listed], ["a@example.org", "b@example.org", "C@example.org"]
        )

    async def test_update_employee(self) -> None:
        """Given fields change, others stay; an unknown employee gives False."""
        store = await self.started()
        employee = an_employee()
        await store.add_employee(employee)
        self.assertTrue(await store.update_employee(employee.id, name="Nora N.", disabled=True))
        self.assertTrue(await store.update_employee(employee.id, last_login=T0 + 1))
        self.assertTrue(await store.update_employee(employee.id, password_hash="$new"))
        self.assertTrue(await store.update_employee(employee.id))
        updated = present(await store.get_employee(employee.id))
        self.assertEqual(
            (updated.name, updated.disabled, updated.last_login, updated.password_hash),
            ("Nora N.", True, T0 + 1, "$new"),
        )
        self.assertEqual((updated.email, updated.created), (employee.email, employee.created))
        self.assertTrue(await store.update_employee(employee.id, disabled=False))
        self.assertFalse(present(await store.get_employee(employee.id)).disabled)
        self.assertFalse(await store.update_employee(new_id(), name="x"))
        self.assertFalse(await store.update_employee(new_id()))

    # -- login sessions

    async def test_login_session_find_and_extend(self) -> None:
        """A session is found by token hash; extending moves its expiry."""
        store = await self.started()
        employee = an_employee()
        await store.add_employee(employee)
        session = a_login_session(employee)
        await store.add_login_session(session)
        self.assertEqual(await store.find_login_session(session.token_hash), session)
        self.assertIsNone(await store.find_login_session("unknown"))
        await store.extend_login_session(session.id, T0 + 7200)
        found = present(await store.find_login_session(session.token_hash))
        self.assertEqual(found.expires_at, T0 + 7200)

    async def test_duplicate_token_hash(self) -> None:
        """Two sessions with one token hash fail with DuplicateError."""
        store = await self.started()
        employee = an_employee()
        await store.add_employee(employee)
        await store.add_login_session(a_login_session(employee, "hash"))
        await self.assertFailure(
            store.add_login_session(a_login_session(employee, "hash")), DuplicateError
        )

    async def test_revoke_one_session(self) -> None:
        """Revoking by session id revokes that session once; others stay."""
        store = await self.started()
        employee = an_employee()
        await store.add_employee(employee)
        one, two = a_login_session(employee), a_login_session(employee)
        await store.add_login_session(one)
        await store.add_login_session(two)
        self.assertEqual(await store.revoke_login_sessions(session_id=one.id), 1)
        self.assertEqual(await store.revoke_login_sessions(session_id=one.id), 0)
        self.assertTrue(present(await store.find_login_session(one.token_hash)).revoked)
        self.assertFalse(present(await store.find_login_session(two.token_hash)).revoked)
        self.assertEqual(await store.revoke_login_sessions(session_id=new_id()), 0)

    async def test_revoke_sessions_of_employee(self) -> None:
        """Revoking by employee revokes all of theirs that were live, and no one else's."""
        store = await self.started()
        nora, olga = an_employee("nora@example.org"), an_employee("olga@example.org")
        await store.add_employee(nora)
        await store.add_employee(olga)
        noras = [a_login_session(nora) for _ in range(3)]
        olgas = a_login_session(olga)
        for session in (*noras, olgas):
            await store.add_login_session(session)
        await store.revoke_login_sessions(session_id=noras[0].id)
        self.assertEqual(await store.revoke_login_sessions(employee_id=nora.id), 2)
        for session in noras:
            self.assertTrue(present(await store.find_login_session(session.token_hash)).revoked)
        self.assertFalse(present(await store.find_login_session(olgas.token_hash)).revoked)
        self.assertEqual(
            await store.revoke_login_sessions(session_id=olgas.id, employee_id=nora.id), 0
        )

    async def test_revoke_needs_a_target(self) -> None:
        """Revoking without a session or an employee fails with ValueError."""
        store = await self.started()
        await self.assertFailure(store.revoke_login_sessions(), ValueError)


class SQLiteStoreTests(StoreTestsMixin, TestCase):
    """
    The store scenario on SQLite, plus SQLite's particulars.
    """

    dialect = "sqlite"

    def new_location(self) -> Deferred[str]:
        """A file in a directory that does not exist yet."""
        return succeed(os.path.join(self.mktemp(), "data", SQLITE_FILE_NAME))

    def make_store(self, location: str, migrations: Sequence[Any] | None = None) -> SQLStore:
        """An SQLite store on the file C{location}."""
        return SQLiteStore(location, reactor, migrations=migrations)

    async def test_file_settings(self) -> None:
        """The file is created, with its directory, in WAL mode, with foreign keys on."""
        location = await self.new_location()
        store = await self.started(location)
        self.assertTrue(os.path.isfile(location))
        connection = sqlite3.connect(location)
        self.addCleanup(connection.close)
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "wal")
        versions = connection.execute("SELECT version FROM schema_migrations").fetchall()
        expected = [m.version for m in load_migrations("sqlite")]
        self.assertEqual(sorted(v for (v,) in versions), expected)
        # Foreign keys are per connection: the store's refuses an orphan receipt.
        await self.assertFailure(store.mark_read("no such conversation", "u", 1), StoreError)

    async def test_connection_settings(self) -> None:
        """
        The store's connection checks foreign keys, waits for a lock rather than failing,
        and keeps SQLite's temporary data (statement journals, sorts) in memory, not in
        files it would create and delete as a group commit runs.
        """
        location = await self.new_location()
        store = SQLiteStore(location, reactor, busy_timeout=2.5)
        store.preflight()
        connection = store._connect()
        self.addCleanup(connection.close)
        settings = [
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("foreign_keys", "busy_timeout", "temp_store", "journal_mode")
        ]
        self.assertEqual(settings, [1, 2500, 2, "wal"])

    async def test_unusable_location(self) -> None:
        """A data directory that cannot be created fails start with a clear StoreError."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        store = SQLiteStore(os.path.join(blocker, SQLITE_FILE_NAME), reactor)
        self.addCleanup(store.stop)
        error = await raised(store.start(), StoreError)
        self.assertIn(blocker, str(error))

    async def test_history_queries_use_indexes(self) -> None:
        """The history and list queries are answered from indexes, without sorting."""
        location = await self.new_location()
        await self.started(location)
        connection = sqlite3.connect(location)
        self.addCleanup(connection.close)
        node = rsql.parse(SEED_QUERY)
        cases = [
            (messages_query(SQLITE, "c", node, False, 50), "messages_conversation_created"),
            (messages_query(SQLITE, "c", None, True, None), "messages_conversation_created"),
            (
                conversations_query(SQLITE, "u", None, True, 20, (T0, "x")),
                "conversations_customer_created",
            ),
            (conversations_query(SQLITE, None, None, False, 20, None), "conversations_created"),
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

    def test_split_statements(self) -> None:
        """Migration scripts split into statements, comments and multi-line ones included."""
        script = (
            "-- a table\nCREATE TABLE t (\n  x TEXT -- ; not the end\n);\n\nSELECT ';';\n-- end\n"
        )
        self.assertEqual(
            split_statements(script),
            ["-- a table\nCREATE TABLE t (\n  x TEXT -- ; not the end\n);", "SELECT ';';"],
        )
        self.assertRaises(ValueError, split_statements, "CREATE TABLE t (x TEXT)")


class MemoryStoreTests(StoreTestsMixin, InlineTestCase):
    """
    The store scenario on L{MemoryStore}: SQLite's scripts run inline, every L{Deferred}
    fired before the call returns (L{InlineTestCase} fails a test that would wait).
    """

    dialect = "sqlite"

    def new_location(self) -> Deferred[Any]:
        """An in-memory database, closed after the test."""
        database = memory_database()
        self.addCleanup(database.close)
        return succeed(database)

    def make_store(self, location: Any, migrations: Sequence[Any] | None = None) -> SQLStore:
        """A memory store on the database C{location}."""
        return MemoryStore(Clock(), database=location, migrations=migrations)

    def test_fired_before_returning(self) -> None:
        """Start, operations and stop have their results as soon as they return."""
        clock = Clock()
        clock.advance(1_700_000_000)
        store = MemoryStore(clock)
        self.successResultOf(store.start())
        conversation = a_conversation()
        self.successResultOf(store.create_conversation(conversation))
        self.assertEqual(
            self.successResultOf(store.get_conversation(conversation.id)), conversation
        )
        self.failureResultOf(store.create_conversation(conversation), DuplicateError)
        self.successResultOf(store.stop())
        self.failureResultOf(store.ping(), StoreError)

    def test_own_database_is_private(self) -> None:
        """Without a database given, each store has a new one, gone when it stops."""
        first = MemoryStore(Clock())
        self.successResultOf(first.start())
        conversation = a_conversation()
        self.successResultOf(first.create_conversation(conversation))
        second = MemoryStore(Clock())
        self.successResultOf(second.start())
        self.addCleanup(second.stop)
        self.assertIsNone(self.successResultOf(second.get_conversation(conversation.id)))
        self.successResultOf(first.stop())
        self.successResultOf(first.start())
        self.addCleanup(first.stop)
        self.assertIsNone(self.successResultOf(first.get_conversation(conversation.id)))

    def test_failed_script_rolls_back(self) -> None:
        """A script that fails half way leaves nothing behind, and the data is intact."""
        database = memory_database()
        self.addCleanup(database.close)
        store = MemoryStore(Clock(), database=database)
        self.successResultOf(store.start())
        conversation = a_conversation()
        self.successResultOf(store.create_conversation(conversation))
        self.successResultOf(store.stop())
        existing = load_migrations("sqlite")
        broken = Migration(
            len(existing) + 1, "broken", "CREATE TABLE half (x TEXT);\nSELECT * FROM nowhere;\n"
        )
        failing = MemoryStore(Clock(), database=database, migrations=[*existing, broken])
        self.failureResultOf(failing.start(), StoreError)
        tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master")}
        self.assertNotIn("half", tables)
        again = MemoryStore(Clock(), database=database)
        self.successResultOf(again.start())
        self.addCleanup(again.stop)
        self.assertEqual(self.successResultOf(again.schema_version()), len(existing))
        self.assertEqual(
            self.successResultOf(again.get_conversation(conversation.id)), conversation
        )

    def test_hold_and_release(self) -> None:
        """Held operations wait, then run in the order they were made; flush holds the next."""
        store = MemoryStore(Clock())
        self.successResultOf(store.start())
        self.addCleanup(store.stop)
        conversation = a_conversation()
        store.hold()
        creating = store.create_conversation(conversation)
        getting = store.get_conversation(conversation.id)
        duplicate = store.create_conversation(conversation)
        self.assertNoResult(creating)
        self.assertNoResult(getting)
        again: list[Deferred[Any]] = []
        creating.addCallback(lambda _: again.append(store.get_conversation(conversation.id)))
        store.flush()
        self.successResultOf(creating)
        self.assertEqual(self.successResultOf(getting), conversation)
        self.failureResultOf(duplicate, DuplicateError)
        self.assertNoResult(again[0])
        store.release()
        self.assertEqual(self.successResultOf(again[0]), conversation)
        self.assertEqual(
            self.successResultOf(store.get_conversation(conversation.id)), conversation
        )

    def test_migrations_recorded_at_clock_time(self) -> None:
        """Applied migrations are stamped with the time of the store's clock."""
        clock = Clock()
        clock.advance(1_700_000_000)
        database = memory_database()
        self.addCleanup(database.close)
        store = MemoryStore(clock, database=database)
        self.successResultOf(store.start())
        self.successResultOf(store.stop())
        stamps = {at for (at,) in database.execute("SELECT applied_at FROM schema_migrations")}
        self.assertEqual(stamps, {1_700_000_000 * 1_000_000})


class PostgreSQLStoreTests(StoreTestsMixin, TestCase):
    """
    The store scenario on PostgreSQL (a fresh database per test), plus its particulars.
    """

    dialect = "postgresql"

    def new_location(self) -> Deferred[str]:
        """A new, empty database, dropped after the test."""
        return create_test_database(self)

    def make_store(self, location: str, migrations: Sequence[Any] | None = None) -> SQLStore:
        """A PostgreSQL store on the database URL C{location}."""
        return PostgreSQLStore(location, reactor, migrations=migrations)

    async def test_positions_follow_commits(self) -> None:
        """
        Eight concurrent writers queue for the event counter only at their transactions'
        ends, readers meanwhile see nothing half-done, and a rollback gives its position
        back: the positions are 9..16 (after the 8 conversationCreated) without a gap.
        (One writes a message; the others write receipts, as concurrent messages would
        share one group commit.)
        """
        url = await self.new_location()
        store = PostgreSQLStore(url, reactor, pool_size=9)
        await store.start()
        self.addCleanup(store.stop)
        conversations = [await self.stored_conversation(store) for _ in range(8)]
        # Another writer at the end of its transaction, holding the counter.
        other = psycopg2.connect(url)
        self.addCleanup(other.close)
        cursor = other.cursor()
        cursor.execute("UPDATE event_counter SET last = last + 1 WHERE id = 1 RETURNING last")
        self.assertEqual(cursor.fetchone(), (9,))
        posts = gatherResults(
            [store.add_message(a_message(conversations[0], T0), None)]
            + [store.mark_read(c.id, "ann", T0 + i) for i, c in enumerate(conversations[1:])]
        )

        def waiting() -> Script[int]:
            result = yield store._dialect.statement(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return int(result.rows[0][0])

        for _ in range(10_000):
            if await store._run(waiting()) == 8:
                break
        else:
            self.fail("the writers never queued for the counter")
        self.assertEqual(list(await store.events_after(8, 100)), [])
        other.rollback()
        await posts
        events = list(await store.events_after(8, 100))
        # A message (at T0 it moves no conversation's activity) and 7 receipts.
        self.assertEqual([e.position for e in events], list(range(9, 17)))
        self.assertEqual({e.offset for e in in_streams(events)}, {1})

    async def test_concurrent_starts(self) -> None:
        """Processes starting together on an empty database migrate it once, in turn."""
        location = await self.new_location()
        stores = [self.make_store(location) for _ in range(4)]
        for store in stores:
            self.addCleanup(store.stop)
        await gatherResults([store.start() for store in stores])
        versions = await gatherResults([store.schema_version() for store in stores])
        self.assertEqual(versions, [len(load_migrations("postgresql"))] * 4)

    async def test_unreachable_server(self) -> None:
        """A server that refuses connections fails start with a StoreError that says where."""
        store = PostgreSQLStore("postgresql://medichat:s3cret@127.0.0.1:1/nothing", reactor)
        self.addCleanup(store.stop)
        error = await raised(store.start(), StoreError)
        self.assertIn("cannot connect to PostgreSQL at", str(error))
        self.assertIn("127.0.0.1:1/nothing", str(error))
        self.assertNotIn("s3cret", str(error))

    async def test_silent_server(self) -> None:
        """A server that never answers fails start after the connect timeout."""
        factory = Factory.forProtocol(Protocol)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"postgresql://postgres@127.0.0.1:{port.getHost().port}/test"
        store = PostgreSQLStore(url, reactor, connect_timeout=0.3)
        self.addCleanup(store.stop)
        error = await raised(store.start(), StoreError)
        self.assertIn("no answer", str(error))

    async def test_reconnects_after_connection_loss(self) -> None:
        """Connections the server ends are opened again on their next use."""
        location = await self.new_location()
        store = await self.started(location)
        conversation = await self.stored_conversation(store)
        # Wait for the store to see each idle connection end (it logs each), not a while.
        lost = self.connections_lost(DEFAULT_POOL_SIZE)
        await deferToThread(_terminate_backends, location)
        await lost
        for _ in range(6):
            self.assertEqual(await store.get_conversation(conversation.id), conversation)

    async def test_nul_in_text(self) -> None:
        """Text PostgreSQL cannot hold (NUL) fails with StoreError, not a driver error."""
        store = await self.started()
        conversation = await self.stored_conversation(store)
        await self.assertFailure(
            store.add_message(a_message(conversation, T0, "a\x00b"), None), StoreError
        )

    def connections_lost(self, count: int) -> Deferred[None]:
        """Fires once the store has logged that C{count} connections were lost."""
        lost: Deferred[None] = Deferred()
        seen: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_format", "").startswith("PostgreSQL connection lost"):
                seen.append(event)
                if len(seen) == count:
                    globalLogPublisher.removeObserver(observe)
                    lost.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lost

    def test_redact(self) -> None:
        """Passwords never appear in URLs shown to people."""
        self.assertEqual(
            redact("postgresql://u:pw@db.example:5433/chat?sslmode=require"),
            "postgresql://u:***@db.example:5433/chat?sslmode=require",
        )
        self.assertEqual(redact("postgresql://u@h/db"), "postgresql://u@h/db")
        self.assertEqual(
            redact("postgresql://u@h/db?password=pw&application_name=m"),
            "postgresql://u@h/db?password=***&application_name=m",
        )


def _terminate_backends(url: str) -> None:
    """End every other connection to the database at C{url}."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    finally:
        connection.close()


class MigrationFilesTests(SynchronousTestCase):
    """
    The migrations shipped with the package.
    """

    def test_dialects_in_step(self) -> None:
        """Both dialects ship the same numbered migrations, under the same names."""
        sqlite = [(m.version, m.name) for m in load_migrations("sqlite")]
        postgresql = [(m.version, m.name) for m in load_migrations("postgresql")]
        self.assertEqual(sqlite, postgresql)
        self.assertEqual([v for v, _ in sqlite], list(range(1, len(sqlite) + 1)))

    def test_placeholders(self) -> None:
        """Queries use each driver's placeholder and never carry values in their text."""
        statement = messages_query(POSTGRESQL, INJECTION, rsql.parse(SEED_QUERY), False, 5)
        self.assertNotIn("?", statement.sql)
        self.assertNotIn(INJECTION, statement.sql)
        self.assertEqual(statement.sql.count("%s"), len(statement.params))
        self.assertEqual(statement.params[0], INJECTION)


class OpenStoreTests(SynchronousTestCase):
    """
    L{open_store} picks the store that C{--database} names.
    """

    def test_default_is_sqlite_in_data_dir(self) -> None:
        """Without a database URL, the store is the SQLite file in the data directory."""
        data_dir = self.mktemp()
        store = open_store(None, data_dir, reactor)
        self.assertIsInstance(store, SQLiteStore)
        assert isinstance(store, SQLiteStore)
        self.assertEqual(store.path, os.path.join(data_dir, SQLITE_FILE_NAME))
        self.assertEqual(store.kind, "sqlite")

    def test_postgresql_urls(self) -> None:
        """postgresql:// and postgres:// URLs open the PostgreSQL store."""
        for url in ("postgresql://u@h:5432/db", "postgres://u@h/db", "POSTGRESQL://h/db"):
            store = open_store(url, "unused", reactor)
            self.assertIsInstance(store, PostgreSQLStore)
            self.assertEqual(store.kind, "postgresql")

    def test_bad_urls(self) -> None:
        """Anything else is a ValueError that says what is expected, without passwords."""
        for url in (
            "",
            "medichat.sqlite3",
            "mysql://u:hunter2@h/db",
            "sqlite:///tmp/x",
            "postgresql:/h/db",
            "postgresql://u:hunter2@h:notaport/db",
            "u:hunter2@h://x",
        ):
            error = self.assertRaises(ValueError, open_store, url, "unused", reactor)
            self.assertIn("postgresql://", str(error), url)
            self.assertNotIn("hunter2", str(error), url)
