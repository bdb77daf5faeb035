"""
Tests for triage in L{medichat.domain.conversations.ConversationService}: resolve and
reopen, claim and release, the list's unread counts, order and filters, and the employees'
feed on C{/v1/topic/conversations}, on the real SQL store (inline) and hub.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from medichat.domain.conversations import ConversationService
from medichat.errors import BadRequest, Conflict, Forbidden, NotFound
from medichat.model import Conversation, Status, User, format_time
from medichat.pubsub.topics import CONVERSATIONS_TOPIC
from tests.domain.test_conversations import (
    CUSTOMER,
    EMPLOYEE,
    NOW,
    OTHER_CUSTOMER,
    UNKNOWN_ID,
    Recorder,
    ServiceTestCase,
)

OTHER_EMPLOYEE = User("9a1b7c55-2f1e-4a39-9d7c-5a0d4f2c1e77", "Nurse Ratched", "employee")
AT = format_time(int(NOW * 1_000_000))


class TriageTestCase(ServiceTestCase):
    """A service test with a subscriber to the employees' feed."""

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.dashboard = Recorder(EMPLOYEE)
        self.hub.subscribe(CONVERSATIONS_TOPIC, self.dashboard)


class StatusTests(TriageTestCase):
    """
    L{ConversationService.set_status}: employees resolve and reopen; customers may not.
    """

    async def test_resolve_and_reopen(self) -> None:
        """Resolve, then reopen: each announced once on the feed; repeating is silent."""
        conversation = await self.conversation()
        resolved = await self.service.set_status(EMPLOYEE, conversation.id, "resolved")
        self.assertEqual(resolved.status, "resolved")
        await self.service.set_status(EMPLOYEE, conversation.id, "resolved")
        reopened = await self.service.set_status(EMPLOYEE, conversation.id, "open")
        self.assertEqual(reopened.status, "open")
        self.assertEqual(
            [e.get("conversationUpdated", {}).get("status") for e in self.dashboard.events],
            [None, "resolved", "open"],
        )
        self.assertEqual(self.dashboard.offsets, [None, None, None])

    async def test_changes_logged(self) -> None:
        """Each change is logged with its employee and action; a non-change is not."""
        conversation = await self.conversation()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.service.set_status(EMPLOYEE, conversation.id, "resolved")
        await self.service.set_status(EMPLOYEE, conversation.id, "resolved")
        await self.service.claim(EMPLOYEE, conversation.id)
        await self.service.release(EMPLOYEE, conversation.id)
        await self.service.set_status(EMPLOYEE, conversation.id, "open")
        self.assertEqual(
            [(e["employee"], e["action"], e["conversation"]) for e in logged
             if "action" in e],
            [(EMPLOYEE.user_id, action, conversation.id)
             for action in ("resolve", "claim", "release", "reopen")],
        )

    async def test_customer_forbidden(self) -> None:
        """A customer cannot resolve or reopen, not even their own conversation."""
        conversation = await self.conversation()
        statuses: tuple[Status, ...] = ("resolved", "open")
        for status in statuses:
            detail = await self.fails(
                self.service.set_status(CUSTOMER, conversation.id, status), Forbidden
            )
            self.assertEqual(detail, "only employees triage conversations")

    async def test_unknown(self) -> None:
        """An unknown or malformed id is NotFound."""
        for cid in (UNKNOWN_ID, "not-a-uuid"):
            await self.fails(self.service.set_status(EMPLOYEE, cid, "resolved"), NotFound)

    async def test_customer_message_reopens(self) -> None:
        """The customer writing to a resolved conversation opens it again, on the feed too."""
        conversation = await self.conversation()
        await self.service.set_status(EMPLOYEE, conversation.id, "resolved")
        self.clock.advance(1)
        await self.service.post_message(EMPLOYEE, conversation.id, "Anything else?")
        stored = await self.store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual(stored.status, "resolved")
        self.clock.advance(1)
        await self.service.post_message(CUSTOMER, conversation.id, "Yes, one more thing")
        stored = await self.store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual(stored.status, "open")
        self.assertEqual(
            self.dashboard.events[-1],
            {
                "conversationUpdated": {
                    "id": conversation.id,
                    "status": "open",
                    "assigneeId": None,
                    "assigneeName": None,
                    "lastActivity": format_time(int((NOW + 2) * 1_000_000)),
                }
            },
        )


