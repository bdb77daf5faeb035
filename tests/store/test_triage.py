"""
Tests for triage in L{medichat.store}: status, assignment, last activity, the list's
per-viewer unread counts, and the employees' feed events, on SQLite, PostgreSQL and
L{medichat.testing.MemoryStore} (one scenario, L{TriageStoreTestsMixin}).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from medichat import rsql
from medichat.model import (
    CONVERSATION_FEED_KINDS,
    Conversation,
    Message,
    Role,
    StoredEvent,
    format_time,
    new_id,
    parse_time,
)
from medichat.store import PostgreSQLStore, SQLiteStore
from medichat.store.scripts import SQLITE, SQLStore, overview_query
from medichat.store.sqlite import SQLITE_FILE_NAME
from medichat.testing import MemoryStore, memory_database
from tests._inline import InlineTestCase
from tests._pg import create_test_database

reactor: Any = _reactor

if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object

T0 = parse_time("2021-07-14T12:00:00Z")
NURSE, NURSE_NAME = "nurse-1", "Nora"
OTHER, OTHER_NAME = "nurse-2", "Olga"
CUSTOMER = "customer-1"


def feed(events: Sequence[StoredEvent]) -> list[tuple[str, dict[str, Any]]]:
    """The employees' feed events among C{events}: their kinds and bodies."""
    return [
        (e.kind, json.loads(e.body)[e.kind]) for e in events if e.kind in CONVERSATION_FEED_KINDS
    ]


