"""
Tests for L{medichat.domain.conversations}: the domain service on the real SQL store (run
inline by L{medichat.testing.MemoryStore}) and the real in-process hub, on a L{Clock}.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from medichat.domain.cluster_presence import ClusterPresence
from medichat.domain.conversations import (
    ConversationService,
    decode_cursor,
    encode_cursor,
)
from medichat.domain.presence import InProcessPresence
from medichat.errors import BadRequest, DomainError, Forbidden, NotFound
from medichat.interfaces import IConversations, ISubscriber
from medichat.model import Conversation, Overview, Receipt, User, format_time, new_id
from medichat.pubsub.cluster import ClusterHub
from medichat.pubsub.feed import EventFeed
from medichat.pubsub.hub import InProcessHub, Publication
from medichat.pubsub.topics import conversation_topic
from medichat.testing import MemoryStore
from tests._broadcast import Bus
from tests._feed import started_feed
from tests._inline import InlineTestCase
from tests.store.test_group_commit import Transactions

# The seed's first message event happened at 2021-07-26T12:05:22Z.
NOW = 1627301122.0
CUSTOMER = User("0be8c544-9518-4bce-8519-0eee0356989f", "c1", "customer")
OTHER_CUSTOMER = User("6f1c0f7e-32a4-4b0e-9a59-6a3f3c1f0a11", "c2", "customer")
EMPLOYEE = User("3d43c23b-c637-4a7a-a780-28c2c29f1194", "Nurse Joy", "employee")
UNKNOWN_ID = "28ccd489-f588-4d35-99a9-1e74ec2475b2"


@implementer(ISubscriber)
class Recorder:
    """
    A subscriber that keeps each event's JSON text, as a STOMP client would receive it.
    """

    def __init__(self, user: User) -> None:
        self.user_id = user.user_id
        self.bodies: list[str] = []
        self.offsets: list[int | None] = []

    def deliver(self, publication: Publication) -> None:
        self.bodies.append(publication.body.decode("utf-8"))
        self.offsets.append(publication.offset)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.bodies]


def compact(value: object) -> str:
    """JSON as the hub encodes it: compact, key order kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ServiceTestCase(InlineTestCase):
    """
    A L{ConversationService} on a fresh in-memory store, a real hub and a L{Clock}; nothing
    waits for the reactor.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore(self.clock)
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.hub = InProcessHub()
        # Presence publishes on a hub of its own: these tests record conversation events.
        self.presence = InProcessPresence(InProcessHub())
        self.feed = started_feed(self.store, self.hub, self.clock)
        self.service = ConversationService(
            self.store, self.hub, self.clock, self.presence, self.feed
        )

    async def conversation(self, user: User = CUSTOMER) -> Conversation:
        conversation: Conversation = await self.service.create(user)
        return conversation

    def subscribe(self, conversation: Conversation, user: User) -> Recorder:
        recorder = Recorder(user)
        self.hub.subscribe(conversation_topic(conversation.id), recorder)
        # As a STOMP session reports its subscription.
        session_key = f"session-{id(recorder)}"
        self.presence.session_opened(session_key, user.user_id, user.is_employee)
        self.presence.joined(session_key, conversation.id)
        return recorder

    async def fails(self, d: Deferred[Any], kind: type[DomainError]) -> str:
        try:
            await d
        except kind as e:
            return e.detail
        raise self.failureException(f"{kind.__name__} not raised")


class CreateTests(ServiceTestCase):
    """
    L{ConversationService.create} opens conversations for customers.
    """

    async def test_create(self) -> None:
        """A customer's new conversation is theirs, stamped now, and stored."""
        conversation = await self.conversation()
        self.assertEqual(conversation.customer_id, CUSTOMER.user_id)
        self.assertEqual(conversation.customer_name, "c1")
        self.assertEqual(conversation.created, int(NOW * 1_000_000))
        stored = await self.store.get_conversation(conversation.id)
        self.assertEqual(stored, conversation)

    async def test_employee(self) -> None:
        """Employees do not open conversations."""
        detail = await self.fails(self.service.create(EMPLOYEE), Forbidden)
        self.assertEqual(detail, "only customers open conversations")

    def test_interface(self) -> None:
        """The service provides what the STOMP session needs of conversations."""
        self.assertTrue(verifyObject(IConversations, self.service))