class AssignmentTests(TriageTestCase):
    """
    L{ConversationService.claim} and L{ConversationService.release}.
    """

    async def test_claim(self) -> None:
        """An employee claims a free conversation; claiming again is fine and silent."""
        conversation = await self.conversation()
        claimed = await self.service.claim(EMPLOYEE, conversation.id)
        self.assertEqual((claimed.assignee_id, claimed.assignee_name),
                         (EMPLOYEE.user_id, EMPLOYEE.user_name))
        again = await self.service.claim(EMPLOYEE, conversation.id)
        self.assertEqual(again, claimed)
        self.assertEqual(
            [e.get("conversationUpdated", {}).get("assigneeName") for e in self.dashboard.events],
            [None, "Nurse Joy"],
        )

    async def test_claim_taken(self) -> None:
        """Another employee's claim is a Conflict naming the assignee; nothing changes."""
        conversation = await self.conversation()
        await self.service.claim(EMPLOYEE, conversation.id)
        try:
            await self.service.claim(OTHER_EMPLOYEE, conversation.id)
        except Conflict as e:
            self.assertEqual(
                e.detail, f"conversation is assigned to Nurse Joy ({EMPLOYEE.user_id})"
            )
            self.assertEqual(
                e.extensions,
                (("assigneeId", EMPLOYEE.user_id), ("assigneeName", "Nurse Joy")),
            )
        else:
            self.fail("no Conflict")
        stored = await self.store.get_conversation(conversation.id)
        assert stored is not None
        self.assertEqual(stored.assignee_id, EMPLOYEE.user_id)
        self.assertEqual(len(self.dashboard.events), 2)

    async def test_concurrent_claims(self) -> None:
        """Of ten claims made at once by ten employees exactly one wins; nine conflict."""
        conversation = await self.conversation()
        self.store.hold()
        nurses = [User(f"nurse-{i}", f"Nurse {i}", "employee") for i in range(10)]
        outcomes: list[Any] = []
        for nurse in nurses:
            self.service.claim(nurse, conversation.id).addBoth(outcomes.append)
        self.store.release()
        won = [o for o in outcomes if isinstance(o, Conversation)]
        lost = [o for o in outcomes if isinstance(o, Failure) and o.check(Conflict)]
        self.assertEqual((len(won), len(lost)), (1, 9))
        winner = won[0].assignee_id
        self.assertEqual({dict(f.value.extensions)["assigneeId"] for f in lost}, {winner})

    async def test_reassign_refused_then_allowed(self) -> None:
        """
        Without allow_reassign a claim of someone else's conversation conflicts; with it
        the claim takes it over, and that is logged.
        """
        conversation = await self.conversation()
        await self.service.claim(EMPLOYEE, conversation.id)
        await self.fails(self.service.claim(OTHER_EMPLOYEE, conversation.id), Conflict)
        lenient = ConversationService(
            self.store, self.hub, self.clock, self.presence, self.feed, allow_reassign=True
        )
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        taken = await lenient.claim(OTHER_EMPLOYEE, conversation.id)
        self.assertEqual(taken.assignee_id, OTHER_EMPLOYEE.user_id)
        takeovers = [e for e in logged if "took conversation" in e.get("log_format", "")]
        self.assertEqual(len(takeovers), 1)
        self.assertEqual(
            (takeovers[0]["employee"], takeovers[0]["previous"]),
            (OTHER_EMPLOYEE.user_id, EMPLOYEE.user_id),
        )
        self.assertEqual(self.dashboard.events[-1]["conversationUpdated"]["assigneeName"],
                         "Nurse Ratched")

    async def test_release(self) -> None:
        """Only the assignee releases; anyone else, or a free conversation, conflicts."""
        conversation = await self.conversation()
        detail = await self.fails(self.service.release(EMPLOYEE, conversation.id), Conflict)
        self.assertEqual(detail, "conversation is not assigned to anyone")
        await self.service.claim(EMPLOYEE, conversation.id)
        detail = await self.fails(self.service.release(OTHER_EMPLOYEE, conversation.id), Conflict)
        self.assertEqual(
            detail,
            f"conversation is assigned to Nurse Joy ({EMPLOYEE.user_id}); only they can "
            "release it",
        )
        released = await self.service.release(EMPLOYEE, conversation.id)
        self.assertEqual((released.assignee_id, released.assignee_name), ("", ""))
        self.assertEqual(
            self.dashboard.events[-1]["conversationUpdated"],
            {"id": conversation.id, "status": "open", "assigneeId": None,
             "assigneeName": None, "lastActivity": AT},
        )

    async def test_customers_refused(self) -> None:
        """Customers can neither claim nor release; unknown ids are NotFound."""
        conversation = await self.conversation()
        await self.fails(self.service.claim(CUSTOMER, conversation.id), Forbidden)
        await self.fails(self.service.release(CUSTOMER, conversation.id), Forbidden)
        await self.fails(self.service.claim(OTHER_CUSTOMER, conversation.id), Forbidden)
        await self.fails(self.service.claim(EMPLOYEE, UNKNOWN_ID), NotFound)
        await self.fails(self.service.release(EMPLOYEE, UNKNOWN_ID), NotFound)