class TriageStoreTestsMixin(_Base):
    """
    What every store does for triage.  Subclasses say where a fresh database lives.
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

    async def conversation(
        self, store: SQLStore, created: int = T0, customer_id: str = CUSTOMER
    ) -> Conversation:
        """A new conversation, stored."""
        conversation = Conversation(new_id(), created, customer_id, f"name of {customer_id}")
        await store.create_conversation(conversation)
        return conversation

    async def post(
        self,
        store: SQLStore,
        conversation: Conversation,
        at: int,
        user_id: str = CUSTOMER,
        role: Role = "customer",
    ) -> Message:
        """A message, stored."""
        message = Message(new_id(), conversation.id, at, user_id, f"name of {user_id}", role, "hi")
        stored, _ = await store.add_message(message, None)
        return stored  # type: ignore[no-any-return]

    # -- status

    async def test_new_conversation(self) -> None:
        """A new conversation is open, unassigned, last active when created, and announced."""
        store = await self.started()
        conversation = await self.conversation(store)
        stored = await store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual(
            (stored.status, stored.assignee_id, stored.assignee_name, stored.last_activity),
            ("open", "", "", T0),
        )
        [event] = await store.events_after(0, 10)
        self.assertEqual((event.position, event.offset), (1, 0))
        self.assertEqual(
            event.body,
            f'{{"conversationCreated":{{"id":"{conversation.id}","created":"{format_time(T0)}",'
            '"customerId":"customer-1","customerName":"name of customer-1","status":"open",'
            f'"assigneeId":null,"assigneeName":null,"lastActivity":"{format_time(T0)}"}}}}',
        )
        # Not part of the conversation's stream: a replay never sees it.
        self.assertEqual(list(await store.conversation_events(conversation.id, 0, 10)), [])
        self.assertEqual(await store.stream_offsets(conversation.id, T0), (0, None))

    async def test_status_transitions(self) -> None:
        """open -> resolved -> open; setting the same status changes and announces nothing."""
        store = await self.started()
        conversation = await self.conversation(store)
        resolved = await store.set_status(conversation.id, "resolved", T0 + 1)
        assert resolved is not None
        self.assertTrue(resolved.changed)
        self.assertEqual((resolved.before.status, resolved.after.status), ("open", "resolved"))
        again = await store.set_status(conversation.id, "resolved", T0 + 2)
        assert again is not None
        self.assertFalse(again.changed)
        reopened = await store.set_status(conversation.id, "open", T0 + 3)
        assert reopened is not None
        self.assertEqual(reopened.after.status, "open")
        stored = await store.get_conversation(conversation.id)
        self.assertEqual(stored, reopened.after)
        events = list(await store.events_after(1, 10))
        self.assertEqual(
            feed(events),
            [
                ("conversationUpdated", {
                    "id": conversation.id, "status": "resolved", "assigneeId": None,
                    "assigneeName": None, "lastActivity": format_time(T0),
                }),
                ("conversationUpdated", {
                    "id": conversation.id, "status": "open", "assigneeId": None,
                    "assigneeName": None, "lastActivity": format_time(T0),
                }),
            ],
        )
        self.assertEqual([e.created for e in events], [T0 + 1, T0 + 3])

    async def test_unknown_conversation(self) -> None:
        """Triage of an unknown conversation changes nothing and says so with None."""
        store = await self.started()
        self.assertIsNone(await store.set_status(new_id(), "resolved", T0))
        self.assertIsNone(await store.assign(new_id(), NURSE, NURSE_NAME, False, T0))
        self.assertIsNone(await store.unassign(new_id(), NURSE, T0))
        self.assertEqual(await store.last_event_position(), 0)

    async def test_bad_status(self) -> None:
        """A status other than open and resolved is refused before the database."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.assertFailure(store.set_status(conversation.id, "closed", T0), ValueError)

    async def test_customer_message_reopens(self) -> None:
        """
        A customer's message reopens a resolved conversation; an employee's does not;
        both move the last activity, each with one conversationUpdated after the message.
        """
        store = await self.started()
        conversation = await self.conversation(store)
        await store.set_status(conversation.id, "resolved", T0 + 1)
        await self.post(store, conversation, T0 + 2, NURSE, "employee")
        stored = await store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual((stored.status, stored.last_activity), ("resolved", T0 + 2))
        await self.post(store, conversation, T0 + 3)
        stored = await store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual((stored.status, stored.last_activity), ("open", T0 + 3))
        events = list(await store.events_after(2, 10))
        self.assertEqual(
            [(e.kind, json.loads(e.body).get("conversationUpdated", {}).get("status"))
             for e in events],
            [
                ("message", None), ("conversationUpdated", "resolved"),
                ("message", None), ("conversationUpdated", "open"),
            ],
        )
        self.assertEqual(
            feed(events)[-1][1]["lastActivity"], format_time(T0 + 3)
        )

    async def test_last_activity_only_forward(self) -> None:
        """A message older than the last activity (a clock step back) moves nothing."""
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, T0 + 10)
        position = await store.last_event_position()
        await self.post(store, conversation, T0 + 5, NURSE, "employee")
        stored = await store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual(stored.last_activity, T0 + 10)
        self.assertEqual([e.kind for e in await store.events_after(position, 10)], ["message"])

    async def test_reopen_keeps_last_activity(self) -> None:
        """
        A customer's message older than the last activity (a clock step back) still
        reopens a resolved conversation, and leaves the last activity where it was.
        """
        store = await self.started()
        conversation = await self.conversation(store)
        await self.post(store, conversation, T0 + 10, NURSE, "employee")
        await store.set_status(conversation.id, "resolved", T0 + 11)
        position = await store.last_event_position()
        await self.post(store, conversation, T0 + 5)
        stored = await store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual((stored.status, stored.last_activity), ("open", T0 + 10))
        updated = feed(await store.events_after(position, 10))
        self.assertEqual(
            [(kind, body["status"], body["lastActivity"]) for kind, body in updated],
            [("conversationUpdated", "open", format_time(T0 + 10))],
        )

    # -- assignment

    async def test_claim_and_release(self) -> None:
        """
        A free conversation is assigned; someone else's is not (unless taking over); the
        assignee's own claim changes nothing; only the assignee unassigns.
        """
        store = await self.started()
        conversation = await self.conversation(store)
        cid = conversation.id
        claimed = await store.assign(cid, NURSE, NURSE_NAME, False, T0 + 1)
        assert claimed is not None
        self.assertTrue(claimed.changed)
        self.assertEqual((claimed.after.assignee_id, claimed.after.assignee_name),
                         (NURSE, NURSE_NAME))
        refused = await store.assign(cid, OTHER, OTHER_NAME, False, T0 + 2)
        assert refused is not None
        self.assertFalse(refused.changed)
        self.assertEqual(refused.after.assignee_id, NURSE)
        mine = await store.assign(cid, NURSE, NURSE_NAME, False, T0 + 3)
        assert mine is not None
        self.assertFalse(mine.changed)
        not_theirs = await store.unassign(cid, OTHER, T0 + 4)
        assert not_theirs is not None
        self.assertFalse(not_theirs.changed)
        taken = await store.assign(cid, OTHER, OTHER_NAME, True, T0 + 5)
        assert taken is not None
        self.assertEqual((taken.before.assignee_id, taken.after.assignee_id), (NURSE, OTHER))
        released = await store.unassign(cid, OTHER, T0 + 6)
        assert released is not None
        self.assertEqual((released.after.assignee_id, released.after.assignee_name), ("", ""))
        nobody = await store.unassign(cid, OTHER, T0 + 7)
        assert nobody is not None
        self.assertFalse(nobody.changed)
        self.assertEqual(
            [body["assigneeId"] for _, body in feed(await store.events_after(1, 20))],
            [NURSE, OTHER, None],
        )

    async def test_concurrent_claims_one_winner(self) -> None:
        """Of twenty concurrent claims by twenty employees exactly one wins; all see it."""
        store = await self.started()
        conversation = await self.conversation(store)
        results = await gatherResults(
            [
                store.assign(conversation.id, f"nurse-{i}", f"Nurse {i}", False, T0 + i)
                for i in range(20)
            ]
        )
        winners = [r for r in results if r.changed]
        self.assertEqual(len(winners), 1)
        winner = winners[0].after.assignee_id
        self.assertEqual({r.after.assignee_id for r in results}, {winner})
        stored = await store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual(stored.assignee_id, winner)
        self.assertEqual(
            [body["assigneeId"] for _, body in feed(await store.events_after(1, 50))], [winner]
        )

    # -- the list

    async def test_overview_unread_and_last_message(self) -> None:
        """
        Unread counts messages by others after the viewer's read time (all of them
        without one); the newest message comes along; each viewer sees their own count.
        """
        store = await self.started()
        one = await self.conversation(store)
        two = await self.conversation(store, T0 + 1)
        await self.post(store, one, T0 + 10)
        await self.post(store, one, T0 + 11)
        await store.mark_read(one.id, NURSE, T0 + 11)
        await self.post(store, one, T0 + 12)
        last = await self.post(store, one, T0 + 13, NURSE, "employee")

        async def overview(viewer: str) -> dict[str, tuple[int, str | None]]:
            rows = await store.overview(viewer, None, None, "created", False, 10, None)
            return {
                c.id: (o.unread, None if o.last_message is None else o.last_message.id)
                for c, o in rows
            }

        self.assertEqual(await overview(NURSE), {one.id: (1, last.id), two.id: (0, None)})
        self.assertEqual(await overview(CUSTOMER), {one.id: (1, last.id), two.id: (0, None)})
        self.assertEqual(await overview(OTHER), {one.id: (4, last.id), two.id: (0, None)})
        rows = await store.overview(NURSE, None, None, "created", False, 10, None)
        self.assertEqual(rows[0][1].last_message, last)

    async def test_overview_order_by_activity(self) -> None:
        """By last activity, most recent first; pages chain by (last activity, id)."""
        store = await self.started()
        made = [await self.conversation(store, T0 + i) for i in range(5)]
        await self.post(store, made[1], T0 + 100)
        await self.post(store, made[3], T0 + 50)
        expected = [made[1].id, made[3].id, made[4].id, made[2].id, made[0].id]
        rows = await store.overview(NURSE, None, None, "lastActivity", True, 10, None)
        self.assertEqual([c.id for c, _ in rows], expected)
        seen: list[str] = []
        after = None
        while True:
            page = await store.overview(NURSE, None, None, "lastActivity", True, 2, after)
            if not page:
                break
            seen.extend(c.id for c, _ in page)
            last = page[-1][0]
            after = (last.last_activity, last.id)
        self.assertEqual(seen, expected)
        ascending = await store.overview(NURSE, None, None, "lastActivity", False, 10, None)
        self.assertEqual([c.id for c, _ in ascending], expected[::-1])

    async def test_overview_query(self) -> None:
        """RSQL over status and assigneeId ('' is nobody), and a customer's own only."""
        store = await self.started()
        a = await self.conversation(store)
        b = await self.conversation(store, T0 + 1)
        c = await self.conversation(store, T0 + 2, "customer-2")
        await store.set_status(a.id, "resolved", T0 + 3)
        await store.assign(b.id, NURSE, NURSE_NAME, False, T0 + 4)

        async def ids(query: str, customer_id: str | None = None) -> list[str]:
            node = rsql.parse(query)
            rows = await store.overview(NURSE, customer_id, node, "created", False, 10, None)
            return [conversation.id for conversation, _ in rows]

        self.assertEqual(await ids("status==resolved"), [a.id])
        self.assertEqual(await ids("status==open"), [b.id, c.id])
        self.assertEqual(await ids(f"assigneeId=={NURSE}"), [b.id])
        self.assertEqual(await ids("assigneeId==''"), [a.id, c.id])
        self.assertEqual(await ids(f"assigneeId!={NURSE}"), [a.id, c.id])
        self.assertEqual(await ids("status==open", CUSTOMER), [b.id])
        self.assertEqual(await ids(f"lastActivity=ge={format_time(T0 + 1)}"), [b.id, c.id])
        await self.assertFailure(
            store.overview(NURSE, None, rsql.parse("lastActivity==soon"), "created", False, 5,
                           None),
            rsql.RSQLError,
        )

    async def test_unread_exact_under_concurrent_posts(self) -> None:
        """
        Forty messages posted at once by a customer and an employee, with lists read
        meanwhile: no list counts more than was posted, and once all are committed the
        counts are exact for each viewer, before and after a read.
        """
        store = await self.started()
        conversation = await self.conversation(store)
        work: list[Deferred[Any]] = []
        for i in range(40):
            author: str = CUSTOMER if i % 2 == 0 else NURSE
            role: Role = "customer" if i % 2 == 0 else "employee"
            work.append(
                Deferred.fromCoroutine(self.post(store, conversation, T0 + 1 + i, author, role))
            )
            if i % 4 == 0:
                work.append(store.overview(NURSE, None, None, "created", False, 10, None))
        results = await gatherResults(work)
        observed = [r[0][1].unread for r in results if isinstance(r, list)]
        self.assertEqual(len(observed), 10)
        self.assertLessEqual(max(observed), 20)

        async def unread(viewer: str) -> int:
            rows = await store.overview(viewer, None, None, "created", False, 10, None)
            return rows[0][1].unread  # type: ignore[no-any-return]

        self.assertEqual(await unread(NURSE), 20)  # every customer message
        self.assertEqual(await unread(CUSTOMER), 20)  # every employee message
        self.assertEqual(await unread(OTHER), 40)
        await store.mark_read(conversation.id, NURSE, T0 + 20)
        self.assertEqual(await unread(NURSE), 10)  # the customer's, after T0 + 20

    async def test_feed_events_in_commit_order(self) -> None:
        """
        The feed's events and the conversation events share one gap-free sequence of
        positions, in commit order, however they interleave.
        """
        store = await self.started()
        one = await self.conversation(store)
        await self.post(store, one, T0 + 1)
        await store.assign(one.id, NURSE, NURSE_NAME, False, T0 + 2)
        two = await self.conversation(store, T0 + 3)
        await store.mark_read(one.id, NURSE, T0 + 4)
        await store.set_status(one.id, "resolved", T0 + 5)
        events = list(await store.events_after(0, 100))
        self.assertEqual([e.position for e in events], list(range(1, 8)))
        self.assertEqual(
            [(e.kind, e.conversation_id) for e in events],
            [
                ("conversationCreated", one.id),
                ("message", one.id),
                ("conversationUpdated", one.id),
                ("conversationUpdated", one.id),
                ("conversationCreated", two.id),
                ("read", one.id),
                ("conversationUpdated", one.id),
            ],
        )
        # Pages split anywhere in the two tables: the union stays in order.
        for size in (1, 2, 3):
            seen: list[int] = []
            position = 0
            while page := list(await store.events_after(position, size)):
                seen.extend(e.position for e in page)
                position = page[-1].position
            self.assertEqual(seen, list(range(1, 8)))


