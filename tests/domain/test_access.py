"""
Tests for L{medichat.domain.access} and the access-log rows that
L{medichat.domain.conversations.ConversationService} records: on the real SQL store (run
inline by L{medichat.testing.MemoryStore}), on a L{Clock}.
"""

from __future__ import annotations

from attrs import evolve
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from medichat.domain.access import (
    DEFAULT_AUDIT_RETENTION,
    YEAR,
    AccessLog,
    AccessLogPruner,
    access_entry,
    decode_access_cursor,
    encode_access_cursor,
    erase_customer,
    operator_entry,
    parse_retention,
)
from medichat.domain.conversations import export_customer
from medichat.errors import BadRequest, Conflict, Forbidden, NotFound, StoreUnavailable
from medichat.model import AccessEntry, Conversation, micros
from medichat.testing import MemoryStore
from tests._inline import InlineTestCase
from tests.domain.test_conversations import (
    CUSTOMER,
    EMPLOYEE,
    NOW,
    OTHER_CUSTOMER,
    ServiceTestCase,
)

NURSE = evolve(EMPLOYEE, address="198.51.100.23")
SECRET_TEXT = "my blood pressure is 180/110"


class RecordingTests(ServiceTestCase):
    """
    Every access by an employee to conversation data leaves one row; customers' own
    actions leave none.
    """

    async def log(self) -> list[AccessEntry]:
        """The whole access log, oldest first."""
        return list(await self.store.access_log(descending=False, limit=1000))

    def expected(self, conversation: Conversation, action: str) -> AccessEntry:
        return AccessEntry(
            at=micros(self.clock.seconds()),
            employee_id=NURSE.user_id,
            employee_name="Nurse Joy",
            role="employee",
            action=action,
            conversation_id=conversation.id,
            customer_id=CUSTOMER.user_id,
            address="198.51.100.23",
        )

    async def rows(self) -> list[AccessEntry]:
        return [evolve(e, seq=0) for e in await self.log()]

    async def test_view(self) -> None:
        """Getting a conversation records a view, with who, whose and from where."""
        conversation = await self.conversation()
        await self.service.get(NURSE, conversation.id)
        self.assertEqual(await self.rows(), [self.expected(conversation, "view")])

    async def test_list(self) -> None:
        """A list records one row per conversation on the page, and none for others."""
        for _ in range(3):
            await self.conversation()
        page = await self.service.list_conversations(NURSE, limit=2)
        self.assertEqual(len(page.conversations), 2)
        self.assertEqual(
            await self.rows(), [self.expected(c, "list") for c in page.conversations]
        )
        await self.service.list_conversations(NURSE, query="customerId==nobody")
        self.assertEqual(len(await self.log()), 2)

    async def test_subscribe(self) -> None:
        """A subscription check records a subscribe; a refused one records nothing."""
        conversation = await self.conversation()
        self.assertEqual(await self.service.subscribe(NURSE, conversation.id), conversation)
        self.assertEqual(await self.rows(), [self.expected(conversation, "subscribe")])
        await self.fails(self.service.subscribe(NURSE, "not-a-uuid"), NotFound)
        self.assertEqual(len(await self.log()), 1)

    async def test_message(self) -> None:
        """A message records a message access (and its replay another); never the text."""
        conversation = await self.conversation()
        await self.service.post_message(NURSE, conversation.id, SECRET_TEXT, "key")
        await self.service.post_message(NURSE, conversation.id, SECRET_TEXT, "key")
        self.assertEqual(
            await self.rows(), [self.expected(conversation, "message")] * 2
        )
        for row in await self.log():
            self.assertNotIn(SECRET_TEXT, repr(row))

    async def test_receipts(self) -> None:
        """Marking read and received records read and received, moved or not."""
        conversation = await self.conversation()
        await self.service.mark_read(NURSE, conversation.id)
        await self.service.mark_read(NURSE, conversation.id)
        await self.service.mark_received(NURSE, conversation.id)
        self.assertEqual(
            await self.rows(),
            [
                self.expected(conversation, "read"),
                self.expected(conversation, "read"),
                self.expected(conversation, "received"),
            ],
        )

    async def test_triage(self) -> None:
        """
        Claim, release, resolve and reopen each record their action; a claim refused
        because another nurse has the conversation records one too (it was looked at),
        and a customer's refused attempt records nothing.
        """
        conversation = await self.conversation()
        await self.service.claim(NURSE, conversation.id)
        other = evolve(NURSE, user_id="nurse-2", user_name="Olga")
        await self.fails(self.service.claim(other, conversation.id), Conflict)
        await self.service.release(NURSE, conversation.id)
        await self.service.set_status(NURSE, conversation.id, "resolved")
        await self.service.set_status(NURSE, conversation.id, "open")
        await self.fails(self.service.set_status(CUSTOMER, conversation.id, "resolved"),
                         Forbidden)
        olga = evolve(self.expected(conversation, "claim"), employee_id="nurse-2",
                      employee_name="Olga")
        self.assertEqual(
            await self.rows(),
            [
                self.expected(conversation, "claim"),
                olga,
                self.expected(conversation, "release"),
                self.expected(conversation, "resolve"),
                self.expected(conversation, "reopen"),
            ],
        )

    async def test_customers_leave_no_rows(self) -> None:
        """A customer's own actions on their own data are not recorded."""
        customer = evolve(CUSTOMER, address="203.0.113.5")
        conversation = await self.conversation(customer)
        await self.service.get(customer, conversation.id)
        await self.service.list_conversations(customer)
        await self.service.subscribe(customer, conversation.id)
        await self.service.post_message(customer, conversation.id, "Hello")
        await self.service.mark_read(customer, conversation.id)
        await self.service.mark_received(customer, conversation.id)
        await self.service.record_access(customer, [conversation], "claim")
        self.assertEqual(await self.log(), [])

    async def test_auto_received_leaves_no_row(self) -> None:
        """
        A message marked received for a subscribed employee is covered by their
        subscribe row: the server's courtesy records nothing more.
        """
        conversation = await self.conversation()
        self.subscribe(conversation, EMPLOYEE)
        await self.service.post_message(CUSTOMER, conversation.id, "Hello")
        read, received = await self.store.receipts(conversation.id)
        self.assertEqual([r.user_id for r in received], [EMPLOYEE.user_id])
        self.assertEqual(await self.log(), [])

    async def test_record_access(self) -> None:
        """record_access records any action, once per conversation (for claim and the like)."""
        first = await self.conversation()
        second = await self.conversation(OTHER_CUSTOMER)
        await self.service.record_access(NURSE, [first, second], "claim")
        rows = await self.rows()
        self.assertEqual([r.action for r in rows], ["claim", "claim"])
        self.assertEqual(
            [r.customer_id for r in rows], [CUSTOMER.user_id, OTHER_CUSTOMER.user_id]
        )

    async def test_no_record_no_data(self) -> None:
        """When the access cannot be recorded, the list is refused rather than handed out."""
        await self.conversation()
        self.patch(
            self.store, "record_access", lambda entries: fail(StoreUnavailable("down"))
        )
        d = self.service.list_conversations(NURSE)
        try:
            await d
        except StoreUnavailable:
            pass
        else:
            self.fail("the list was handed out without its access record")

    def test_access_entry(self) -> None:
        """access_entry is None for a customer, and never carries message text."""
        conversation = Conversation("c", 1, CUSTOMER.user_id, "c1")
        self.assertIsNone(access_entry(CUSTOMER, conversation, "view", 5))
        entry = access_entry(NURSE, conversation, "view", 5)
        assert entry is not None
        self.assertEqual(
            (entry.at, entry.employee_id, entry.action, entry.customer_id, entry.address),
            (5, NURSE.user_id, "view", CUSTOMER.user_id, "198.51.100.23"),
        )