class GetTests(ServiceTestCase):
    """
    L{ConversationService.get} shows a conversation to its participants and marks it
    received for them.
    """

    async def test_new_conversation(self) -> None:
        """A new conversation has no messages; the GET itself marks it received."""
        conversation = await self.conversation()
        result = await self.service.get(CUSTOMER, conversation.id)
        self.assertEqual(result.conversation, conversation)
        self.assertEqual((list(result.messages), list(result.read)), ([], []))
        self.assertEqual(
            list(result.received),
            [Receipt(conversation.id, CUSTOMER.user_id, int(NOW * 1_000_000))],
        )

    async def test_received_event(self) -> None:
        """GET publishes received when it moves the caller's received time, once."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, EMPLOYEE)
        self.clock.advance(0.935376)
        await self.service.get(CUSTOMER, conversation.id)
        await self.service.get(CUSTOMER, conversation.id)
        self.assertEqual(
            recorder.bodies,
            [
                compact(
                    {
                        "received": {
                            "userId": CUSTOMER.user_id,
                            "receivedAt": "2021-07-26T12:05:22.935376Z",
                        }
                    }
                )
            ],
        )

    async def test_not_participant(self) -> None:
        """Another customer's, an unknown and a malformed id are all simply not found."""
        conversation = await self.conversation()
        for user, conversation_id in [
            (OTHER_CUSTOMER, conversation.id),
            (CUSTOMER, UNKNOWN_ID),
            (CUSTOMER, "not-a-uuid"),
            (CUSTOMER, ""),
            (EMPLOYEE, conversation.id + "x"),
        ]:
            detail = await self.fails(self.service.get(user, conversation_id), NotFound)
            self.assertEqual(detail, "no such conversation")

    async def test_not_participant_not_marked(self) -> None:
        """A refused GET marks nothing received."""
        conversation = await self.conversation()
        await self.fails(self.service.get(OTHER_CUSTOMER, conversation.id), NotFound)
        read, received = await self.store.receipts(conversation.id)
        self.assertEqual((list(read), list(received)), ([], []))

    async def test_employee_reads_all(self) -> None:
        """Any employee may read any conversation."""
        conversation = await self.conversation()
        result = await self.service.get(EMPLOYEE, conversation.id)
        self.assertEqual(result.conversation.id, conversation.id)
        self.assertEqual([r.user_id for r in result.received], [EMPLOYEE.user_id])

    async def test_upper_case_id(self) -> None:
        """An id in upper case names the same conversation."""
        conversation = await self.conversation()
        result = await self.service.get(CUSTOMER, conversation.id.upper())
        self.assertEqual(result.conversation.id, conversation.id)

    async def test_messages_query_order_limit(self) -> None:
        """query, order and limit select and sort the messages."""
        conversation = await self.conversation()
        texts = []
        for i in range(4):
            self.clock.advance(60)
            await self.service.post_message(CUSTOMER, conversation.id, f"m{i}")
            texts.append(f"m{i}")
        # Messages at 12:06:22, 12:07:22, 12:08:22, 12:09:22.
        query = "created=le=2021-07-26T12:08:22Z;created=ge=2021-07-26T12:07:22Z"

        async def messages(**kwargs: Any) -> list[str]:
            result = await self.service.get(CUSTOMER, conversation.id, **kwargs)
            return [m.message for m in result.messages]

        self.assertEqual(await messages(), texts)
        self.assertEqual(await messages(query=query), ["m1", "m2"])
        self.assertEqual(await messages(query=query, order="-created"), ["m2", "m1"])
        self.assertEqual(await messages(order="-created", limit=3), ["m3", "m2", "m1"])
        self.assertEqual(await messages(query=""), texts)
        self.assertEqual(await messages(query="userRole==employee"), [])
        self.assertEqual(await messages(query=f"userId=={CUSTOMER.user_id}", limit=1), ["m0"])

    async def test_bad_parameters(self) -> None:
        """Bad query, order and limit values are BadRequests saying what is wrong."""
        conversation = await self.conversation()
        cases: list[tuple[dict[str, Any], str]] = [
            ({"query": "created=le="}, "query: at position 11: expected value, found end of query"),
            (
                {"query": "1==1"},
                "query: at position 0: unknown field '1'; allowed: created, userId, userRole, id",
            ),
            (
                {"query": "created=ge=yesterday"},
                "query: at position 0: bad value for created: not an RFC 3339 timestamp: "
                "'yesterday'",
            ),
            (
                {"query": "customerId==x"},
                "query: at position 0: unknown field 'customerId'; "
                "allowed: created, userId, userRole, id",
            ),
            ({"order": "created desc"}, "order: must be 'created' or '-created'"),
            ({"limit": 0}, "limit: must be an integer from 1 to 1000"),
            ({"limit": 1001}, "limit: must be an integer from 1 to 1000"),
        ]
        for kwargs, expected in cases:
            detail = await self.fails(
                self.service.get(CUSTOMER, conversation.id, **kwargs), BadRequest
            )
            self.assertEqual(detail, expected)