class SQLiteTriageTests(TriageStoreTestsMixin, TestCase):
    """The triage scenario on SQLite, and its indexes."""

    def new_location(self) -> Deferred[str]:
        """A file in a directory that does not exist yet."""
        return succeed(os.path.join(self.mktemp(), "data", SQLITE_FILE_NAME))

    def make_store(self, location: str) -> SQLStore:
        """An SQLite store on the file C{location}."""
        return SQLiteStore(location, reactor)

    async def test_overview_uses_indexes(self) -> None:
        """The list by last activity is read from its indexes, without a sort."""
        location = await self.new_location()
        store = self.make_store(location)
        await store.start()
        self.addCleanup(store.stop)
        connection = sqlite3.connect(location)
        self.addCleanup(connection.close)
        cases = [
            (overview_query(SQLITE, "v", None, None, "lastActivity", True, 20, (T0, "x")),
             "conversations_last_activity"),
            (overview_query(SQLITE, "v", "u", None, "lastActivity", True, 20, None),
             "conversations_customer_last_activity"),
            (overview_query(SQLITE, "v", None, None, "created", False, 20, None),
             "conversations_created"),
        ]
        for statement, index in cases:
            plan = " | ".join(
                row[-1]
                for row in connection.execute("EXPLAIN QUERY PLAN " + statement.sql,
                                              statement.params)
            )
            self.assertIn(index, plan)
            self.assertIn("messages_conversation_created", plan)
            self.assertNotIn("TEMP B-TREE", plan)


class MemoryTriageTests(TriageStoreTestsMixin, InlineTestCase):
    """The triage scenario on L{MemoryStore}."""

    def new_location(self) -> Deferred[Any]:
        """An in-memory database, closed after the test."""
        database = memory_database()
        self.addCleanup(database.close)
        return succeed(database)

    def make_store(self, location: Any) -> SQLStore:
        """A memory store on the database C{location}."""
        return MemoryStore(Clock(), database=location)


class PostgreSQLTriageTests(TriageStoreTestsMixin, TestCase):
    """The triage scenario on PostgreSQL, with as many connections as claims."""

    def new_location(self) -> Deferred[str]:
        """A new, empty database, dropped after the test."""
        return create_test_database(self)

    def make_store(self, location: str) -> SQLStore:
        """A PostgreSQL store on C{location} whose claims and posts really overlap."""
        return PostgreSQLStore(location, reactor, pool_size=20)

