"""
Tests for the limits of L{medichat.stomp.session} that keep one client from exhausting the
server (SPEC section 6): what transactions may hold, per-user session counts and rates,
duplicate subscriptions, and bursts of frames in one read.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from medichat.pubsub.topics import HEARTBEAT_TOPIC
from medichat.stomp.codec import encode_frame
from tests._stomp import Client, make_services, mint, realistic_clock

CONVERSATION = "6b92c178-c22b-4bbb-8dec-8d497660b5bf"
TYPING = f"/v1/app/conversation/{CONVERSATION}/typing/start"
OTHER_USER = "9a1d3f63-3c1b-4f55-9a55-3a4f7c1f4a10"


class _Conversations:
    """
    Stands in for the conversation service: records typing calls, and answers participant
    checks at once, or never when C{hold} is set (a store call that is still pending).
    """

    def __init__(self, hold: bool = False) -> None:
        self.typing_calls: list[tuple[str, bool]] = []
        self.hold = hold

    def typing(self, user: object, conversation_id: str, started: bool) -> None:
        self.typing_calls.append((conversation_id, started))

    def check_participant(self, user: object, conversation_id: str) -> Deferred[None]:
        if self.hold:
            return Deferred()
        return succeed(None)

    def subscribe(self, user: object, conversation_id: str) -> Deferred[None]:
        return self.check_participant(user, conversation_id)


def _connected(services: Any, token: str | None = None, port: int = 40000) -> Client:
    client = Client(services, port)
    client.connect(token)
    return client


class TransactionLimitTests(SynchronousTestCase):
    """
    Transactions hold only what COMMIT needs, within a byte budget per session, and ACK/NACK
    are rate limited.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.conversations = _Conversations()

    def test_acks_in_transactions_keep_no_frames(self) -> None:
        """ACKs inside never-committed transactions keep nothing of their frames."""
        services = make_services(self.clock, self.conversations, ack_rate=1e6, ack_burst=1e6)
        client = _connected(services)
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for t in range(10):
                client.send("BEGIN", {"transaction": f"t{t}"})
                ack = encode_frame("ACK", [("id", "m" * 8000), ("transaction", f"t{t}")])
                for _ in range(100):
                    client.raw(ack)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            if started:
                tracemalloc.stop()
        self.assertEqual(client.frames(), [])
        self.assertLess(held, 1 << 20, "1,000 ACKs of 8 KB were kept")
        client.send("ABORT", {"transaction": "t9", "receipt": "a"})
        self.assertEqual(client.next().get("receipt-id"), "a")

    def test_transaction_bytes_capped(self) -> None:
        """Past max_transaction_bytes held in open transactions: ERROR and close."""
        services = make_services(self.clock, self.conversations, send_rate=1e6, send_burst=1e6)
        client = _connected(services)
        destination = "/v1/app/" + "x" * 8000
        sent = 0
        for t in range(10):
            client.send("BEGIN", {"transaction": f"t{t}"})
            for _ in range(50):
                if client.closed:
                    break
                client.send("SEND", {"destination": destination, "transaction": f"t{t}"})
                sent += 1
        frame = client.frames()[-1]
        self.assertEqual(frame.command, "ERROR")
        self.assertEqual(frame.get("message"), "transactions too large")
        self.assertTrue(client.closed)
        # 256 KiB hold about 32 such destinations, far fewer than the 500 sent before.
        self.assertLess(sent, 40)

    def test_commit_after_budget_freed(self) -> None:
        """ABORT and COMMIT give back what a transaction held; COMMIT still sends in order."""
        services = make_services(
            self.clock, self.conversations, send_rate=1e6, send_burst=1e6,
            max_transaction_bytes=1024,
        )
        client = _connected(services)
        for round_ in range(20):
            client.send("BEGIN", {"transaction": "t"})
            client.send("SEND", {"destination": TYPING, "transaction": "t"})
            client.send("ACK", {"id": "m", "transaction": "t"})
            client.send("SEND", {"destination": TYPING.replace("start", "stop"),
                                 "transaction": "t"})
            end = "COMMIT" if round_ % 2 else "ABORT"
            client.send(end, {"transaction": "t", "receipt": str(round_)})
            self.assertEqual(client.next().get("receipt-id"), str(round_))
        self.assertEqual(self.conversations.typing_calls, [(CONVERSATION, True),
                                                           (CONVERSATION, False)] * 10)

    def test_ack_rate(self) -> None:
        """ACK and NACK past the per-user rate end the session, across the user's sessions."""
        services = make_services(self.clock, self.conversations, ack_rate=1.0, ack_burst=5.0)
        first = _connected(services, port=1)
        second = _connected(services, port=2)
        for _ in range(3):
            first.send("ACK", {"id": "m"})
        second.send("NACK", {"id": "m"})
        second.send("ACK", {"id": "m"})
        self.assertEqual(second.frames(), [])
        second.send("ACK", {"id": "m"})
        frame = second.next()
        self.assertEqual(frame.get("message"), "rate limit exceeded")
        self.assertEqual(frame.body, b"too many ACK/NACK frames")
        self.assertTrue(second.closed)
        self.assertFalse(first.closed)
        self.clock.advance(1.0)
        first.send("ACK", {"id": "m", "receipt": "r"})
        self.assertEqual(first.next().get("receipt-id"), "r")