class CustomerLogTests(ServiceTestCase):
    """
    L{AccessLog.page}: a customer's own log, newest first, paged; employees refused.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.access_log = AccessLog(self.store)

    async def test_newest_first_and_paged(self) -> None:
        """Pages hold the customer's rows newest first, and end with next None."""
        mine = await self.conversation()
        theirs = await self.conversation(OTHER_CUSTOMER)
        for _ in range(5):
            self.clock.advance(1)
            await self.service.get(NURSE, mine.id)
            await self.service.get(NURSE, theirs.id)
        first = await self.access_log.page(CUSTOMER, limit=3)
        self.assertEqual(len(first.entries), 3)
        assert first.next is not None
        second = await self.access_log.page(CUSTOMER, limit=3, cursor=first.next)
        self.assertEqual(len(second.entries), 2)
        self.assertIsNone(second.next)
        entries = [*first.entries, *second.entries]
        self.assertEqual({e.conversation_id for e in entries}, {mine.id})
        times = [e.at for e in entries]
        self.assertEqual(times, sorted(times, reverse=True))
        everything = await self.access_log.page(CUSTOMER)
        self.assertEqual(list(everything.entries), entries)
        self.assertIsNone(everything.next)

    async def test_employees_refused(self) -> None:
        """Employees have no access log of their own."""
        await self.fails(self.access_log.page(NURSE), Forbidden)

    async def test_bad_limit_and_cursor(self) -> None:
        """A bad limit or cursor is a BadRequest saying which."""
        for limit in (0, 1001, True):
            detail = await self.fails(self.access_log.page(CUSTOMER, limit=limit), BadRequest)
            self.assertIn("limit", detail)
        for cursor in ("", "!!!", "bm9wZQ", "MTIz", "YS5i", "x" * 101):
            detail = await self.fails(self.access_log.page(CUSTOMER, cursor=cursor), BadRequest)
            self.assertIn("cursor", detail)

    def test_cursor_round_trip(self) -> None:
        """A cursor decodes to the (at, seq) of the row it was made from."""
        entry = AccessEntry(1627301122000001, "e", "E", "employee", "view", "c", "u", None, 42)
        self.assertEqual(decode_access_cursor(encode_access_cursor(entry)),
                         (1627301122000001, 42))