class PostMessageTests(ServiceTestCase):
    """
    L{ConversationService.post_message} commits, then publishes in the seed's shapes.
    """

    async def test_message_event(self) -> None:
        """The message event is exactly the seed's shape, author included in the audience."""
        conversation = await self.conversation()
        author = self.subscribe(conversation, CUSTOMER)
        message = await self.service.post_message(CUSTOMER, conversation.id, "Hello")
        expected = {
            "message": {
                "userId": CUSTOMER.user_id,
                "userName": "c1",
                "userRole": "customer",
                "id": message.id,
                "created": "2021-07-26T12:05:22Z",
                "message": "Hello",
            }
        }
        self.assertEqual(author.bodies, [compact(expected)])
        self.assertEqual(message.as_json(), expected["message"])

    async def test_time_ordered_ids(self) -> None:
        """
        A message's id is a version 7 UUID holding its time to the millisecond, so that
        later messages' ids sort after earlier ones' (the store's index on them grows at
        its end).
        """
        conversation = await self.conversation()
        first = await self.service.post_message(CUSTOMER, conversation.id, "one")
        self.clock.advance(0.002)
        second = await self.service.post_message(CUSTOMER, conversation.id, "two")
        for message in (first, second):
            parsed = uuid.UUID(message.id)
            self.assertEqual((parsed.version, str(parsed)), (7, message.id))
            self.assertEqual(parsed.int >> 80, message.created // 1000)
        self.assertLess(first.id, second.id)

    async def test_auto_received(self) -> None:
        """Every other subscribed user gets the message marked received, after the message."""
        conversation = await self.conversation()
        author = self.subscribe(conversation, CUSTOMER)
        nurse = self.subscribe(conversation, EMPLOYEE)
        self.subscribe(conversation, EMPLOYEE)  # a second tab: still one receipt
        message = await self.service.post_message(CUSTOMER, conversation.id, "Hello")
        self.assertEqual([list(e) for e in nurse.events], [["message"], ["received"]])
        self.assertEqual(
            nurse.bodies[1],
            compact(
                {"received": {"userId": EMPLOYEE.user_id, "receivedAt": "2021-07-26T12:05:22Z"}}
            ),
        )
        self.assertEqual(author.bodies, nurse.bodies)
        read, received = await self.store.receipts(conversation.id)
        self.assertEqual([r.user_id for r in received], [EMPLOYEE.user_id])
        self.assertEqual(message.user_id, CUSTOMER.user_id)

    async def test_auto_received_once(self) -> None:
        """A subscriber already marked received at this time gets no second event."""
        conversation = await self.conversation()
        nurse = self.subscribe(conversation, EMPLOYEE)
        await self.service.post_message(CUSTOMER, conversation.id, "one")
        await self.service.post_message(CUSTOMER, conversation.id, "two")
        self.assertEqual([next(iter(e)) for e in nurse.events], ["message", "received", "message"])

    async def test_idempotent_replay(self) -> None:
        """A retry with the same key returns the first message and publishes nothing."""
        conversation = await self.conversation()
        nurse = self.subscribe(conversation, EMPLOYEE)
        first = await self.service.post_message(CUSTOMER, conversation.id, "Hello", "key-1")
        self.clock.advance(5)
        again = await self.service.post_message(CUSTOMER, conversation.id, "Hello", "key-1")
        self.assertEqual(again.id, first.id)
        self.assertEqual(again.created, first.created)
        self.assertEqual(len(nurse.events), 2)
        messages = await self.store.list_messages(conversation.id, None, False, None)
        self.assertEqual([m.id for m in messages], [first.id])

    async def test_other_key(self) -> None:
        """A different key is a different message."""
        conversation = await self.conversation()
        first = await self.service.post_message(CUSTOMER, conversation.id, "Hello", "key-1")
        second = await self.service.post_message(CUSTOMER, conversation.id, "Hello", "key-2")
        self.assertNotEqual(first.id, second.id)

    async def test_invalid_text(self) -> None:
        """Non-strings, empty, blank, over-long and invalid Unicode texts are refused."""
        conversation = await self.conversation()
        nurse = self.subscribe(conversation, EMPLOYEE)
        cases: list[tuple[object, str]] = [
            (None, "message: must be a string"),
            (42, "message: must be a string"),
            (["Hello"], "message: must be a string"),
            ("", "message: must not be empty"),
            (" \t\n\u3000", "message: must not be blank"),
            ("x" * 4001, "message: longer than 4000 characters"),
            ("\ud800", "message: not valid Unicode (lone surrogate)"),
            ("a\x00b", "message: must not contain NUL characters"),
        ]
        for text, expected in cases:
            d = self.service.post_message(CUSTOMER, conversation.id, text)
            self.assertEqual(await self.fails(d, BadRequest), expected)
        self.assertEqual(nurse.bodies, [])

    async def test_longest(self) -> None:
        """A message of exactly 4,000 characters (not bytes) is accepted."""
        conversation = await self.conversation()
        message = await self.service.post_message(CUSTOMER, conversation.id, "é" * 4000)
        self.assertEqual(len(message.message), 4000)

    async def test_configurable_length(self) -> None:
        """The length limit is configurable."""
        self.service.max_message_length = 5
        conversation = await self.conversation()
        detail = await self.fails(
            self.service.post_message(CUSTOMER, conversation.id, "123456"), BadRequest
        )
        self.assertEqual(detail, "message: longer than 5 characters")

    async def test_not_participant(self) -> None:
        """Another customer cannot post, and nothing is published."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, CUSTOMER)
        d = self.service.post_message(OTHER_CUSTOMER, conversation.id, "Hi")
        await self.fails(d, NotFound)
        self.assertEqual(recorder.bodies, [])

    async def test_employee_posts(self) -> None:
        """An employee posts to any conversation as an employee."""
        conversation = await self.conversation()
        message = await self.service.post_message(EMPLOYEE, conversation.id, "How can I help?")
        self.assertEqual((message.user_role, message.user_name), ("employee", "Nurse Joy"))

    async def test_commit_order(self) -> None:
        """Concurrent posts publish their events in commit order; the locks are dropped."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, EMPLOYEE)
        # In flight together: each looks the conversation up, then all wait for one lock.
        self.store.hold()
        posts = [self.service.post_message(CUSTOMER, conversation.id, f"m{i}") for i in range(10)]
        self.store.flush()
        self.store.release()
        await gatherResults(posts)
        stored = await self.store.list_messages(conversation.id, None, False, None)
        published = [e["message"]["id"] for e in recorder.events if "message" in e]
        self.assertEqual(published, [m.id for m in sorted(stored, key=lambda m: m.seq)])
        self.assertEqual(self.service._locks, {})


class SerialisedTests(ServiceTestCase):
    """
    L{ConversationService._serialised}: one turn at a time in each conversation, first
    come first served, as under a lock; the queue goes when the last turn has run.
    """

    def work(self, log: list[str], name: str, gate: Deferred[int]) -> Any:
        """A turn that logs its start and its end, and returns what C{gate} gives."""

        async def turn() -> int:
            log.append(f"{name} starts")
            try:
                return await gate
            finally:
                log.append(f"{name} ends")

        return turn

    async def test_in_order(self) -> None:
        """
        Turns of one conversation run one after the other, in the order asked, a failing
        one included; another conversation's turn does not wait for them.
        """
        log: list[str] = []
        gates: list[Deferred[int]] = [Deferred() for _ in range(3)]
        turns = [
            self.service._serialised("c", self.work(log, name, gate))
            for name, gate in zip("abc", gates, strict=True)
        ]
        other = self.service._serialised("d", self.work(log, "x", succeed(0)))
        self.assertEqual(log, ["a starts", "x starts", "x ends"])
        self.assertEqual(self.successResultOf(other), 0)
        gates[0].callback(1)
        self.assertEqual(log[3:], ["a ends", "b starts"])
        gates[1].errback(ValueError("b fails"))
        self.assertEqual(log[5:], ["b ends", "c starts"])
        self.assertEqual(list(self.service._locks), ["c"])
        gates[2].callback(3)
        self.assertEqual(self.successResultOf(turns[0]), 1)
        self.failureResultOf(turns[1], ValueError)
        self.assertEqual(self.successResultOf(turns[2]), 3)
        self.assertEqual(self.service._locks, {})

    async def test_cancel_waiting(self) -> None:
        """A turn cancelled while it waits never runs; the ones after it do."""
        log: list[str] = []
        gate: Deferred[int] = Deferred()
        first = self.service._serialised("c", self.work(log, "a", gate))
        second = self.service._serialised("c", self.work(log, "b", succeed(2)))
        third = self.service._serialised("c", self.work(log, "c", succeed(3)))
        second.cancel()
        self.failureResultOf(second, CancelledError)
        gate.callback(1)
        self.assertEqual(log, ["a starts", "a ends", "c starts", "c ends"])
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(self.successResultOf(third), 3)
        self.assertEqual(self.service._locks, {})

    async def test_cancel_running(self) -> None:
        """
        Cancelling a turn that runs cancels its work, the first one's as a later one's
        (which waited first); the next turn then runs.
        """
        log: list[str] = []
        gates: list[Deferred[int]] = [Deferred() for _ in range(2)]
        first = self.service._serialised("c", self.work(log, "a", gates[0]))
        second = self.service._serialised("c", self.work(log, "b", gates[1]))
        third = self.service._serialised("c", self.work(log, "c", succeed(3)))
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(log, ["a starts", "a ends", "b starts"])
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(log[3:], ["b ends", "c starts", "c ends"])
        self.assertEqual(self.successResultOf(third), 3)
        self.assertEqual(self.service._locks, {})


class OneTransactionTests(ServiceTestCase):
    """
    A post is one write transaction of the store: the participant check, the message and
    the receipts together.
    """

    async def test_one_write_transaction(self) -> None:
        """
        A post with a subscribed nurse runs one write transaction and no read (the feed
        takes the events from the store as it commits them); the nurse's receipt and both
        events are committed by it.
        """
        conversation = await self.conversation()
        nurse = self.subscribe(conversation, EMPLOYEE)
        counted = Transactions(self.store)
        await self.service.post_message(CUSTOMER, conversation.id, "Hello", "key")
        self.assertEqual(counted.writes, 1)
        self.assertEqual(len(counted.runs), 1)
        self.assertEqual([list(e) for e in nurse.events], [["message"], ["received"]])

    async def test_not_participant_writes_nothing(self) -> None:
        """
        Another customer's post is refused as not found by the same single transaction,
        which writes nothing.
        """
        conversation = await self.conversation()
        counted = Transactions(self.store)
        await self.fails(
            self.service.post_message(OTHER_CUSTOMER, conversation.id, "Hi"), NotFound
        )
        self.assertEqual(len(counted.runs), 1)
        events = list(await self.store.events_after(0, 10))
        self.assertEqual([e.kind for e in events], ["conversationCreated"])

    async def test_presence_in_store(self) -> None:
        """
        With presence kept in the store (several processes), the message's transaction
        reads who is subscribed itself: one transaction, the nurse's receipt in it.
        """
        await self.store.register_node("node-a", 0)
        presence = ClusterPresence(self.store, InProcessHub(), "node-a")
        service = ConversationService(
            self.store, self.hub, self.clock, presence, self.feed, presence_in_store=True
        )
        conversation = await self.conversation()
        await presence.session_opened("s-1", EMPLOYEE.user_id, True)
        await presence.joined("s-1", conversation.id)
        counted = Transactions(self.store)
        await service.post_message(CUSTOMER, conversation.id, "Hello")
        self.assertEqual(counted.writes, 1)
        _, received = await self.store.receipts(conversation.id)
        self.assertEqual([r.user_id for r in received], [EMPLOYEE.user_id])
        events = list(await self.store.events_after(0, 10))
        self.assertEqual(
            [e.kind for e in events], ["conversationCreated", "message", "received"]
        )


class GroupCommitTests(InlineTestCase):
    """
    Concurrent posts share one transaction, one catch-up of the feed and one wake of the
    other processes.
    """

    async def test_one_wake_per_group(self) -> None:
        """
        Twenty posts in ten conversations while the store is busy: a few transactions,
        and one wake on the bus for the other processes; every post gets its message.
        """
        clock = Clock()
        clock.advance(NOW)
        store = MemoryStore(clock)
        await store.start()
        self.addCleanup(store.stop)
        bus = Bus(clock)
        hub = ClusterHub(InProcessHub("a"), bus.join("a"), clock)
        feed = EventFeed(store, hub, clock, poll_interval=None, tell_others=hub.wake)
        feed.start(0)
        service = ConversationService(store, hub, clock, InProcessPresence(InProcessHub()), feed)
        customers = [User(new_id(), f"c{i}", "customer") for i in range(10)]
        conversations = [await service.create(c) for c in customers]
        counted = Transactions(store)
        store.hold()
        posts = [
            service.post_message(customers[i % 10], conversations[i % 10].id, f"m{i}")
            for i in range(20)
        ]
        store.release()
        clock.advance(0)
        texts = [(await post).message for post in posts]
        self.assertEqual(texts, [f"m{i}" for i in range(20)])
        # The first ten (one per conversation) in a group behind the first, the second
        # ten after them (each conversation's posts are serialised by the service).
        self.assertLessEqual(counted.writes, 3)
        self.assertEqual(bus.batches, [("a", [{"kind": "wake"}])])
        # Ten conversationCreated, then the twenty messages (the clock stood still, so no
        # conversationUpdated).
        self.assertEqual(feed.position, 30)


class ReceiptTests(ServiceTestCase):
    """
    L{ConversationService.mark_read} and L{ConversationService.mark_received} move forward
    only and publish only on change.
    """

    async def test_read(self) -> None:
        """Marking read publishes the seed's read event, once per change."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, CUSTOMER)
        self.clock.advance(72.713856)
        self.assertTrue(await self.service.mark_read(EMPLOYEE, conversation.id))
        self.assertFalse(await self.service.mark_read(EMPLOYEE, conversation.id))
        self.assertEqual(
            recorder.bodies,
            [
                compact(
                    {"read": {"userId": EMPLOYEE.user_id, "readAt": "2021-07-26T12:06:34.713856Z"}}
                )
            ],
        )
        self.clock.advance(1)
        self.assertTrue(await self.service.mark_read(EMPLOYEE, conversation.id))
        self.assertEqual(len(recorder.bodies), 2)

    async def test_received(self) -> None:
        """Marking received publishes the seed's received event, once per change."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, EMPLOYEE)
        self.clock.advance(0.935376)
        self.assertTrue(await self.service.mark_received(CUSTOMER, conversation.id))
        self.assertFalse(await self.service.mark_received(CUSTOMER, conversation.id))
        self.assertEqual(
            recorder.bodies,
            [
                compact(
                    {
                        "received": {
                            "userId": CUSTOMER.user_id,
                            "receivedAt": "2021-07-26T12:05:22.935376Z",
                        }
                    }
                )
            ],
        )

    async def test_never_backwards(self) -> None:
        """A clock that goes back moves no receipt back and publishes nothing."""
        conversation = await self.conversation()
        await self.service.mark_read(CUSTOMER, conversation.id)
        recorder = self.subscribe(conversation, CUSTOMER)
        self.clock.rightNow -= 10
        self.assertFalse(await self.service.mark_read(CUSTOMER, conversation.id))
        read, _ = await self.store.receipts(conversation.id)
        self.assertEqual([format_time(r.at) for r in read], ["2021-07-26T12:05:22Z"])
        self.assertEqual(recorder.bodies, [])

    async def test_not_participant(self) -> None:
        """Another customer cannot mark someone else's conversation."""
        conversation = await self.conversation()
        await self.fails(self.service.mark_read(OTHER_CUSTOMER, conversation.id), NotFound)
        await self.fails(self.service.mark_received(OTHER_CUSTOMER, conversation.id), NotFound)


class TypingTests(ServiceTestCase):
    """
    L{ConversationService.typing} publishes typing events to participants' conversations.
    """

    async def test_typing(self) -> None:
        """Start and stop publish the seed's startTyping and stopTyping events."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, EMPLOYEE)
        await self.service.typing(CUSTOMER, conversation.id, True)
        await self.service.typing(CUSTOMER, conversation.id, False)
        self.assertEqual(
            recorder.bodies,
            [
                compact({"startTyping": {"userId": CUSTOMER.user_id}}),
                compact({"stopTyping": {"userId": CUSTOMER.user_id}}),
            ],
        )

    async def test_not_participant(self) -> None:
        """A non-participant's typing is refused and not published."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, CUSTOMER)
        await self.fails(self.service.typing(OTHER_CUSTOMER, conversation.id, True), NotFound)
        await self.fails(self.service.typing(CUSTOMER, "nope", True), NotFound)
        self.assertEqual(recorder.bodies, [])

    async def test_check_participant(self) -> None:
        """check_participant gives the conversation to participants only."""
        conversation = await self.conversation()
        self.assertEqual(
            await self.service.check_participant(EMPLOYEE, conversation.id), conversation
        )
        self.assertEqual(
            await self.service.check_participant(CUSTOMER, conversation.id), conversation
        )
        await self.fails(self.service.check_participant(OTHER_CUSTOMER, conversation.id), NotFound)


class ListTests(ServiceTestCase):
    """
    L{ConversationService.list_conversations} pages through what the user may see.
    """

    async def make(self) -> list[Conversation]:
        made = []
        for user in [CUSTOMER, OTHER_CUSTOMER, CUSTOMER, OTHER_CUSTOMER, CUSTOMER]:
            self.clock.advance(1)
            made.append(await self.conversation(user))
        return made

    async def test_customer_sees_own(self) -> None:
        """A customer lists only their own conversations, as summaries."""
        made = await self.make()
        page = await self.service.list_conversations(CUSTOMER)
        own = [c for c in made if c.customer_id == CUSTOMER.user_id]
        self.assertEqual((page.conversations, page.next), (own, None))
        self.assertEqual(
            dict(page.overviews), {c.id: Overview(unread=0, last_message=None) for c in own}
        )

    async def test_employee_sees_all(self) -> None:
        """An employee lists every conversation."""
        made = await self.make()
        page = await self.service.list_conversations(EMPLOYEE, order="-created")
        self.assertEqual([c.id for c in page.conversations], [c.id for c in reversed(made)])

    async def test_paging(self) -> None:
        """Pages chain through next cursors until next is None."""
        made = await self.make()
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await self.service.list_conversations(EMPLOYEE, limit=2, cursor=cursor)
            seen += [c.id for c in page.conversations]
            pages += 1
            cursor = page.next
            if cursor is None:
                break
        self.assertEqual(seen, [c.id for c in made])
        self.assertEqual(pages, 3)

    async def test_exact_page(self) -> None:
        """When the last page is full, next is None rather than pointing at nothing."""
        await self.make()
        page = await self.service.list_conversations(EMPLOYEE, limit=5)
        self.assertEqual((len(page.conversations), page.next), (5, None))

    async def test_query(self) -> None:
        """The RSQL filter over created and customerId applies."""
        made = await self.make()
        page = await self.service.list_conversations(
            EMPLOYEE, query=f"customerId=={OTHER_CUSTOMER.user_id};created=gt=2021-07-26T12:05:24Z"
        )
        self.assertEqual([c.id for c in page.conversations], [made[3].id])

    async def test_bad_parameters(self) -> None:
        """Bad query, order, limit and cursor are BadRequests."""
        cases: list[tuple[dict[str, Any], str]] = [
            (
                {"query": "userId==x"},
                "query: at position 0: unknown field 'userId'; allowed: created, customerId,"
                " status, assigneeId, lastActivity",
            ),
            (
                {"order": "id"},
                "order: must be one of 'created', '-created', 'lastActivity', '-lastActivity'",
            ),
            ({"limit": 0}, "limit: must be an integer from 1 to 1000"),
            (
                {"cursor": "garbage!"},
                "cursor: malformed; use the 'next' value of the previous page",
            ),
        ]
        for kwargs, expected in cases:
            detail = await self.fails(
                self.service.list_conversations(EMPLOYEE, **kwargs), BadRequest
            )
            self.assertEqual(detail, expected)


class DurableEventTests(ServiceTestCase):
    """
    Durable events are committed with the change and reach the hub through the feed, with
    their stream offsets; typing events go straight to the hub.
    """

    async def test_offsets(self) -> None:
        """Message, auto-received, read: stored and published in order with offsets 1..3."""
        conversation = await self.conversation()
        author = self.subscribe(conversation, CUSTOMER)
        self.subscribe(conversation, EMPLOYEE)
        await self.service.post_message(CUSTOMER, conversation.id, "Hello")
        await self.service.mark_read(EMPLOYEE, conversation.id)
        await self.service.typing(EMPLOYEE, conversation.id, True)
        self.assertEqual(
            [list(e) for e in author.events], [["message"], ["received"], ["read"], ["startTyping"]]
        )
        self.assertEqual(author.offsets, [1, 2, 3, None])
        stored = await self.store.conversation_events(conversation.id, 1, 10)
        self.assertEqual([e.body for e in stored], author.bodies[:3])

    async def test_one_read_per_commit_at_most(self) -> None:
        """
        Each commit tells the feed once; a receipt that does not move tells nothing; and
        the feed reads nothing back (the store handed it the events).
        """
        conversation = await self.conversation()
        told: list[None] = []
        committed = self.feed.committed

        def counted() -> None:
            told.append(None)
            committed()

        self.feed.committed = counted  # type: ignore[method-assign]
        self.assertTrue(await self.service.mark_read(CUSTOMER, conversation.id))
        self.assertEqual(len(told), 1)
        self.assertFalse(await self.service.mark_read(CUSTOMER, conversation.id))
        self.assertEqual(len(told), 1)
        self.assertEqual(self.feed.reads, 0)

    async def test_broken_feed(self) -> None:
        """A feed that raises does not turn a committed message into an error."""
        conversation = await self.conversation()

        def broken() -> None:
            raise RuntimeError("feed broke")

        self.feed.committed = broken  # type: ignore[method-assign]
        message = await self.service.post_message(CUSTOMER, conversation.id, "Hello")
        self.assertEqual(len(await self.store.list_messages(conversation.id, None, False, None)),
                         1)
        self.assertEqual(message.message, "Hello")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_stream_start(self) -> None:
        """Replays start at an offset, a time or the first, within the newest 'most'."""
        conversation = await self.conversation()
        cid = conversation.id
        for i in range(5):
            self.clock.advance(10)
            await self.service.post_message(CUSTOMER, cid, str(i))
        first_time = int((NOW + 10) * 1_000_000)
        cases = [
            ((None, None, 100), 1),
            ((3, None, 100), 3),
            ((0, None, 100), 1),
            ((99, None, 100), 6),  # past the newest: from the next one
            ((None, first_time + 1, 100), 2),
            ((None, first_time, 100), 1),
            ((None, first_time + 10**9, 100), 6),  # after the newest: from the next one
            ((None, None, 2), 4),  # at most the newest two
            ((1, None, 2), 4),
        ]
        for (offset, since, most), expected in cases:
            start = await self.service.stream_start(cid, offset, since, most)
            self.assertEqual(start, expected, (offset, since, most))
        page = await self.service.stream_events(cid, 4, 10)
        self.assertEqual([e.offset for e in page], [4, 5])


class CursorTests(SynchronousTestCase):
    """
    Paging cursors are opaque but round-trip, and forged ones are refused.
    """

    def test_round_trip(self) -> None:
        """A cursor decodes to the created time and id it was made from."""
        conversation = Conversation(UNKNOWN_ID, 1627301122000001, CUSTOMER.user_id, "c1")
        cursor = encode_cursor(conversation)
        self.assertNotIn("=", cursor)
        self.assertEqual(decode_cursor(cursor), (1627301122000001, UNKNOWN_ID))

    def test_malformed(self) -> None:
        """Anything else is a BadRequest."""
        import base64

        for cursor in [
            "",
            "x",
            "!!!!",
            "é",
            base64.urlsafe_b64encode(b"12.nope").decode(),
            base64.urlsafe_b64encode(b"-1." + UNKNOWN_ID.encode()).decode(),
            "a" * 300,
        ]:
            self.assertRaises(BadRequest, decode_cursor, cursor)
