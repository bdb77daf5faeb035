"""
Tests for the message transaction (L{medichat.store.scripts.commit_messages}) and its
group commit (L{medichat.store.scripts.SQLStore.commit_message}), on the SQLite and the
PostgreSQL store on the real reactor, and on L{medichat.testing.MemoryStore} inline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from medichat.errors import DuplicateError, StoreError, StoreUnavailable
from medichat.model import (
    AccessEntry,
    Conversation,
    Message,
    MessageCommit,
    MessageCommitted,
    StoredEvent,
    format_time,
    new_id,
)
from medichat.store import PostgreSQLStore
from medichat.store.scripts import (
    _APPENDED,
    PendingEvent,
    Result,
    Script,
    SQLStore,
    Statement,
    _append_events,
    commit_messages,
)
from medichat.testing import MemoryStore
from tests._inline import InlineTestCase
from tests.store import test_store as scenario
from tests.store.test_store import (
    T0,
    StoreTestsMixin,
    a_conversation,
    a_message,
    in_streams,
    present,
    raw_write,
)

if TYPE_CHECKING:
    _Base = StoreTestsMixin
else:
    _Base = object

NURSE = "nurse-1"


class Transactions:
    """
    Counts the transactions a store runs, and the statements of each, by wrapping its
    C{_execute}.

    @ivar runs: C{(write, statements)} per transaction, in the order they started.
    @ivar texts: the statements' SQL, per transaction, in the same order.
    """

    def __init__(self, store: SQLStore) -> None:
        self.runs: list[list[Any]] = []
        self.texts: list[list[str]] = []
        execute = store._execute

        def counted(script: Script[Any], write: bool) -> Deferred[Any]:
            run = [write, 0]
            self.runs.append(run)
            self.texts.append([])
            return execute(self._counting(script, run, self.texts[-1]), write)

        store._execute = counted  # type: ignore[method-assign]

    @staticmethod
    def _counting(script: Script[Any], run: list[Any], texts: list[str]) -> Script[Any]:
        try:
            statement: Statement = next(script)
        except StopIteration as stop:
            return stop.value
        while True:
            run[1] += 1
            texts.append(statement.sql)
            result: Result = yield statement
            try:
                statement = script.send(result)
            except StopIteration as stop:
                return stop.value

    @property
    def writes(self) -> int:
        return sum(1 for write, _ in self.runs if write)


class GroupCommitMixin(_Base):
    """
    The message transaction and its group commit, on every store.  Subclasses take
    C{new_location} and C{make_store} from the store scenario's test case of their store.
    """

    started = StoreTestsMixin.started
    stored_conversation = StoreTestsMixin.stored_conversation
    all_messages = StoreTestsMixin.all_messages

    def concurrently(
        self, store: SQLStore, start: Callable[[], list[Deferred[Any]]]
    ) -> list[Deferred[Any]]:
        """
        Start operations together, as concurrent callers do: all in one reactor turn
        (a L{MemoryStore} holds the first until all are made).
        """
        return start()


    def assert_no_gap(self, every: Sequence[StoredEvent], streamed: int) -> None:
        """
        The positions of C{every} event (the employees' feed's among them) run from 1
        without a gap, and C{streamed} of them are conversation events.
        """
        self.assertEqual([e.position for e in every], list(range(1, len(every) + 1)))
        self.assertEqual(len(in_streams(every)), streamed)

    async def outcomes(self, deferreds: Sequence[Deferred[Any]]) -> list[Any]:
        """Each one's result, or its exception."""
        results: list[Any] = []
        for d in deferreds:
            try:
                results.append(await d)
            except Exception as e:
                results.append(e)
        return results

    async def test_one_transaction(self) -> None:
        """
        A message, its idempotency key, its receipt and both events commit in one write
        transaction.
        """
        store = await self.started()
        conversation = await self.stored_conversation(store)
        counted = Transactions(store)
        message = a_message(conversation, T0)
        outcome = await store.commit_message(MessageCommit(message, "key-1", (NURSE,)))
        self.assertEqual([write for write, _ in counted.runs], [True])
        assert outcome is not None
        self.assertTrue(outcome.created)
        self.assertEqual(outcome.received, (NURSE,))
        self.assertEqual(outcome.message.id, message.id)
        events = in_streams(await store.events_after(0, 10))
        self.assertEqual([(e.kind, e.offset) for e in events], [("message", 1), ("received", 2)])
        _, received = await store.receipts(conversation.id)
        self.assertEqual([(r.user_id, r.at) for r in received], [(NURSE, T0)])
        # The key replays: nothing written, the first message back.
        again = await store.commit_message(
            MessageCommit(a_message(conversation, T0 + 5), "key-1", (NURSE,))
        )
        self.assertEqual(again, MessageCommitted(outcome.message, False))
        self.assertEqual(len(in_streams(await store.events_after(0, 10))), 2)

    async def test_participants_only(self) -> None:
        """
        Another customer's message, or one to an unknown conversation, writes nothing and
        is answered L{None}; an employee may post in any conversation.
        """
        store = await self.started()
        conversation = await self.stored_conversation(store)
        stranger = a_message(conversation, T0, user_id="customer-2")
        self.assertIsNone(await store.commit_message(MessageCommit(stranger, "k", (NURSE,))))
        orphan = Message(new_id(), new_id(), T0, "customer-1", "Carla", "customer", "Hi")
        self.assertIsNone(await store.commit_message(MessageCommit(orphan)))
        self.assertEqual(await self.all_messages(store, conversation), [])
        self.assertEqual(in_streams(await store.events_after(0, 10)), [])
        self.assertEqual(await store.receipts(conversation.id), ([], []))
        nurse = a_message(conversation, T0, user_id=NURSE, role="employee")
        outcome = await store.commit_message(MessageCommit(nurse, None, ("customer-1",)))
        assert outcome is not None
        self.assertEqual(outcome.received, ("customer-1",))
        # Without the check (add_message), anybody's message is stored.
        self.assertTrue(
            await store.commit_message(MessageCommit(stranger, check_participant=False))
        )

    async def test_received_from_presence_tables(self) -> None:
        """
        With C{received_by=None} the transaction marks received every user the shared
        presence tables list as subscribed, the poster excepted.
        """
        store = await self.started()
        conversation = await self.stored_conversation(store)
        for user_id in ("customer-1", NURSE, "nurse-2"):
            await subscribed(store, conversation, user_id)
        counted = Transactions(store)
        outcome = await store.commit_message(MessageCommit(a_message(conversation, T0), None, None))
        assert outcome is not None
        self.assertEqual(outcome.received, (NURSE, "nurse-2"))
        self.assertEqual(len(counted.runs), 1)
        events = in_streams(await store.events_after(0, 10))
        self.assertEqual([e.kind for e in events], ["message", "received", "received"])
        self.assertIn(NURSE, events[1].body)
        self.assertIn("nurse-2", events[2].body)

    async def test_group_from_presence_tables(self) -> None:
        """
        A group of messages in several conversations, a conversation twice, with
        C{received_by=None}: each message marks received the users its own
        conversation's presence rows list, and each gets its own outcome.
        """
        store = await self.started()
        store.max_groups = 1
        first, second = [await self.stored_conversation(store) for _ in range(2)]
        for conversation, user_id in ((first, NURSE), (second, "nurse-2"), (second, NURSE)):
            await subscribed(store, conversation, user_id)
        messages = [
            a_message(first, T0, "opening"),
            a_message(first, T0 + 1, "a"),
            a_message(second, T0 + 2, "b"),
            a_message(first, T0 + 3, "c"),
            a_message(second, T0 + 4, "d", user_id=NURSE, role="employee"),
        ]
        counted = Transactions(store)
        posted = self.concurrently(
            store, lambda: [store.commit_message(MessageCommit(m, None, None)) for m in messages]
        )
        outcomes = await self.outcomes(posted)
        self.assertEqual(len(counted.runs), 2)
        self.assertEqual(
            [o.received for o in outcomes],
            [(NURSE,), (NURSE,), (NURSE, "nurse-2"), (NURSE,), ("nurse-2",)],
        )
        seqs = [o.message.seq for o in outcomes]
        self.assertEqual(seqs, sorted(seqs))
        events = in_streams(await store.events_after(0, 100))
        self.assertEqual(
            [(e.kind, message_or_user(e.body)) for e in events],
            [
                ("message", messages[0].id), ("received", NURSE),
                ("message", messages[1].id), ("received", NURSE),
                ("message", messages[2].id), ("received", NURSE), ("received", "nurse-2"),
                ("message", messages[3].id), ("received", NURSE),
                ("message", messages[4].id), ("received", "nurse-2"),
            ],
        )

    async def test_group_statements(self) -> None:
        """
        The messages of a group in different conversations are stored together: one
        C{INSERT} of the messages, one of their receipts and one change of their
        conversations' activity for all of them (on PostgreSQL, all three in one
        statement); a conversation's second message starts the next such segment.  Each
        message gets its own outcome.
        """
        store = await self.started()
        store.max_groups = 1
        one, two, three = [await self.stored_conversation(store) for _ in range(3)]
        messages = [
            a_message(one, T0, "opening"),  # alone: nothing was under way
            a_message(one, T0 + 1, "a"),
            a_message(two, T0 + 2, "b"),
            a_message(three, T0 + 3, "c", user_id=NURSE, role="employee"),
            a_message(two, T0 + 4, "d"),
        ]
        counted = Transactions(store)
        posted = self.concurrently(
            store,
            lambda: [store.commit_message(MessageCommit(m, None, (NURSE, "nurse-2")))
                     for m in messages],
        )
        outcomes = await self.outcomes(posted)
        self.assertEqual(len(counted.runs), 2)
        texts = counted.texts[1]
        for marker in ("INSERT INTO messages", "INSERT INTO receipts",
                       "UPDATE conversations SET last_activity"):
            self.assertEqual(sum(marker in text for text in texts), 2, marker)
        self.assertEqual([o.message.id for o in outcomes], [m.id for m in messages])
        seqs = [o.message.seq for o in outcomes]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(
            [o.received for o in outcomes],
            [(NURSE, "nurse-2")] * 3 + [("nurse-2",), (NURSE, "nurse-2")],
        )
        self.assertEqual([m.message for m in await self.all_messages(store, two)], ["b", "d"])
        conversation = await store.get_conversation(two.id)
        assert conversation is not None
        self.assertEqual(conversation.last_activity, T0 + 4)

    async def test_group_access_rows(self) -> None:
        """
        The access-log rows of a group's employee messages (a replay's too, none for a
        customer's or for a message refused) are written in one statement, in the
        messages' order, each with its conversation's customer.
        """
        store = await self.started()
        store.max_groups = 1
        one, two = [await self.stored_conversation(store) for _ in range(2)]
        lone = a_message(one, T0, "opening")  # alone: nothing was under way
        nurse = [a_message((two, one)[i], T0 + 1 + i, f"n{i}", NURSE, "employee")
                 for i in range(2)]
        # The first one's key again: a replay, still an access.
        replay = evolve(nurse[0], id=new_id(), created=T0 + 3)
        refused = a_message(a_conversation(), T0 + 5, "x", NURSE, "employee")

        def access(message: Message) -> AccessEntry:
            return AccessEntry(message.created, NURSE, "Nora", "employee", "message",
                               message.conversation_id, None, "192.0.2.1")

        commits = [
            MessageCommit(lone, None, ()),
            MessageCommit(nurse[0], "key", (), access=access(nurse[0])),
            MessageCommit(a_message(two, T0 + 4, "c"), None, ()),
            MessageCommit(nurse[1], None, (), access=access(nurse[1])),
            MessageCommit(refused, None, (), access=access(refused)),
            MessageCommit(replay, "key", (), access=access(replay)),
        ]
        counted = Transactions(store)
        posted = self.concurrently(store, lambda: [store.commit_message(c) for c in commits])
        outcomes = await self.outcomes(posted)
        self.assertIsNone(outcomes[4])
        self.assertEqual(outcomes[5].message.id, nurse[0].id)
        self.assertEqual(len(counted.runs), 2)
        self.assertEqual(
            sum("INSERT INTO access_log" in text for text in counted.texts[1]), 1
        )
        logged = await store.access_log(descending=False)
        self.assertEqual(
            [(e.at, e.conversation_id, e.customer_id) for e in logged],
            [(T0 + 1, two.id, two.customer_id), (T0 + 2, one.id, one.customer_id),
             (T0 + 3, two.id, two.customer_id)],
        )

    async def test_group_commit(self) -> None:
        """
        Sixty concurrent messages in six conversations, one group at a time: the first
        commits alone, the other fifty-nine, which arrived meanwhile, in one transaction;
        every caller gets its own message; seq and stream offsets follow arrival order in
        each conversation, and the events' positions follow arrival order overall.
        """
        store = await self.started()
        store.max_groups = 1
        conversations = [await self.stored_conversation(store) for _ in range(6)]
        messages = [
            a_message(conversations[i % 6], T0 + i, f"message {i}") for i in range(60)
        ]
        counted = Transactions(store)
        posted = self.concurrently(
            store,
            lambda: [
                store.commit_message(MessageCommit(m, f"key-{i}", (NURSE,) if i % 2 else ()))
                for i, m in enumerate(messages)
            ],
        )
        outcomes = await self.outcomes(posted)
        self.assertEqual([write for write, _ in counted.runs], [True, True])
        self.assertEqual([o.message.id for o in outcomes], [m.id for m in messages])
        self.assertTrue(all(o.created for o in outcomes))
        self.assertEqual(
            [o.received for o in outcomes], [(NURSE,) if i % 2 else () for i in range(60)]
        )
        # Each message after its conversation's creation moved the conversation's last
        # activity: one conversationUpdated each, in arrival order.
        created = {c.id: c.created for c in conversations}
        moved = [m for m in messages if m.created > created[m.conversation_id]]
        self.assertGreater(len(moved), 50)
        updated = [e for e in await store.events_after(0, 1000) if e.kind == "conversationUpdated"]
        self.assertEqual([e.conversation_id for e in updated], [m.conversation_id for m in moved])
        self.assertEqual(
            [json.loads(e.body)["conversationUpdated"]["lastActivity"] for e in updated],
            [format_time(m.created) for m in moved],
        )
        for conversation in conversations:
            seqs = [o.message.seq for o in outcomes if o.message.conversation_id == conversation.id]
            self.assertEqual(seqs, sorted(seqs))
            stored = await self.all_messages(store, conversation)
            self.assertEqual([m.seq for m in stored], seqs)
        events = in_streams(await store.events_after(0, 1000))
        self.assert_no_gap(await store.events_after(0, 1000), 90)
        expected = []
        for i, message in enumerate(messages):
            expected.append(("message", message.id))
            if i % 2:
                expected.append(("received", NURSE))
        self.assertEqual(
            [(e.kind, message_or_user(e.body)) for e in events], expected
        )
        for conversation in conversations:
            offsets = [e.offset for e in events if e.conversation_id == conversation.id]
            self.assertEqual(offsets, list(range(1, len(offsets) + 1)))
            self.assertIn(len(offsets), (10, 20))

    async def test_triage_in_one_group(self) -> None:
        """
        In one transaction, each message's triage starts from what the one before left:
        a customer reopens a resolved conversation and the nurse's next messages leave
        it open, in a group of one conversation (whose row SQLite reads whole) as in a
        group of several (which the SQL moves).
        """
        store = await self.started()
        store.max_groups = 1
        first, a, b, c = [await self.stored_conversation(store) for _ in range(4)]
        for conversation in (a, b, c):
            await store.set_status(conversation.id, "resolved", T0 + 1)
        position = await store.last_event_position()
        nurse: dict[str, Any] = {"user_id": NURSE, "role": "employee"}
        one_conversation = [
            a_message(a, T0 + 3, "reopens a"),
            a_message(a, T0 + 4, "a again", **nurse),
            a_message(a, T0 + 5, "a once more", **nurse),
        ]
        several = [
            a_message(b, T0 + 6, "reopens b"),
            a_message(c, T0 + 7, "reopens c"),
            a_message(b, T0 + 8, "b again, after b beside c", **nurse),
        ]
        counted = Transactions(store)
        # The store is idle: the first commits alone while the group gathers.  Next time
        # it may join the group, if that starts while the last is still being handed off.
        for group, writes in ((one_conversation, (2,)), (several, (3, 4))):
            messages = [a_message(first, group[0].created - 1, "alone"), *group]
            posted = self.concurrently(
                store,
                lambda messages=messages: [
                    store.commit_message(MessageCommit(m)) for m in messages
                ],
            )
            outcomes = await self.outcomes(posted)
            self.assertTrue(all(o.created for o in outcomes))
            self.assertIn(counted.writes, writes)
        for conversation, last in ((a, T0 + 5), (b, T0 + 8), (c, T0 + 7)):
            stored = await store.get_conversation(conversation.id)
            assert stored is not None
            self.assertEqual((stored.status, stored.last_activity), ("open", last))
        updated = [
            (e.conversation_id, json.loads(e.body)["conversationUpdated"])
            for e in await store.events_after(position, 100)
            if e.kind == "conversationUpdated" and e.conversation_id != first.id
        ]
        self.assertEqual(
            [(cid, body["status"], body["lastActivity"]) for cid, body in updated],
            [(m.conversation_id, "open", format_time(m.created))
             for m in one_conversation + several],
        )

    async def test_groups_side_by_side(self) -> None:
        """
        With up to three groups under way at a time, sixty concurrent messages in six
        conversations take a handful of transactions (the first alone, a group beside it
        whenever sixteen are queued, a conversation in one group at a time), every caller
        gets its own message, each conversation's seq and offsets follow arrival order,
        positions are gap-free, and each message's receipt event follows its own.
        """
        store = await self.started()
        store.max_groups = 3
        conversations = [await self.stored_conversation(store) for _ in range(6)]
        messages = [
            a_message(conversations[i % 6], T0 + i, f"message {i}") for i in range(60)
        ]
        counted = Transactions(store)
        posted = self.concurrently(
            store,
            lambda: [
                store.commit_message(MessageCommit(m, None, (f"nurse-{i}",)))
                for i, m in enumerate(messages)
            ],
        )
        outcomes = await self.outcomes(posted)
        self.assertLessEqual(len(counted.runs), 9)
        self.assertEqual([o.message.id for o in outcomes], [m.id for m in messages])
        events = in_streams(await store.events_after(0, 1000))
        self.assert_no_gap(await store.events_after(0, 1000), 120)
        for conversation in conversations:
            mine = [m.id for m in messages if m.conversation_id == conversation.id]
            stored = await self.all_messages(store, conversation)
            self.assertEqual([m.id for m in stored], mine)
            self.assertEqual([m.seq for m in stored], sorted(m.seq for m in stored))
            theirs = [e for e in events if e.conversation_id == conversation.id]
            self.assertEqual([e.offset for e in theirs], list(range(1, 21)))
            self.assertEqual(
                [message_or_user(e.body) for e in theirs if e.kind == "message"], mine
            )
        for i, message in enumerate(messages):
            at = [message_or_user(e.body) for e in events].index(message.id)
            self.assertEqual(message_or_user(events[at + 1].body), f"nurse-{i}")

    async def test_failing_message_alone(self) -> None:
        """
        A message that fails in a group (a message id stored already) fails alone: the
        group is committed again one message at a time, and the others commit; one that
        may not be posted is answered L{None} without failing the group.
        """
        store = await self.started()
        conversation, other = [await self.stored_conversation(store) for _ in range(2)]
        taken = a_message(conversation, T0)
        await store.add_message(taken, None)
        store.max_groups = 1
        commits = [
            MessageCommit(a_message(conversation, T0 + 1, "first")),
            MessageCommit(a_message(other, T0 + 2, "second"), None, (NURSE,)),
            MessageCommit(evolve(a_message(conversation, T0 + 3, "bad"), id=taken.id)),
            MessageCommit(a_message(other, T0 + 4, "stranger", user_id="customer-9")),
            MessageCommit(a_message(conversation, T0 + 5, "fifth"), "k"),
        ]
        counted = Transactions(store)
        posted = self.concurrently(
            store, lambda: [store.commit_message(c) for c in commits]
        )
        outcomes = await self.outcomes(posted)
        self.assertIsInstance(outcomes[2], DuplicateError)
        self.assertIsNone(outcomes[3])
        for i in (0, 1, 4):
            self.assertEqual(outcomes[i].message.id, commits[i].message.id)
            self.assertTrue(outcomes[i].created)
        self.assertEqual(outcomes[1].received, (NURSE,))
        # The first alone, the group of four (rolled back), then each of the four alone.
        self.assertEqual(len(counted.runs), 6)
        texts = [m.message for m in await self.all_messages(store, conversation)]
        self.assertEqual(texts, ["Hello", "first", "fifth"])
        events = in_streams(await store.events_after(0, 100))
        self.assert_no_gap(await store.events_after(0, 100), 5)
        self.assertEqual([e.conversation_id for e in events],
                         [conversation.id] * 2 + [other.id] * 2 + [conversation.id])

    async def test_hand_off(self) -> None:
        """
        A store with a hand-off listener gives it the events each transaction committed,
        in position order and exactly as L{events_after} returns them, before the callers
        hear of their messages; a group's events come once, together; a transaction that
        fails (rolled back) or writes no event hands nothing over; a listener that
        raises is logged and the message is still committed; after C{hand_off(None)},
        nothing is handed over.
        """
        store = await self.started()
        conversation, other = [await self.stored_conversation(store) for _ in range(2)]
        handed: list[list[StoredEvent]] = []
        heard: list[bool] = []
        store.hand_off(lambda events: handed.append(list(events)))
        first = await store.commit_message(
            MessageCommit(a_message(conversation, T0, "first"), None, (NURSE,))
        )
        assert first is not None
        self.assertEqual(handed, [await store.events_after(2, 100)])
        self.assertEqual([e.kind for e in handed[0]], ["message", "received"])
        store.max_groups = 1
        messages = [a_message((conversation, other)[i % 2], T0 + 1 + i, f"m{i}")
                    for i in range(5)]

        def hear(outcome: Any) -> Any:
            written = {message_or_user(e.body) for events in handed for e in events
                       if e.kind == "message"}
            heard.append(outcome.message.id in written)
            return outcome

        transactions = store.message_transactions
        posted = self.concurrently(
            store,
            lambda: [store.commit_message(MessageCommit(m)).addCallback(hear)
                     for m in messages],
        )
        await self.outcomes(posted)
        # Grouped (how, depends on timing): one hand-over per transaction, fewer than
        # the messages, and each caller heard after its message's events were handed.
        grouped = store.message_transactions - transactions
        self.assertLess(grouped, 5)
        self.assertEqual(len(handed), 1 + grouped)
        self.assertEqual(heard, [True] * 5)
        every = await store.events_after(0, 100)
        self.assertEqual([e for events in handed for e in events], every[2:])
        for events in handed:
            positions = [e.position for e in events]
            self.assertEqual(positions, list(range(positions[0], positions[0] + len(events))))
        # Nothing for a read, nor for a transaction that rolled back.
        await store.receipts(conversation.id)
        with self.assertRaises(DuplicateError):
            await store.add_message(evolve(a_message(conversation, T0 + 9), id=first.message.id),
                                    None)
        self.assertEqual(len(handed), 1 + grouped)

        def broken(events: Sequence[StoredEvent]) -> None:
            raise RuntimeError("listener broke")

        store.hand_off(broken)
        self.assertIsNotNone(
            await store.commit_message(MessageCommit(a_message(other, T0 + 20, "still")))
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("still", [m.message for m in await self.all_messages(store, other)])
        store.hand_off(None)
        await store.commit_message(MessageCommit(a_message(other, T0 + 21, "unseen")))
        self.assertEqual(len(handed), 1 + grouped)

    async def test_same_key_in_one_group(self) -> None:
        """
        Two messages with the same idempotency key in one group: the second is the
        first's replay.
        """
        store = await self.started()
        conversation = await self.stored_conversation(store)
        store.max_groups = 1
        messages = [a_message(conversation, T0 + i, f"try {i}") for i in range(3)]
        counted = Transactions(store)
        keys = ["other", "same", "same"]
        posted = self.concurrently(
            store,
            lambda: [
                store.commit_message(MessageCommit(m, key))
                for m, key in zip(messages, keys, strict=True)
            ],
        )
        outcomes = await self.outcomes(posted)
        self.assertEqual(len(counted.runs), 2)
        self.assertEqual([o.created for o in outcomes], [True, True, False])
        self.assertEqual(outcomes[2].message, outcomes[1].message)
        self.assertEqual(len(await self.all_messages(store, conversation)), 2)


async def subscribed(store: SQLStore, conversation: Conversation, user_id: str) -> None:
    """List C{user_id} in the shared presence tables as subscribed to C{conversation}."""
    await raw_write(
        store,
        "INSERT INTO presence_members (conversation_id, user_id, subscriptions) VALUES (?, ?, 1)",
        conversation.id,
        user_id,
    )


def message_or_user(body: str) -> str:
    """The message id of a C{message} event's body, or the user of a receipt's."""
    event = json.loads(body)
    if "message" in event:
        return str(event["message"]["id"])
    return str(next(iter(event.values()))["userId"])


class MemoryGroupCommitTests(GroupCommitMixin, InlineTestCase):
    """
    On L{MemoryStore}, inline; operations are held until all are made, as if the first
    were still running on a database.
    """

    new_location = scenario.MemoryStoreTests.new_location
    make_store = scenario.MemoryStoreTests.make_store

    def concurrently(
        self, store: SQLStore, start: Callable[[], list[Deferred[Any]]]
    ) -> list[Deferred[Any]]:
        assert isinstance(store, MemoryStore)
        store.hold()
        started = start()
        store.release()
        return started


class SQLiteGroupCommitTests(GroupCommitMixin, TestCase):
    """On SQLite, through adbapi's thread."""

    new_location = scenario.SQLiteStoreTests.new_location
    make_store = scenario.SQLiteStoreTests.make_store


class PostgreSQLGroupCommitTests(GroupCommitMixin, TestCase):
    """On PostgreSQL, through txpostgres."""

    new_location = scenario.PostgreSQLStoreTests.new_location
    make_store = scenario.PostgreSQLStoreTests.make_store

    async def test_socket_stays_registered(self) -> None:
        """
        The store's statements leave the connections' sockets registered with the
        reactor: no reader or writer is added or removed while transactions run.
        """
        counting = CountingReactor(reactor)
        store = PostgreSQLStore(await self.new_location(), counting, pool_size=1)
        await store.start()
        self.addCleanup(store.stop)
        conversation = await self.stored_conversation(store)
        before = counting.changes
        for i in range(5):
            await store.commit_message(
                MessageCommit(a_message(conversation, T0 + i), f"k{i}", (NURSE,))
            )
        self.assertEqual(len(await self.all_messages(store, conversation)), 5)
        self.assertEqual(counting.changes, before)


    async def one_connection(self) -> tuple[PostgreSQLStore, Any]:
        """A started store of one connection (one session), and that connection."""
        store = PostgreSQLStore(await self.new_location(), reactor, pool_size=1)
        await store.start()
        self.addCleanup(store.stop)
        assert store._pool is not None
        (slot,) = store._pool.connections
        return store, slot._connection

    def sent_by(self, connection: Any) -> list[str]:
        """
        The texts C{connection} sends from now on, one per round trip, in a list that the
        test may clear.
        """
        sent: list[str] = []
        execute = connection.execute

        def counted(cursor: Any, sql: str, params: Any) -> Deferred[None]:
            sent.append(sql)
            return execute(cursor, sql, params)  # type: ignore[no-any-return]

        connection.execute = counted
        return sent

    async def test_hot_statements_prepared(self) -> None:
        """
        From its second use on a connection, each statement of a chat message runs as
        the session's prepared statement, with the same outcome; what PostgreSQL
        cannot prepare runs as it is.
        """
        store, connection = await self.one_connection()
        conversation = await self.stored_conversation(store)
        for i in range(4):
            outcome = await store.commit_message(
                MessageCommit(a_message(conversation, T0 + i, f"m{i}"), f"k{i}", (NURSE,))
            )
            assert outcome is not None
            self.assertEqual((outcome.message.seq, outcome.received), (i + 1, (NURSE,)))
        prepared = [sql for sql, execute in connection.prepared.items() if execute]
        # The message, its receipts and its activity, in one statement on PostgreSQL.
        self.assertTrue(any(sql.startswith("WITH inserted AS") for sql in prepared))
        # The offsets, the positions and the events, in one statement on PostgreSQL.
        self.assertTrue(any(sql.startswith("WITH pending ") for sql in prepared))
        self.assertNotIn(None, connection.prepared.values())

        def names() -> Script[list[str]]:
            result = yield Statement("SELECT statement FROM pg_prepared_statements")
            return [str(row[0]) for row in result.rows]

        in_session = await store._run(names(), write=False)
        self.assertEqual(len(in_session), len(prepared))
        self.assertEqual([m.message for m in await self.all_messages(store, conversation)],
                         ["m0", "m1", "m2", "m3"])
        self.assertEqual(len(in_streams(await store.events_after(0, 100))), 8)

    async def test_round_trips(self) -> None:
        """
        A message with an idempotency key takes four round trips (the lock, the key's
        check, the message with its receipts and its conversation's activity in one
        statement, then its key and its events with the C{COMMIT}, their offsets and
        positions read back after it): the statements whose results nothing reads (its
        key) travel with the next one; and everything is stored as before.
        """
        store, connection = await self.one_connection()
        conversation = await self.stored_conversation(store)
        sent = self.sent_by(connection)
        for i in range(3):
            del sent[:]
            await store.commit_message(
                MessageCommit(a_message(conversation, T0 + i, f"m{i}"), f"k{i}", (NURSE,))
            )
        self.assertEqual(len(sent), 4)
        self.assertTrue(sent[1].startswith("EXECUTE"))  # the key's check, prepared
        # The message, its receipts and its conversation's activity: one statement.
        self.assertEqual(sent[2].count("EXECUTE"), 1)
        # The key, with the events, the COMMIT and what they gave back.
        self.assertEqual(sent[3].count("EXECUTE"), 2)
        self.assertTrue(sent[3].endswith(f"; COMMIT; {_APPENDED}"), sent[3])
        streamed = in_streams(await store.events_after(0, 100))
        self.assertEqual([e.offset for e in streamed], list(range(1, len(streamed) + 1)))
        self.assertEqual([e.kind for e in streamed].count("message"), 3)
        replay = await store.commit_message(
            MessageCommit(a_message(conversation, T0 + 9, "again"), "k1", (NURSE,))
        )
        assert replay is not None
        self.assertEqual((replay.message.message, replay.created), ("m1", False))
        self.assertEqual([m.message for m in await self.all_messages(store, conversation)],
                         ["m0", "m1", "m2"])
        self.assertEqual([e.kind for e in await store.events_after(0, 100)].count("message"), 3)

    async def test_group_round_trips(self) -> None:
        """
        The messages of a group in different conversations are stored in one statement:
        a group of three takes three round trips (the lock, the three messages with their
        receipts and activity, the events with the C{COMMIT}); a conversation's second
        message in the group starts another.
        """
        store, connection = await self.one_connection()
        one, two, three = [await self.stored_conversation(store) for _ in range(3)]
        sent = self.sent_by(connection)
        clock = [T0]

        async def group(*chosen: Conversation) -> list[str]:
            clock[0] += 10
            commits = [
                MessageCommit(a_message(c, clock[0] + i, f"m{i}"), None, (NURSE,))
                for i, c in enumerate(chosen)
            ]
            del sent[:]
            outcomes = await store._transaction(commit_messages(store._dialect, commits), True)
            self.assertEqual([o.received for o in outcomes], [(NURSE,)] * len(commits))
            self.assertEqual([o.message.id for o in outcomes], [c.message.id for c in commits])
            return list(sent)

        for _ in range(3):  # the last time with every statement prepared already
            trips = await group(one, two, three)
        self.assertEqual(len(trips), 3)
        self.assertIn("WITH inserted AS (INSERT INTO messages", trips[1])
        self.assertIn("VALUES (%s, %s, %s, %s, %s, %s, %s), (%s,", trips[1])
        for _ in range(3):
            trips = await group(two, three, two)
        self.assertEqual(len(trips), 4)
        self.assertEqual(len(await self.all_messages(store, two)), 9)

    async def test_group_statement_prepared(self) -> None:
        """
        The statement that stores a group's messages of different conversations, whose
        receipts come from the presence tables, has a text that differs only with the
        number of messages: from its second use it runs as the session's prepared
        statement, with the same outcome.  With the receipts given (their number is in
        the text) it runs as it is.
        """
        store, connection = await self.one_connection()
        one, two = [await self.stored_conversation(store) for _ in range(2)]
        for conversation in (one, two):
            await subscribed(store, conversation, NURSE)
        sent = self.sent_by(connection)
        clock = [T0]

        async def group(received_by: tuple[str, ...] | None) -> list[str]:
            clock[0] += 10
            commits = [
                MessageCommit(a_message(c, clock[0] + i, f"m{i}"), None, received_by)
                for i, c in enumerate((one, two))
            ]
            del sent[:]
            outcomes = await store._transaction(commit_messages(store._dialect, commits), True)
            self.assertEqual([o.received for o in outcomes], [(NURSE,)] * 2)
            return list(sent)

        first = await group(None)
        self.assertIn("WITH inserted AS (INSERT INTO messages", first[1])
        for _ in range(2):  # the last time with every statement prepared already
            trips = await group(None)
        self.assertEqual(len(trips), 3)
        self.assertTrue(trips[1].startswith("EXECUTE medichat_"), trips[1])
        for _ in range(3):
            trips = await group((NURSE,))
        self.assertEqual(len(trips), 3)
        self.assertIn("WITH inserted AS (INSERT INTO messages", trips[1])
        self.assertEqual(len(await self.all_messages(store, two)), 6)
        events = in_streams(await store.events_after(0, 100))
        self.assertEqual([e.kind for e in events], ["message", "received"] * 12)

    async def test_held_statement_fails(self) -> None:
        """
        A statement sent with the next one that fails fails its transaction: nothing of
        it is committed.
        """
        store, _ = await self.one_connection()
        dialect = store._dialect
        await raw_write(store, "CREATE TABLE probe (id INTEGER PRIMARY KEY)")

        def script() -> Script[None]:
            yield dialect.statement("INSERT INTO probe (id) VALUES (?)", 1)
            yield dialect.prepared("INSERT INTO probe (id) VALUES (?)", 1, later=True)

        await self.assertFailure(store._run(script(), write=True), DuplicateError)

        def probes() -> Script[int]:
            result = yield Statement("SELECT count(*) FROM probe")
            return int(result.rows[0][0])

        self.assertEqual(await store._run(probes(), write=False), 0)

    async def test_read_back(self) -> None:
        """
        A script's last statement with a C{read_back} query travels with the C{COMMIT}
        and that query, in one round trip; the script gets what the query read, and what
        the transaction wrote is committed.  A statement the script yields after it fails
        the script with L{StoreError}, and nothing is rolled back.
        """
        store, connection = await self.one_connection()
        dialect = store._dialect
        await raw_write(store, "CREATE TABLE probe (id INTEGER PRIMARY KEY)")
        sent = self.sent_by(connection)
        read: list[object] = []

        def script(i: int, then: Statement | None = None) -> Script[None]:
            yield dialect.statement("INSERT INTO probe (id) VALUES (?)", i)
            result = yield Statement(
                "SELECT set_config('medichat.probe', %s, false)",
                (f"value {i}",),
                read_back="SHOW medichat.probe",
            )
            read.append(result.rows)
            if then is not None:
                yield then

        await store._run(script(1), write=True)
        self.assertEqual(read, [[("value 1",)]])
        self.assertEqual(len(sent), 2)
        self.assertEqual(
            sent[1],
            "SELECT set_config('medichat.probe', %s, false); COMMIT;"
            " SHOW medichat.probe",
        )
        del sent[:]
        failing = store._run(script(2, Statement("SELECT 1")), write=True)
        error = await self.assertFailure(failing, StoreError)
        self.assertIn("after its last statement", str(error))
        self.assertEqual(read[-1], [("value 2",)])
        self.assertEqual(len(sent), 2)

        def probes() -> Script[list[int]]:
            result = yield Statement("SELECT id FROM probe ORDER BY id")
            return [int(row[0]) for row in result.rows]

        self.assertEqual(await store._run(probes(), write=False), [1, 2])

    async def test_events_fail_whole(self) -> None:
        """
        The statement that writes a transaction's events goes with its C{COMMIT}: should
        it fail (an event of a conversation that is not there), nothing of the
        transaction is committed and no position is taken.
        """
        store, _ = await self.one_connection()
        dialect = store._dialect
        conversation = await self.stored_conversation(store)
        last = await store.last_event_position()

        def script() -> Script[None]:
            yield dialect.statement(
                "UPDATE conversations SET status = 'resolved' WHERE id = ?", conversation.id
            )
            yield from _append_events(
                dialect,
                [
                    PendingEvent(conversation.id, "read", {"read": {}}, T0),
                    PendingEvent("no-such-conversation", "read", {"read": {}}, T0),
                ],
            )

        await self.assertFailure(store._run(script(), write=True), StoreError)
        self.assertEqual(present(await store.get_conversation(conversation.id)).status, "open")
        self.assertEqual(await store.last_event_position(), last)
        self.assertEqual(list(await store.conversation_events(conversation.id, 0, 10)), [])

    async def test_unpreparable_statement(self) -> None:
        """
        A statement PostgreSQL cannot prepare (a parameter it cannot type) leaves its
        transaction as it was: what came before it commits, and it runs unprepared,
        then and later, without another attempt.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store, connection = await self.one_connection()
        dialect = store._dialect
        await raw_write(store, "CREATE TABLE probe (id INTEGER PRIMARY KEY)")

        def script(i: int) -> Script[bool]:
            yield dialect.statement("INSERT INTO probe (id) VALUES (?)", i)
            # "could not determine data type of parameter $1"
            result = yield dialect.prepared("SELECT ? IS NULL", f"value {i}")
            return bool(result.rows[0][0])

        for i in range(3):
            self.assertIs(await store._run(script(i), write=True), False)
        self.assertEqual(connection.prepared, {"SELECT %s IS NULL": None})

        def probes() -> Script[list[int]]:
            result = yield Statement("SELECT id FROM probe ORDER BY id")
            return [int(row[0]) for row in result.rows]

        self.assertEqual(await store._run(probes(), write=False), [0, 1, 2])
        unprepared = [e for e in logged if "unprepared" in e.get("log_format", "")]
        self.assertEqual(len(unprepared), 1)

    async def test_prepared_statements_lost(self) -> None:
        """
        When the session loses its prepared statements (C{DEALLOCATE ALL}, C{DISCARD ALL}
        by a pooler), the transaction under way fails as an outage (the message was not
        stored; its client may send it again), the statements are prepared afresh, and
        the next messages commit as before.
        """
        store, connection = await self.one_connection()
        conversation = await self.stored_conversation(store)
        for i in range(2):
            await store.commit_message(MessageCommit(a_message(conversation, T0 + i), None, ()))
        self.assertTrue(any(connection.prepared.values()))
        await raw_write(store, "DEALLOCATE ALL")
        await self.assertFailure(
            store.commit_message(MessageCommit(a_message(conversation, T0 + 2), None, ())),
            StoreUnavailable,
        )
        for i in range(3, 6):
            outcome = await store.commit_message(
                MessageCommit(a_message(conversation, T0 + i), None, ())
            )
            assert outcome is not None
            self.assertEqual(outcome.message.seq, i)
        self.assertTrue(any(connection.prepared.values()))
        self.assertEqual(len(await self.all_messages(store, conversation)), 5)

    async def test_prepared_after_reconnect(self) -> None:
        """
        A connection opened again after the server ended it has none of the old
        session's prepared statements, and messages commit on it as before.
        """
        location = await self.new_location()
        store = PostgreSQLStore(location, reactor, pool_size=1)
        await store.start()
        self.addCleanup(store.stop)
        conversation = await self.stored_conversation(store)
        for i in range(3):
            await store.commit_message(MessageCommit(a_message(conversation, T0 + i), None, ()))
        lost = scenario.PostgreSQLStoreTests.connections_lost(self, 1)  # type: ignore[arg-type]
        await deferToThread(scenario._terminate_backends, location)
        await lost
        for i in range(3, 6):
            outcome = await store.commit_message(
                MessageCommit(a_message(conversation, T0 + i), None, ())
            )
            assert outcome is not None
            self.assertEqual(outcome.message.seq, i + 1)


class CountingReactor:
    """The reactor, counting the readers and writers added and removed."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.changes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def addReader(self, reader: Any) -> None:  # noqa: N802 - the reactor's name
        self.changes += 1
        self._real.addReader(reader)

    def removeReader(self, reader: Any) -> None:  # noqa: N802
        self.changes += 1
        self._real.removeReader(reader)

    def addWriter(self, writer: Any) -> None:  # noqa: N802
        self.changes += 1
        self._real.addWriter(writer)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802
        self.changes += 1
        self._real.removeWriter(writer)


class GroupWindowTests(InlineTestCase):
    """
    The group window (L{SQLStore.group_window}): under a steady load a group waits for the
    rest of the window to take what arrives in it; after a quiet spell, with enough
    queued, or when the store stops, it does not wait.  On L{MemoryStore} and its clock.
    """

    started = MemoryGroupCommitTests.started
    new_location = MemoryGroupCommitTests.new_location
    make_store = MemoryGroupCommitTests.make_store
    stored_conversation = MemoryGroupCommitTests.stored_conversation
    all_messages = MemoryGroupCommitTests.all_messages

    async def windowed(self) -> tuple[MemoryStore, Clock, Conversation, Transactions]:
        """A started store with a 3 ms window and a target of 4, its clock, a conversation."""
        store = await self.started()
        assert isinstance(store, MemoryStore)
        clock = store._reactor
        assert isinstance(clock, Clock)
        clock.advance(1_700_000_000)
        self.assertEqual(store.group_window, 0.0, "no window unless asked for")
        store.group_window = 0.003
        store.group_target = 4
        conversation = await self.stored_conversation(store)
        return store, clock, conversation, Transactions(store)

    def post(self, store: SQLStore, conversation: Conversation, n: int) -> Deferred[Any]:
        return store.commit_message(MessageCommit(a_message(conversation, T0 + n, f"m{n}")))

    async def test_window_gathers(self) -> None:
        """
        The first message goes at once; two more within the window wait for its end and
        go together, in order; after a quiet spell the next goes at once again.
        """
        store, clock, conversation, counted = await self.windowed()
        first = self.post(store, conversation, 1)
        self.assertTrue(first.called)
        clock.advance(0.001)
        second, third = self.post(store, conversation, 2), self.post(store, conversation, 3)
        self.assertFalse(second.called or third.called)
        self.assertEqual(len(counted.runs), 1)
        clock.advance(0.002)
        self.assertTrue(second.called and third.called)
        self.assertEqual(len(counted.runs), 2, "the two in one transaction")
        clock.advance(1)
        self.assertTrue(self.post(store, conversation, 4).called)
        self.assertEqual(len(counted.runs), 3)
        stored = await self.all_messages(store, conversation)
        self.assertEqual([m.message for m in stored], ["m1", "m2", "m3", "m4"])

    async def test_target_starts_group(self) -> None:
        """
        Once the target is queued the group goes without waiting for the window; and after
        a group that large, under a heavy load, the next waits for nothing either.
        """
        store, clock, conversation, counted = await self.windowed()
        self.post(store, conversation, 0)
        waiting = [self.post(store, conversation, n) for n in range(1, 4)]
        self.assertFalse(any(d.called for d in waiting))
        waiting.append(self.post(store, conversation, 4))
        self.assertTrue(all(d.called for d in waiting))
        self.assertEqual(len(counted.runs), 2)
        self.assertEqual(clock.getDelayedCalls(), [], "the window's call is cancelled")
        self.assertTrue(self.post(store, conversation, 5).called)
        self.assertEqual(len(counted.runs), 3)
        clock.advance(0.001)
        self.assertFalse(self.post(store, conversation, 6).called, "after a group of one")

    async def test_stop_commits_waiting(self) -> None:
        """Stopping commits what waits for the window, without waiting for it."""
        store, clock, conversation, counted = await self.windowed()
        self.post(store, conversation, 1)
        second = self.post(store, conversation, 2)
        self.assertFalse(second.called)
        await store.stop()
        outcome = self.successResultOf(second)
        self.assertEqual((outcome.message.message, outcome.created), ("m2", True))
        self.assertEqual(len(counted.runs), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_no_window(self) -> None:
        """With a window of 0 every group starts as soon as the one before has ended."""
        store, clock, conversation, counted = await self.windowed()
        store.group_window = 0
        posted = [self.post(store, conversation, n) for n in range(3)]
        self.assertTrue(all(d.called for d in posted))
        self.assertEqual(len(counted.runs), 3)