class RetentionTests(SynchronousTestCase):
    """
    L{parse_retention}: durations of at least two years.
    """

    def test_accepted(self) -> None:
        """Seconds or a unit; two years is the least."""
        self.assertEqual(parse_retention("5y"), 5 * YEAR)
        self.assertEqual(parse_retention("1827d"), 1827 * 86400)
        self.assertEqual(parse_retention(str(int(2 * YEAR))), int(2 * YEAR))
        self.assertEqual(parse_retention(" 2Y "), 2 * YEAR)
        self.assertEqual(DEFAULT_AUDIT_RETENTION, 5 * YEAR)

    def test_refused(self) -> None:
        """Less than two years, or no duration at all, is a ValueError saying why."""
        for text in ("1y", "730d", "3600", "23m"):
            self.assertIn("less than 2 years", str(self.assertRaises(ValueError,
                                                                     parse_retention, text)))
        for text in ("", "five years", "-5y", "5w", "5.5y", "1" * 13):
            self.assertIn("not a duration",
                          str(self.assertRaises(ValueError, parse_retention, text)))


class PrunerTests(InlineTestCase):
    """
    L{AccessLogPruner} deletes rows past the retention at start and then hourly.
    """

    async def test_prunes_on_the_clock(self) -> None:
        """Rows older than the retention go at start; others as they age, hourly."""
        clock = Clock()
        clock.advance(NOW)
        store = MemoryStore(clock)
        await store.start()
        self.addCleanup(store.stop)
        retention = 2 * YEAR
        now = micros(NOW)

        def row(age: float) -> AccessEntry:
            return AccessEntry(now - micros(age), "e", "E", "employee", "view", "c", "u", None)

        await store.record_access([row(retention + 10), row(retention - 1800), row(60)])
        pruner = AccessLogPruner(store, clock, retention)
        await pruner.start()
        self.addCleanup(pruner.stop)
        ages = [now - e.at for e in await store.access_log(limit=10)]
        self.assertEqual(ages, [micros(60), micros(retention - 1800)])
        clock.advance(3599)
        self.assertEqual(len(await store.access_log(limit=10)), 2)
        clock.advance(1)
        self.assertEqual(len(await store.access_log(limit=10)), 1)


class ExportEraseTests(ServiceTestCase):
    """
    export_customer and erase_customer, as medichat-admin runs them.
    """

    async def test_export(self) -> None:
        """Every conversation with messages and receipts, recorded as export rows."""
        first = await self.conversation()
        self.clock.advance(1)
        second = await self.conversation()
        await self.conversation(OTHER_CUSTOMER)
        await self.service.post_message(CUSTOMER, first.id, "Hello")
        await self.service.post_message(NURSE, first.id, "Hi, how can I help?")
        await self.service.mark_read(CUSTOMER, first.id)
        actor = operator_entry("privacy", "export", micros(NOW))
        exported = await export_customer(self.store, CUSTOMER.user_id, actor)
        self.assertEqual([d.conversation.id for d in exported], [first.id, second.id])
        self.assertEqual([m.message for m in exported[0].messages],
                         ["Hello", "Hi, how can I help?"])
        self.assertEqual([r.user_id for r in exported[0].read], [CUSTOMER.user_id])
        rows = [
            r for r in await self.store.access_log(descending=False, limit=100)
            if r.role == "operator"
        ]
        self.assertEqual(
            [(r.action, r.role, r.employee_id, r.conversation_id, r.customer_id) for r in rows],
            [("export", "operator", "operator:privacy", c.id, CUSTOMER.user_id)
             for c in (first, second)],
        )

    async def test_unknown_customer(self) -> None:
        """A customer without conversations is unknown to export and erase alike."""
        actor = operator_entry("privacy", "export", micros(NOW))
        exporting = Deferred.fromCoroutine(export_customer(self.store, "nobody", actor))
        await self.fails(exporting, NotFound)
        erasing = Deferred.fromCoroutine(erase_customer(self.store, "nobody", actor))
        await self.fails(erasing, NotFound)
        self.assertEqual(list(await self.store.access_log(limit=10)), [])

    async def test_erase(self) -> None:
        """Erasure removes the conversations and keeps (and adds to) the access log."""
        conversation = await self.conversation()
        await self.service.get(NURSE, conversation.id)
        actor = operator_entry("privacy", "erase", micros(NOW))
        self.assertEqual(
            list(await erase_customer(self.store, CUSTOMER.user_id, actor)), [conversation.id]
        )
        self.assertIsNone(await self.store.get_conversation(conversation.id))
        rows = await self.store.access_log(descending=False, limit=10)
        self.assertEqual([r.action for r in rows], ["view", "erase"])