class FeedTests(TriageTestCase):
    """
    The employees' feed: what it says, and in which order.
    """

    async def test_created(self) -> None:
        """A new conversation is announced with its whole summary."""
        conversation = await self.conversation()
        self.assertEqual(
            self.dashboard.bodies,
            [
                f'{{"conversationCreated":{{"id":"{conversation.id}","created":"{AT}",'
                f'"customerId":"{CUSTOMER.user_id}","customerName":"c1","status":"open",'
                f'"assigneeId":null,"assigneeName":null,"lastActivity":"{AT}"}}}}'
            ],
        )

    async def test_order(self) -> None:
        """Events arrive in commit order, across conversations, messages included."""
        one = await self.conversation()
        self.clock.advance(1)
        await self.service.post_message(CUSTOMER, one.id, "help")
        two = await self.conversation(OTHER_CUSTOMER)
        await self.service.claim(EMPLOYEE, one.id)
        await self.service.set_status(EMPLOYEE, two.id, "resolved")
        self.assertEqual(
            [(next(iter(e)), next(iter(e.values()))["id"]) for e in self.dashboard.events],
            [
                ("conversationCreated", one.id),
                ("conversationUpdated", one.id),
                ("conversationCreated", two.id),
                ("conversationUpdated", one.id),
                ("conversationUpdated", two.id),
            ],
        )

    async def test_not_on_conversation_topic(self) -> None:
        """A conversation's own subscribers never see the feed's events."""
        conversation = await self.conversation()
        recorder = self.subscribe(conversation, CUSTOMER)
        await self.service.claim(EMPLOYEE, conversation.id)
        await self.service.set_status(EMPLOYEE, conversation.id, "resolved")
        self.clock.advance(1)
        await self.service.post_message(CUSTOMER, conversation.id, "hi")
        self.assertEqual([next(iter(e)) for e in recorder.events], ["message"])