class SessionCountTests(SynchronousTestCase):
    """
    A user may hold at most max_sessions_per_user live sessions.
    """

    def test_too_many_sessions(self) -> None:
        """The 21st live session of one user is refused; others and later ones are not."""
        services = make_services(realistic_clock())
        clients = [_connected(services, port=i) for i in range(20)]
        extra = Client(services, 99)
        extra.send("CONNECT", {"accept-version": "1.2", "Authorization": f"Bearer {mint()}"})
        frame = extra.next()
        self.assertEqual((frame.command, frame.get("message")), ("ERROR", "too many sessions"))
        self.assertTrue(extra.closed)
        self.assertFalse(any(c.closed for c in clients))
        _connected(services, mint(sub=OTHER_USER), port=100)
        clients[0].send("DISCONNECT")
        _connected(services, port=101)

    def test_option(self) -> None:
        """max_sessions_per_user sets the number."""
        services = make_services(realistic_clock(), max_sessions_per_user=2)
        _connected(services, port=1)
        _connected(services, port=2)
        third = Client(services, 3)
        third.send("CONNECT", {"accept-version": "1.2", "Authorization": f"Bearer {mint()}"})
        self.assertEqual(third.next().get("message"), "too many sessions")

    def test_lost_sessions_do_not_count(self) -> None:
        """A session whose connection was lost no longer counts."""
        services = make_services(realistic_clock(), max_sessions_per_user=1)
        first = _connected(services, port=1)
        first.protocol.connectionLost()
        _connected(services, port=2)


class SubscriptionLimitTests(SynchronousTestCase):
    """
    One subscription per destination per session, and a per-user SUBSCRIBE/UNSUBSCRIBE rate.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.conversations = _Conversations()

    def test_duplicate_destination(self) -> None:
        """A second subscription of one destination in a session is refused."""
        services = make_services(self.clock, self.conversations)
        client = _connected(services)
        client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        client.send("SUBSCRIBE", {"id": "2", "destination": HEARTBEAT_TOPIC, "receipt": "r"})
        frame = client.next()
        self.assertEqual(frame.get("message"), "duplicate subscription")
        self.assertEqual(frame.get("receipt-id"), "r")
        self.assertTrue(client.closed)

    def test_duplicate_conversation_any_case(self) -> None:
        """A conversation's id in another case is the same destination."""
        services = make_services(self.clock, self.conversations)
        client = _connected(services)
        lower = f"/v1/topic/conversation/{CONVERSATION}"
        client.send("SUBSCRIBE", {"id": "1", "destination": lower, "receipt": "a"})
        self.assertEqual(client.frames()[-1].get("receipt-id"), "a")
        client.send("SUBSCRIBE", {"id": "2", "destination": lower.upper().replace(
            "/V1/TOPIC/CONVERSATION/", "/v1/topic/conversation/")})
        self.assertEqual(client.next().get("message"), "duplicate subscription")

    def test_resubscribe_after_unsubscribe(self) -> None:
        """After UNSUBSCRIBE the destination may be subscribed again; other sessions may too."""
        services = make_services(self.clock, self.conversations)
        client = _connected(services, port=1)
        other = _connected(services, port=2)
        client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        other.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        client.send("UNSUBSCRIBE", {"id": "1"})
        client.send("SUBSCRIBE", {"id": "2", "destination": HEARTBEAT_TOPIC, "receipt": "r"})
        self.assertEqual(client.next().get("receipt-id"), "r")
        self.assertEqual(other.frames(), [])

    def test_subscribe_rate_per_user(self) -> None:
        """SUBSCRIBE/UNSUBSCRIBE loops past the per-user rate end the session, any session."""
        services = make_services(self.clock, self.conversations,
                                 subscribe_rate=1.0, subscribe_burst=10.0)
        first = _connected(services, port=1)
        second = _connected(services, port=2)
        bystander = _connected(services, mint(sub=OTHER_USER), port=3)
        destination = HEARTBEAT_TOPIC
        for _ in range(3):
            first.send("SUBSCRIBE", {"id": "1", "destination": destination})
            first.send("UNSUBSCRIBE", {"id": "1"})
        for _ in range(2):
            second.send("SUBSCRIBE", {"id": "1", "destination": destination})
            second.send("UNSUBSCRIBE", {"id": "1"})
        self.assertEqual(second.frames(), [])
        second.send("SUBSCRIBE", {"id": "1", "destination": destination})
        frame = second.next()
        self.assertEqual(frame.get("message"), "rate limit exceeded")
        self.assertEqual(frame.body, b"too many SUBSCRIBE/UNSUBSCRIBE frames")
        self.assertTrue(second.closed)
        self.assertFalse(first.closed)
        bystander.send("SUBSCRIBE", {"id": "1", "destination": destination, "receipt": "b"})
        self.assertEqual(bystander.next().get("receipt-id"), "b")
        self.clock.advance(1.0)
        first.send("SUBSCRIBE", {"id": "1", "destination": destination, "receipt": "f"})
        self.assertEqual(first.next().get("receipt-id"), "f")

    def test_send_rate_per_user(self) -> None:
        """The SEND rate is shared by a user's sessions, not granted to each."""
        services = make_services(self.clock, self.conversations, send_rate=1.0, send_burst=5.0)
        first = _connected(services, port=1)
        second = _connected(services, port=2)
        for _ in range(3):
            first.send("SEND", {"destination": TYPING})
        second.send("SEND", {"destination": TYPING})
        second.send("SEND", {"destination": TYPING})
        second.send("SEND", {"destination": TYPING})
        self.assertEqual(second.next().get("message"), "rate limit exceeded")
        self.assertEqual(len(self.conversations.typing_calls), 5)
        other = _connected(services, mint(sub=OTHER_USER), port=3)
        other.send("SEND", {"destination": TYPING, "receipt": "o"})
        self.assertEqual(other.next().get("receipt-id"), "o")


