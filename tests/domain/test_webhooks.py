"""
Tests for L{medichat.domain.webhooks}: the Standard Webhooks secret and signature, the
event, the retry decisions, and the dispatcher on the real SQL store (run inline by
L{medichat.testing.MemoryStore}) with a L{Clock} and a sender whose answers the test
gives; and the conversation service queuing notifications in the message's transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from medichat.domain.cluster_presence import ClusterPresence
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.domain.webhooks import (
    MAX_AGE,
    RETRY_DELAYS,
    InvalidSecret,
    WebhookDispatcher,
    decide,
    event_body,
    parse_secret,
    sign,
    signed_headers,
)
from medichat.interfaces import IPresence, IWebhookSender
from medichat.model import Conversation, OutboxEntry, User, WebhookResponse, micros
from medichat.pubsub.hub import InProcessHub
from medichat.store.scripts import Script
from medichat.testing import MemoryStore, memory_database
from tests._feed import started_feed
from tests._inline import InlineTestCase

NOW = 1_800_000_000.0
CUSTOMER = User("0be8c544-9518-4bce-8519-0eee0356989f", "c1", "customer")
NURSE = User("3d43c23b-c637-4a7a-a780-28c2c29f1194", "Nurse Joy", "employee")
DOCTOR = User("9b6f3f55-8f36-4c0e-9d42-7d3f0e1f2a10", "Dr. Who", "employee")
KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def verify(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, written from the specification: the HMAC of id.timestamp.body."""
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(part, "v1," + expected)
        for part in headers["webhook-signature"].split(" ")
    )


class SecretTests(SynchronousTestCase):
    """
    L{parse_secret} takes C{whsec_} and the base64 of 24 to 64 bytes.
    """

    def test_valid(self) -> None:
        """The key is the base64-decoded part after the prefix; white space around is fine."""
        self.assertEqual(parse_secret(SECRET + "\n"), KEY)
        self.assertEqual(parse_secret("  " + SECRET), KEY)

    def test_sizes(self) -> None:
        """24 and 64 bytes are accepted; 23 and 65 are not."""
        for size, ok in [(24, True), (64, True), (23, False), (65, False)]:
            secret = "whsec_" + base64.b64encode(b"k" * size).decode()
            if ok:
                self.assertEqual(parse_secret(secret), b"k" * size)
            else:
                error = self.assertRaises(InvalidSecret, parse_secret, secret)
                self.assertIn(f"not {size}", str(error))

    def test_no_prefix(self) -> None:
        """A bare base64 key is refused, saying what is expected."""
        error = self.assertRaises(InvalidSecret, parse_secret, base64.b64encode(KEY).decode())
        self.assertIn("whsec_", str(error))

    def test_not_base64(self) -> None:
        """Characters outside base64 are refused, without repeating the secret."""
        error = self.assertRaises(InvalidSecret, parse_secret, "whsec_not*base64!!")
        self.assertIn("not base64", str(error))
        self.assertNotIn("not*base64", str(error))

    def test_empty(self) -> None:
        """An empty file is refused."""
        self.assertRaises(InvalidSecret, parse_secret, "")
        self.assertRaises(InvalidSecret, parse_secret, "whsec_")


