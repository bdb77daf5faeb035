"""
Tests for L{medichat.pubsub.cluster.ClusterHub}: two hubs linked in memory by a
L{tests._broadcast.Bus} act as two processes of a cluster.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from medichat.pubsub.cluster import ClusterHub
from medichat.pubsub.hub import InProcessHub
from medichat.pubsub.topics import HEARTBEAT_TOPIC, ONLINE_EMPLOYEES_TOPIC, conversation_topic
from tests._broadcast import Bus
from tests.pubsub.test_hub import Keeper

TOPIC = conversation_topic("6f0c1d8e-8b53-4d43-9d55-0c5d6f3f1a10")


class ClusterHubTests(SynchronousTestCase):
    """
    Ephemeral events published on one process reach the subscribers of every process once.
    """

    def setUp(self) -> None:
        self.bus = Bus()
        self.clock = self.bus.clock
        self.a = ClusterHub(InProcessHub("a"), self.bus.join("a"), self.clock)
        self.b = ClusterHub(InProcessHub("b"), self.bus.join("b"), self.clock)
        self.catch_ups = {"a": 0, "b": 0}
        for name, hub in (("a", self.a), ("b", self.b)):
            hub.set_catch_up(lambda name=name: self._caught_up(name))
            hub.broadcast.start()
        # Starting listens, which is a reconnection like any other.
        self.assertEqual(self.catch_ups, {"a": 1, "b": 1})
        self.catch_ups = {"a": 0, "b": 0}

    def _caught_up(self, name: str) -> None:
        self.catch_ups[name] += 1

    def subscribed(self, hub: ClusterHub, destination: str = TOPIC) -> Keeper:
        keeper = Keeper()
        hub.subscribe(destination, keeper)
        return keeper

    def test_exactly_once(self) -> None:
        """Every process's subscribers get an event once; the publisher's at once, with no echo."""
        on_a, on_b = self.subscribed(self.a), self.subscribed(self.b)
        self.a.publish(TOPIC, {"startTyping": {"userId": "u1"}})
        self.assertEqual(len(on_a.publications), 1)
        self.assertEqual(on_b.publications, [])
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(len(on_a.publications), 1)
        self.assertEqual([p.body for p in on_b.publications], [b'{"startTyping":{"userId":"u1"}}'])
        self.assertEqual(on_b.publications[0].destination, TOPIC)

    def test_order_per_sender(self) -> None:
        """Events from one process arrive elsewhere in the order published, in and across turns."""
        on_b = self.subscribed(self.b, ONLINE_EMPLOYEES_TOPIC)
        for n in range(3):
            self.a.publish(ONLINE_EMPLOYEES_TOPIC, {"online": n})
        self.clock.advance(0)
        for n in range(3, 6):
            self.a.publish(ONLINE_EMPLOYEES_TOPIC, {"online": n})
        self.clock.advance(0)
        self.assertEqual(
            [p.body for p in on_b.publications], [b'{"online":%d}' % n for n in range(6)]
        )

    def test_one_batch_per_turn(self) -> None:
        """Everything published in one turn leaves as one batch."""
        for n in range(50):
            self.a.publish(TOPIC, {"n": n})
        self.assertEqual(self.bus.batches, [])
        self.clock.advance(0)
        self.assertEqual(len(self.bus.batches), 1)
        sender, messages = self.bus.batches[0]
        self.assertEqual(sender, "a")
        self.assertEqual(
            messages[0], {"kind": "event", "destination": TOPIC, "event": {"n": 0}}
        )
        self.assertEqual(len(messages), 50)

    def test_heartbeat_stays_local(self) -> None:
        """The heartbeat topic is delivered on its own process and never broadcast."""
        on_a = self.subscribed(self.a, HEARTBEAT_TOPIC)
        on_b = self.subscribed(self.b, HEARTBEAT_TOPIC)
        self.a.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "t"}})
        self.clock.advance(0)
        self.assertEqual(len(on_a.publications), 1)
        self.assertEqual(on_b.publications, [])
        self.assertEqual(self.bus.batches, [])

    def test_publish_encoded(self) -> None:
        """A durable event published by the event feed, with its offset, is not broadcast."""
        on_a, on_b = self.subscribed(self.a), self.subscribed(self.b)
        self.a.publish_encoded(TOPIC, b'{"message":{}}', 7)
        self.clock.advance(0)
        self.assertEqual((len(on_a.publications), len(on_b.publications)), (1, 0))
        self.assertEqual(on_a.publications[0].offset, 7)
        self.assertEqual(self.bus.batches, [])

    def test_durable_stays_local(self) -> None:
        """Durable events are never broadcast, even through publish: the store carries them."""
        on_a, on_b = self.subscribed(self.a), self.subscribed(self.b)
        for kind in ("message", "read", "received"):
            self.a.publish(TOPIC, {kind: {"userId": "u1"}})
        self.a.publish(TOPIC, {"stopTyping": {"userId": "u1"}})
        self.clock.advance(0)
        self.assertEqual((len(on_a.publications), len(on_b.publications)), (4, 1))
        self.assertEqual(on_b.publications[0].body, b'{"stopTyping":{"userId":"u1"}}')

    def test_wake(self) -> None:
        """A wake makes every other process catch up; one per turn however often it is called."""
        self.a.wake()
        self.a.wake()
        self.clock.advance(0)
        self.assertEqual(self.bus.batches, [("a", [{"kind": "wake"}])])
        self.assertEqual(self.catch_ups, {"a": 0, "b": 1})
        self.a.wake()
        self.clock.advance(0)
        self.assertEqual(self.catch_ups, {"a": 0, "b": 2})

    def test_reconnected_catches_up(self) -> None:
        """A process that listens again after a loss catches up on what it missed."""
        on_b = self.subscribed(self.b)
        self.b.broadcast.disconnect()  # type: ignore[attr-defined]
        self.a.publish(TOPIC, {"n": 1})
        self.a.wake()
        self.clock.advance(0)
        self.assertEqual((on_b.publications, self.catch_ups["b"]), ([], 0))
        self.b.broadcast.reconnect()  # type: ignore[attr-defined]
        self.assertEqual(self.catch_ups["b"], 1)

    def test_no_catch_up_set(self) -> None:
        """A wake before an event feed is attached is harmless."""
        hub = ClusterHub(InProcessHub("c"), self.bus.join("c"), self.clock)
        hub.broadcast.start()
        self.a.wake()
        self.clock.advance(0)
        self.assertEqual(self.catch_ups["b"], 1)

    def test_failing_catch_up_logged(self) -> None:
        """A catch-up that raises is logged, and the next message is still handled."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        on_b = self.subscribed(self.b)

        def broken() -> None:
            raise RuntimeError("feed broken")

        self.b.set_catch_up(broken)
        self.a.wake()
        self.a.publish(TOPIC, {"n": 1})
        self.clock.advance(0)
        self.assertEqual(len(on_b.publications), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([e["log_level"] for e in logged], [LogLevel.critical])

    def test_foreign_messages_ignored(self) -> None:
        """Messages not understood, for the heartbeat or outside the topics are logged, dropped."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        on_b = self.subscribed(self.b)
        on_heartbeat = self.subscribed(self.b, HEARTBEAT_TOPIC)
        for message in (
            "text",
            {"kind": "nope"},
            {"kind": "event", "destination": HEARTBEAT_TOPIC, "event": {}},
            {"kind": "event", "destination": "/elsewhere", "event": {}},
            {"kind": "event", "destination": TOPIC, "event": "not an object"},
        ):
            self.bus.carry("x", [message])
        self.assertEqual((on_b.publications, on_heartbeat.publications), ([], []))
        # Each of the two processes logs each of the five.
        self.assertEqual([e["log_level"] for e in logged], [LogLevel.warn] * 10)
        self.assertEqual({e["node"] for e in logged}, {"x"})

    def test_unsubscribe(self) -> None:
        """Unsubscribing on one process stops deliveries of events from the others there."""
        on_b = self.subscribed(self.b)
        self.b.unsubscribe(TOPIC, on_b)
        self.a.publish(TOPIC, {"n": 1})
        self.clock.advance(0)
        self.assertEqual(on_b.publications, [])