class ListTests(TriageTestCase):
    """
    The list's unread counts, newest message, order by activity and filters.
    """

    async def make(self) -> list[Conversation]:
        made = []
        for user in (CUSTOMER, CUSTOMER, OTHER_CUSTOMER):
            self.clock.advance(1)
            made.append(await self.conversation(user))
        return made

    async def test_unread_and_last_message(self) -> None:
        """Each caller's own unread count; the newest message as a Message."""
        one, two, _ = await self.make()
        self.clock.advance(1)
        await self.service.post_message(CUSTOMER, one.id, "a")
        self.clock.advance(1)
        await self.service.mark_read(EMPLOYEE, one.id)
        self.clock.advance(1)
        await self.service.post_message(CUSTOMER, one.id, "b")
        last = await self.service.post_message(EMPLOYEE, one.id, "c")
        page = await self.service.list_conversations(EMPLOYEE)
        self.assertEqual(page.overviews[one.id].unread, 1)
        self.assertEqual(page.overviews[one.id].last_message, last)
        self.assertEqual(page.overviews[two.id].unread, 0)
        page = await self.service.list_conversations(CUSTOMER)
        self.assertEqual(page.overviews[one.id].unread, 1)
        page = await self.service.list_conversations(OTHER_EMPLOYEE)
        self.assertEqual(page.overviews[one.id].unread, 3)

    async def test_order_by_activity(self) -> None:
        """-lastActivity lists the most recently active first, paged by its own cursors."""
        one, two, three = await self.make()
        self.clock.advance(1)
        await self.service.post_message(CUSTOMER, one.id, "bump")
        page = await self.service.list_conversations(EMPLOYEE, order="-lastActivity", limit=2)
        self.assertEqual([c.id for c in page.conversations], [one.id, three.id])
        assert page.next is not None
        rest = await self.service.list_conversations(
            EMPLOYEE, order="-lastActivity", limit=2, cursor=page.next
        )
        self.assertEqual([c.id for c in rest.conversations], [two.id])
        self.assertIsNone(rest.next)
        ascending = await self.service.list_conversations(EMPLOYEE, order="lastActivity")
        self.assertEqual([c.id for c in ascending.conversations], [two.id, three.id, one.id])

    async def test_cursor_of_other_order(self) -> None:
        """A cursor from a list in one order is refused by a list in the other."""
        await self.make()
        by_activity = await self.service.list_conversations(EMPLOYEE, order="-lastActivity",
                                                            limit=1)
        by_created = await self.service.list_conversations(EMPLOYEE, limit=1)
        assert by_activity.next is not None and by_created.next is not None
        for order, cursor in (("-created", by_activity.next), ("lastActivity", by_created.next)):
            detail = await self.fails(
                self.service.list_conversations(EMPLOYEE, order=order, cursor=cursor),
                BadRequest,
            )
            self.assertEqual(detail, "cursor: from a list in another order; start again without it")

    async def test_filters(self) -> None:
        """status, assigneeId==me (the caller), assigneeId==none (nobody)."""
        one, two, three = await self.make()
        await self.service.claim(EMPLOYEE, one.id)
        await self.service.claim(OTHER_EMPLOYEE, two.id)
        await self.service.set_status(EMPLOYEE, three.id, "resolved")

        async def ids(user: User, query: str) -> list[str]:
            page = await self.service.list_conversations(user, query=query)
            return [c.id for c in page.conversations]

        self.assertEqual(await ids(EMPLOYEE, "assigneeId==me"), [one.id])
        self.assertEqual(await ids(OTHER_EMPLOYEE, "assigneeId==me"), [two.id])
        self.assertEqual(await ids(EMPLOYEE, "assigneeId==none"), [three.id])
        self.assertEqual(await ids(EMPLOYEE, "assigneeId=in=(me,none)"), [one.id, three.id])
        self.assertEqual(await ids(EMPLOYEE, "status==resolved"), [three.id])
        self.assertEqual(await ids(EMPLOYEE, "status==open;assigneeId!=me"), [two.id])
        self.assertEqual(await ids(CUSTOMER, "status==open"), [one.id, two.id])

    async def test_bad_filters(self) -> None:
        """A status that does not exist, or a bad lastActivity, is a BadRequest saying so."""
        for query, expected in [
            ("status==closed", "query: at position 0: bad value for status: must be one of "
             "open, resolved"),
            ("lastActivity=ge=soon", "query: at position 0: bad value for lastActivity: "
             "not an RFC 3339 timestamp: 'soon'"),
        ]:
            detail = await self.fails(
                self.service.list_conversations(EMPLOYEE, query=query), BadRequest
            )
            self.assertEqual(detail, expected)