class BurstTests(SynchronousTestCase):
    """
    Only frames queued behind a pending store call count as a flood.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()

    def test_burst_without_store(self) -> None:
        """300 BEGIN/ABORT pairs with receipts in one read are all answered."""
        services = make_services(self.clock, _Conversations())
        client = _connected(services)
        client.raw(b"".join(
            encode_frame("BEGIN", [("transaction", f"t{i}"), ("receipt", f"b{i}")])
            + encode_frame("ABORT", [("transaction", f"t{i}"), ("receipt", f"a{i}")])
            for i in range(300)
        ))
        receipts = [f.get("receipt-id") for f in client.frames()]
        self.assertEqual(receipts, [r for i in range(300) for r in (f"b{i}", f"a{i}")])
        self.assertFalse(client.closed)

    def test_connect_then_burst(self) -> None:
        """CONNECT followed by 200 frames in the same read: all are answered."""
        services = make_services(self.clock, _Conversations())
        client = Client(services)
        connect = encode_frame("CONNECT", [("accept-version", "1.2"),
                                           ("Authorization", f"Bearer {mint()}")])
        client.raw(connect + b"".join(
            encode_frame("BEGIN", [("transaction", "t"), ("receipt", f"{i}")])
            + encode_frame("ABORT", [("transaction", "t")])
            for i in range(100)
        ))
        frames = client.frames()
        self.assertEqual(frames[0].command, "CONNECTED")
        self.assertEqual([f.get("receipt-id") for f in frames[1:]], [str(i) for i in range(100)])

    def test_queued_behind_store(self) -> None:
        """More than max_pending_frames behind a pending store call is a flood."""
        services = make_services(self.clock, _Conversations(hold=True), max_pending_frames=10)
        client = _connected(services)
        subscribe = encode_frame("SUBSCRIBE", [
            ("id", "1"), ("destination", f"/v1/topic/conversation/{CONVERSATION}")])
        begin_abort = encode_frame("BEGIN", [("transaction", "t")]) + encode_frame(
            "ABORT", [("transaction", "t")])
        # Frames handled at once before the store call do not count.
        client.raw(begin_abort * 20 + subscribe + begin_abort * 5)
        self.assertEqual(client.frames(), [])
        self.assertFalse(client.closed)
        client.raw(begin_abort)
        frame = client.next()
        self.assertEqual(frame.get("message"), "too many frames in flight")
        self.assertTrue(client.closed)
