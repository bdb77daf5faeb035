"""
Tests for the payloads of L{medichat.store.broadcast} (no database needed): packing under
PostgreSQL's limit, unpacking, and what L{PostgreSQLBroadcast.send} refuses.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from medichat.store.broadcast import (
    MAX_PAYLOAD,
    PostgreSQLBroadcast,
    encode_message,
    message_room,
    pack,
    unpack,
)


class PackTests(SynchronousTestCase):
    """
    L{pack} fits messages, in order, into as few payloads as PostgreSQL takes.
    """

    def test_one_payload(self) -> None:
        """Small messages share one payload, which unpacks to them in order."""
        messages = [{"n": n, "t": "é"} for n in range(10)]
        (payload,) = pack("node", 7, [encode_message(m) for m in messages])
        self.assertEqual(json.loads(payload)["seq"], 7)
        self.assertEqual(unpack(payload), ("node", messages))

    def test_split(self) -> None:
        """Messages over the limit together are split over payloads under it, seq counting up."""
        messages = [encode_message("ü" * 1500 + str(n)) for n in range(20)]
        payloads = pack("node", 0, messages)
        self.assertGreater(len(payloads), 1)
        for payload in payloads:
            self.assertLessEqual(len(payload.encode("utf-8")), MAX_PAYLOAD)
        self.assertEqual([json.loads(p)["seq"] for p in payloads], list(range(len(payloads))))
        received = [m for p in payloads for m in unpack(p)[1]]  # type: ignore[index]
        self.assertEqual(received, ["ü" * 1500 + str(n) for n in range(20)])

    def test_largest_message(self) -> None:
        """A message of exactly the room left fits alone under the limit, even with a long seq."""
        room = message_room("node")
        message = encode_message("x" * (room - 2))
        self.assertEqual(len(message), room)
        (payload,) = pack("node", 10**19, [message])
        self.assertLessEqual(len(payload.encode("utf-8")), MAX_PAYLOAD)

    def test_unpack_foreign(self) -> None:
        """Payloads that are not medichat's unpack to None."""
        for payload in ("", "not json", "[]", '{"node":1,"messages":[]}', '{"node":"n"}'):
            self.assertIsNone(unpack(payload), payload)


class SendTests(SynchronousTestCase):
    """
    L{PostgreSQLBroadcast.send} refuses, with a logged error, what it could never carry.
    """

    def setUp(self) -> None:
        self.broadcast = PostgreSQLBroadcast("postgresql://u@h/db", Clock(), node_id="n")

    def test_too_big(self) -> None:
        """A message bigger than a payload can hold is refused and logged with its size."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertFalse(self.broadcast.send("x" * 8000))
        self.assertEqual([e["log_level"] for e in logged], [LogLevel.error])
        self.assertEqual(logged[0]["size"], 8002)

    def test_not_json(self) -> None:
        """A message that is not JSON is refused and logged."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertFalse(self.broadcast.send({"x": object()}))
        self.assertFalse(self.broadcast.send(float("nan")))
        self.assertEqual([e["log_level"] for e in logged], [LogLevel.error] * 2)

    def test_queued_before_start(self) -> None:
        """A message sent before the broadcast starts is queued, not refused."""
        self.assertTrue(self.broadcast.send({"kind": "wake"}))

    def test_bad_channel(self) -> None:
        """A channel name that would need quoting is refused."""
        self.assertRaises(
            ValueError,
            PostgreSQLBroadcast, "postgresql://u@h/db", Clock(), node_id="n", channel="a b",
        )


class BackoffTests(SynchronousTestCase):
    """
    Attempts to listen again start at once and back off, jittered, up to a cap.
    """

    def delays(self, jitter: float) -> list[float]:
        clock = Clock()
        broadcast = PostgreSQLBroadcast(
            "postgresql://u@h/db", clock, node_id="n", max_backoff=2.0, jitter=lambda: jitter
        )
        delays = []
        for _ in range(7):
            broadcast._schedule_retry()
            (call,) = clock.getDelayedCalls()
            delays.append(round(call.getTime() - clock.seconds(), 4))
            call.cancel()
        return delays

    def test_growing(self) -> None:
        """The waits double from a tenth of a second up to the cap."""
        self.assertEqual(self.delays(0.999999), [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])

    def test_jitter(self) -> None:
        """Jitter shortens each wait down to half, never lengthens it."""
        self.assertEqual(self.delays(0.0), [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