class SignatureTests(SynchronousTestCase):
    """
    L{sign} follows the specification's signature scheme.
    """

    def test_published_vector(self) -> None:
        """The example of the Standard Webhooks libraries' tests signs as published."""
        key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                         b'{"test": 2432232314}')
        self.assertEqual(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")

    def test_independent_computation(self) -> None:
        """The signature is v1, and base64 HMAC-SHA256 of id.timestamp.body under the key."""
        body = '{"type":"message.created","data":{"é":1}}'.encode()
        expected = base64.b64encode(
            hmac.new(KEY, b"msg_abc.1700000000." + body, hashlib.sha256).digest()
        ).decode()
        self.assertEqual(sign(KEY, "msg_abc", 1700000000, body), "v1," + expected)

    def test_headers(self) -> None:
        """The three headers: the id, the timestamp in Unix seconds, the signature."""
        headers = signed_headers(KEY, "msg_abc", 1700000000, b"{}")
        self.assertEqual(headers["webhook-id"], "msg_abc")
        self.assertEqual(headers["webhook-timestamp"], "1700000000")
        self.assertTrue(verify(KEY, headers, b"{}"))
        self.assertFalse(verify(KEY, headers, b"{ }"))
        self.assertFalse(verify(b"x" * 32, headers, b"{}"))


class EventTests(SynchronousTestCase):
    """
    L{event_body} is the thin C{message.created} event.
    """

    def test_shape(self) -> None:
        """Type, the message's time, and the four ids; compact JSON."""
        entry = OutboxEntry(1, "msg_1", "conv", "mess", "user", "customer",
                            micros(1627301122.5), 1)
        body = event_body(entry)
        self.assertEqual(
            body,
            b'{"type":"message.created","timestamp":"2021-07-26T12:05:22.500000Z",'
            b'"data":{"conversationId":"conv","messageId":"mess","recipientUserId":"user",'
            b'"recipientRole":"customer"}}',
        )


class DecideTests(SynchronousTestCase):
    """
    L{decide} turns an attempt's outcome into what happens next.
    """

    def test_success(self) -> None:
        """Any 2xx is delivered."""
        for status in (200, 201, 202, 204, 299):
            self.assertEqual(decide(1, WebhookResponse(status), "", RETRY_DELAYS, 0.5).action,
                             "delivered")

    def test_failures_retry_on_schedule(self) -> None:
        """Timeouts, errors, 3xx, 4xx, 5xx retry after the schedule's delay for the attempt."""
        for response in (None, WebhookResponse(301), WebhookResponse(404),
                         WebhookResponse(500), WebhookResponse(503)):
            for attempt, delay in enumerate(RETRY_DELAYS, 1):
                decision = decide(attempt, response, "timed out", RETRY_DELAYS, 0.5)
                self.assertEqual((decision.action, decision.delay, decision.pause),
                                 ("retry", delay, 0.0))
        self.assertEqual(decide(1, None, "timed out", RETRY_DELAYS, 0.5).reason, "timed out")
        self.assertEqual(decide(1, WebhookResponse(500), "", RETRY_DELAYS, 0.5).reason,
                         "HTTP 500")

    def test_jitter(self) -> None:
        """The delay spreads by 20 % either way."""
        self.assertAlmostEqual(decide(2, None, "", RETRY_DELAYS, 0.0).delay, 24.0)
        self.assertAlmostEqual(decide(2, None, "", RETRY_DELAYS, 0.999999).delay, 36.0, 3)

    def test_schedule_ends(self) -> None:
        """After the last retry, the notification is given up."""
        decision = decide(len(RETRY_DELAYS) + 1, WebhookResponse(500), "", RETRY_DELAYS, 0.5)
        self.assertEqual(decision.action, "failed")

    def test_gone(self) -> None:
        """410 stops, whatever the attempt."""
        for attempt in (1, 3, 99):
            self.assertEqual(decide(attempt, WebhookResponse(410), "", RETRY_DELAYS, 0.5).action,
                             "gone")

    def test_paced(self) -> None:
        """429, 502 and 504 pause all sending, for Retry-After when it is longer."""
        for status in (429, 502, 504):
            decision = decide(1, WebhookResponse(status), "", RETRY_DELAYS, 0.5)
            self.assertEqual((decision.action, decision.delay, decision.pause),
                             ("retry", 5.0, 5.0))
            decision = decide(1, WebhookResponse(status, 120.0), "", RETRY_DELAYS, 0.5)
            self.assertEqual((decision.delay, decision.pause), (120.0, 120.0))

    def test_retry_after_elsewhere(self) -> None:
        """Retry-After on a 503 moves that notification only; it is capped at an hour."""
        decision = decide(1, WebhookResponse(503, 60.0), "", RETRY_DELAYS, 0.5)
        self.assertEqual((decision.delay, decision.pause), (60.0, 0.0))
        decision = decide(1, WebhookResponse(429, 86400.0), "", RETRY_DELAYS, 0.5)
        self.assertEqual(decision.delay, 3600.0)
        # Never sooner than the schedule says.
        decision = decide(4, WebhookResponse(429, 1.0), "", RETRY_DELAYS, 0.5)
        self.assertEqual(decision.delay, 600.0)


@implementer(IWebhookSender)
class Receiver:
    """
    A sender whose answers the test gives: each request waits until L{answer} or L{fail}.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, Deferred[WebhookResponse]]] = []

    def send(self, headers: dict[str, str], body: bytes) -> Deferred[WebhookResponse]:
        d: Deferred[WebhookResponse] = Deferred()
        self.requests.append((headers, body, d))
        return d

    def close(self) -> Deferred[None]:
        return succeed(None)

    def waiting(self) -> list[tuple[dict[str, str], bytes, Deferred[WebhookResponse]]]:
        return [r for r in self.requests if not r[2].called]

    def answer(self, status: int, retry_after: float | None = None) -> None:
        """Answer the oldest request still waiting."""
        self.waiting()[0][2].callback(WebhookResponse(status, retry_after))

    def fail(self, error: Exception) -> None:
        """Fail the oldest request still waiting (no response)."""
        self.waiting()[0][2].errback(error)


def outbox(store: MemoryStore) -> list[tuple[Any, ...]]:
    """Every outbox row: (recipient, message, attempts, due, failed, last_error, coalesced)."""

    def script() -> Script[list[tuple[Any, ...]]]:
        result = yield store._dialect.statement(
            "SELECT recipient_user_id, message_id, attempts, due, failed, last_error, coalesced"
            " FROM webhook_outbox ORDER BY seq"
        )
        return [tuple(row) for row in result.rows]

    d: Deferred[list[tuple[Any, ...]]] = store._run(script())
    rows: list[list[tuple[Any, ...]]] = []
    d.addCallback(rows.append)
    return rows[0]


@implementer(IPresence)
class BrokenPresence(InProcessPresence):
    """Presence that cannot say who is subscribed."""

    def subscribed_users(self, conversation_id: str) -> Deferred[frozenset[str]]:
        raise RuntimeError("presence is down")


class WebhookTestCase(InlineTestCase):
    """
    A conversation service with webhooks on, its store, and a dispatcher sending to a
    L{Receiver}, on a L{Clock}.
    """

    coalesce = 5.0

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        database = memory_database()
        self.addCleanup(database.close)
        self.store = MemoryStore(self.clock, database=database)
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        hub = InProcessHub()
        self.presence = InProcessPresence(InProcessHub())
        self.service = ConversationService(
            self.store, hub, self.clock, self.presence, started_feed(self.store, hub, self.clock),
            webhook_coalesce=self.coalesce,
        )
        self.receiver = Receiver()
        self.samples = [0.5]
        self.dispatcher = WebhookDispatcher(
            self.store, self.receiver, self.clock, KEY, owner="me", timeout=10.0,
            sample=lambda: self.samples[0],
        )

    def logged(self, level: LogLevel) -> list[str]:
        """The text of what was logged at C{level} so far."""
        return [formatEvent(e) for e in self.log if e.get("log_level") == level]

    def start(self) -> None:
        self.dispatcher.start()
        self.addCleanup(self.dispatcher.stop)

    async def conversation(self) -> Conversation:
        conversation: Conversation = await self.service.create(CUSTOMER)
        return conversation

    def online(self, conversation: Conversation, user: User) -> None:
        key = f"session-{user.user_id}"
        self.presence.session_opened(key, user.user_id, user.is_employee)
        self.presence.joined(key, conversation.id)

    async def post(self, conversation: Conversation, user: User, text: str = "Hi") -> str:
        message = await self.service.post_message(user, conversation.id, text)
        return str(message.id)

    def event(self, index: int = -1) -> dict[str, Any]:
        headers, body, _ = self.receiver.requests[index]
        self.assertTrue(verify(KEY, headers, body))
        decoded: dict[str, Any] = json.loads(body)
        return decoded


class QueueTests(WebhookTestCase):
    """
    A message commits notifications for the conversation's users who are not subscribed.
    """

    async def test_offline_customer(self) -> None:
        """A nurse's answer to a customer who is away queues one notification for them."""
        conversation = await self.conversation()
        message = await self.post(conversation, NURSE)
        [(recipient, message_id, attempts, due, failed, _, _)] = outbox(self.store)
        self.assertEqual((recipient, message_id, attempts, failed),
                         (CUSTOMER.user_id, message, 0, None))
        self.assertEqual(due, micros(NOW + self.coalesce))

    async def test_subscribed_customer(self) -> None:
        """A customer subscribed to the conversation (anywhere) is not notified."""
        conversation = await self.conversation()
        self.online(conversation, CUSTOMER)
        await self.post(conversation, NURSE)
        self.assertEqual(outbox(self.store), [])

    async def test_author_not_notified(self) -> None:
        """The customer's own message notifies nobody until an employee has written."""
        conversation = await self.conversation()
        await self.post(conversation, CUSTOMER)
        self.assertEqual(outbox(self.store), [])

    async def test_employees_who_wrote(self) -> None:
        """Employees who wrote in the conversation are notified when away; others not."""
        conversation = await self.conversation()
        await self.post(conversation, NURSE)
        await self.post(conversation, DOCTOR)
        self.online(conversation, DOCTOR)
        thanks = await self.post(conversation, CUSTOMER, "thanks")
        concerned = sorted(row[0] for row in outbox(self.store) if row[1] == thanks)
        self.assertEqual(concerned, [NURSE.user_id])

    async def test_message_text_never_sent(self) -> None:
        """The event holds ids only, never the text."""
        conversation = await self.conversation()
        message = await self.post(conversation, NURSE, "your results are fine")
        self.clock.advance(self.coalesce)
        self.start()
        event = self.event()
        self.assertEqual(event["type"], "message.created")
        self.assertEqual(event["data"], {
            "conversationId": conversation.id, "messageId": message,
            "recipientUserId": CUSTOMER.user_id, "recipientRole": "customer",
        })
        self.assertNotIn(b"results", self.receiver.requests[0][1])

    async def test_replay_queues_nothing(self) -> None:
        """A POST replayed with its idempotency key queues nothing more."""
        conversation = await self.conversation()
        await self.service.post_message(NURSE, conversation.id, "Hi", "key-1")
        await self.service.post_message(NURSE, conversation.id, "Hi", "key-1")
        self.assertEqual(len(outbox(self.store)), 1)

    async def test_presence_down(self) -> None:
        """If presence cannot answer, the message is still stored and everyone notified."""
        self.service.presence = BrokenPresence(InProcessHub())
        conversation = await self.conversation()
        await self.post(conversation, NURSE)
        self.assertEqual([row[0] for row in outbox(self.store)], [CUSTOMER.user_id])
        # Asked once, before the commit, for the webhooks and the auto-received alike.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_subscribed_on_another_process(self) -> None:
        """
        With presence shared through the store, a customer subscribed on another process
        is live: no notification; once they leave there, they are notified again.
        """
        await self.store.register_node("node-a", 0)
        await self.store.register_node("node-b", 0)
        self.service.presence = ClusterPresence(self.store, InProcessHub(), "node-a")
        elsewhere = ClusterPresence(self.store, InProcessHub(), "node-b")
        conversation = await self.conversation()
        await elsewhere.session_opened("s", CUSTOMER.user_id, False)
        await elsewhere.joined("s", conversation.id)
        await self.post(conversation, NURSE)
        self.assertEqual(outbox(self.store), [])
        await elsewhere.session_closed("s")
        await self.post(conversation, NURSE)
        self.assertEqual([row[0] for row in outbox(self.store)], [CUSTOMER.user_id])

    async def test_webhooks_off(self) -> None:
        """Without webhooks, nothing is queued and presence is not asked before commit."""
        self.service.webhook_coalesce = None
        self.service.presence = BrokenPresence(InProcessHub())
        conversation = await self.conversation()
        await self.post(conversation, NURSE)
        self.assertEqual(outbox(self.store), [])
        # Only the after-commit auto-received asked (and logged its failure).
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class CoalesceTests(WebhookTestCase):
    """
    Messages to the same recipient within the window make one notification.
    """

    async def test_window(self) -> None:
        """Three quick messages make one event, for the newest; a later one makes another."""
        conversation = await self.conversation()
        await self.post(conversation, NURSE, "one")
        self.clock.advance(1)
        await self.post(conversation, NURSE, "two")
        self.clock.advance(1)
        third = await self.post(conversation, NURSE, "three")
        [row] = outbox(self.store)
        self.assertEqual((row[1], row[3], row[6]), (third, micros(NOW + 5), 3))
        self.start()
        self.assertEqual(self.receiver.requests, [])  # not due yet
        self.clock.advance(3)
        self.assertEqual(self.event()["data"]["messageId"], third)
        # Claimed: the next message opens a new notification.
        fourth = await self.post(conversation, NURSE, "four")
        rows = outbox(self.store)
        self.assertEqual([r[1] for r in rows], [third, fourth])
        self.receiver.answer(200)
        self.assertEqual([r[1] for r in outbox(self.store)], [fourth])

    async def test_per_conversation(self) -> None:
        """Messages in two conversations are two notifications."""
        first = await self.conversation()
        second = await self.conversation()
        await self.post(first, NURSE)
        await self.post(second, NURSE)
        self.assertEqual(len(outbox(self.store)), 2)


class NoCoalesceTests(WebhookTestCase):
    """
    With a window of 0, every message is its own notification, due at once.
    """

    coalesce = 0.0

    async def test_each_message(self) -> None:
        """Two messages, two notifications, both sent on the next poll."""
        conversation = await self.conversation()
        await self.post(conversation, NURSE, "one")
        await self.post(conversation, NURSE, "two")
        self.assertEqual(len(outbox(self.store)), 2)
        self.start()
        self.assertEqual(len(self.receiver.requests), 2)
        ids = {headers["webhook-id"] for headers, _, _ in self.receiver.requests}
        self.assertEqual(len(ids), 2)


class DispatcherTests(WebhookTestCase):
    """
    The dispatcher sends, retries on schedule with the same id, gives up, and paces.
    """

    coalesce = 0.0

    async def queued(self) -> Conversation:
        conversation = await self.conversation()
        await self.post(conversation, NURSE)
        return conversation

    async def test_delivered_removed(self) -> None:
        """A 2xx removes the notification."""
        await self.queued()
        self.start()
        self.receiver.answer(204)
        self.assertEqual(outbox(self.store), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.receiver.requests), 1)

    async def test_retry_same_id(self) -> None:
        """A 500, then a 200 after the first delay: same webhook-id, new timestamp, signed."""
        await self.queued()
        self.start()
        self.receiver.answer(500)
        [row] = outbox(self.store)
        self.assertEqual((row[2], row[3], row[5]), (1, micros(NOW + 5), "HTTP 500"))
        self.clock.advance(4.9)
        self.assertEqual(len(self.receiver.requests), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(self.receiver.requests), 2)
        first, second = (r[0] for r in self.receiver.requests)
        self.assertEqual(first["webhook-id"], second["webhook-id"])
        self.assertEqual(int(second["webhook-timestamp"]) - int(first["webhook-timestamp"]), 5)
        self.assertEqual(self.receiver.requests[0][1], self.receiver.requests[1][1])
        self.event(0)
        self.event(1)
        self.receiver.answer(200)
        self.assertEqual(outbox(self.store), [])

    async def test_timeouts_retry(self) -> None:
        """A request that fails (timeout, refused) is retried on the schedule."""
        await self.queued()
        self.start()
        self.receiver.fail(ConnectionRefusedError("refused"))
        [row] = outbox(self.store)
        self.assertIn("refused", row[5])
        self.clock.advance(5)
        self.assertEqual(len(self.receiver.waiting()), 1)

    async def test_gives_up(self) -> None:
        """After the whole schedule the row is marked failed, logged, and kept."""
        await self.queued()
        self.start()
        for delay in RETRY_DELAYS:
            self.receiver.answer(503)
            self.clock.advance(delay)
        self.receiver.answer(503)
        logged = self.logged(LogLevel.warn)
        [row] = outbox(self.store)
        self.assertEqual((row[2], row[4]), (len(RETRY_DELAYS) + 1, micros(self.clock.seconds())))
        self.assertTrue(any("given up after 7 attempts" in text for text in logged))
        self.clock.advance(24 * 3600)
        self.assertEqual(len(self.receiver.requests), len(RETRY_DELAYS) + 1)

    async def test_failed_pruned(self) -> None:
        """A given-up row goes after a week."""
        await self.queued()
        self.start()
        for delay in RETRY_DELAYS:
            self.receiver.answer(500)
            self.clock.advance(delay)
        self.receiver.answer(500)
        self.assertEqual(len(outbox(self.store)), 1)
        self.clock.advance(8 * 24 * 3600)
        self.assertEqual(outbox(self.store), [])

    async def test_gone_stops(self) -> None:
        """410: that row is given up and nothing more is sent; later rows stay queued."""
        conversation = await self.queued()
        self.start()
        self.receiver.answer(410)
        self.assertEqual(len(self.logged(LogLevel.error)), 1)
        self.assertTrue(self.dispatcher.disabled)
        await self.post(conversation, NURSE, "again")
        self.clock.advance(3600)
        self.assertEqual(len(self.receiver.requests), 1)
        rows = outbox(self.store)
        self.assertEqual([(r[4] is not None, r[5]) for r in rows],
                         [(True, "HTTP 410"), (False, None)])

    async def test_retry_after_pauses(self) -> None:
        """429 with Retry-After: 120 pauses all sending for 120 s."""
        conversation = await self.queued()
        self.start()
        self.receiver.answer(429, 120.0)
        await self.post(conversation, NURSE, "again")
        self.clock.advance(119)
        self.assertEqual(len(self.receiver.requests), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.receiver.requests), 3)

    async def test_stop_gives_back(self) -> None:
        """Stopping mid-send cancels the attempt and makes the row due again at once."""
        await self.queued()
        self.start()
        [(_, _, attempt)] = self.receiver.requests
        self.dispatcher.stop()
        self.assertTrue(attempt.called)
        [row] = outbox(self.store)
        self.assertEqual((row[3], row[4]), (micros(NOW), None))
        # Another dispatcher (a restarted process) sends it.
        again = WebhookDispatcher(self.store, self.receiver, self.clock, KEY, owner="next")
        again.start()
        self.addCleanup(again.stop)
        self.assertEqual(len(self.receiver.waiting()), 1)

    async def test_expired(self) -> None:
        """A notification whose message is older than MAX_AGE is given up unsent."""
        await self.queued()
        self.clock.advance(MAX_AGE + 1)
        self.start()
        self.assertEqual(len(self.logged(LogLevel.warn)), 1)
        self.assertEqual(self.receiver.requests, [])
        [row] = outbox(self.store)
        self.assertEqual(row[5], "expired")

    async def test_batches(self) -> None:
        """More due rows than a batch holds are all sent, batch after batch."""
        dispatcher = WebhookDispatcher(self.store, self.receiver, self.clock, KEY,
                                       owner="small", batch=2)
        conversations = [await self.conversation() for _ in range(5)]
        for conversation in conversations:
            await self.post(conversation, NURSE)
        dispatcher.start()
        self.addCleanup(dispatcher.stop)
        for _ in range(5):
            self.receiver.answer(200)
            self.clock.advance(0)
        self.assertEqual(len(self.receiver.requests), 5)
        self.assertEqual(outbox(self.store), [])

    async def test_sender_raises(self) -> None:
        """A sender that raises instead of failing its Deferred counts as a failed attempt."""

        @implementer(IWebhookSender)
        class Broken(Receiver):
            def send(self, headers: dict[str, str], body: bytes) -> Deferred[WebhookResponse]:
                raise ValueError("bad URL")

        self.dispatcher._sender = Broken()
        await self.queued()
        self.start()
        [row] = outbox(self.store)
        self.assertEqual((row[2], row[5]), (1, "bad URL"))
        self.clock.advance(5)
        [row] = outbox(self.store)
        self.assertEqual(row[2], 2)

    async def test_store_down(self) -> None:
        """A store that fails the claim is logged and tried again on the next poll."""
        await self.queued()
        await self.store.stop()
        self.start()
        logged = self.logged(LogLevel.warn)
        self.assertTrue(any("claiming webhooks failed" in text for text in logged))
        await self.store.start()
        self.clock.advance(1)
        self.assertEqual(len(self.receiver.requests), 1)
