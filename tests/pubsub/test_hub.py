"""
Tests for L{medichat.pubsub.hub}: plain publish/subscribe, one encoding per publication.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from medichat.interfaces import IHub, ISubscriber
from medichat.pubsub.hub import InProcessHub, Publication

TOPIC = "/v1/topic/heartbeat"


@implementer(ISubscriber)
class Keeper:
    """Keeps the publications delivered to it; may act on each one."""

    def __init__(self, then: object = None) -> None:
        self.publications: list[Publication] = []
        self._then = then

    def deliver(self, publication: Publication) -> None:
        self.publications.append(publication)
        if callable(self._then):
            self._then()


class HubTests(SynchronousTestCase):
    """
    L{InProcessHub} delivers each publication to the destination's current subscribers.
    """

    def setUp(self) -> None:
        self.hub = InProcessHub("node")

    def test_interfaces(self) -> None:
        """The hub provides IHub; the test subscriber ISubscriber."""
        self.assertTrue(verifyObject(IHub, self.hub))
        self.assertTrue(verifyObject(ISubscriber, Keeper()))

    def test_one_publication_for_all(self) -> None:
        """Every subscriber gets the same publication object: JSON encoded once, in order."""
        first, second = Keeper(), Keeper()
        self.hub.subscribe(TOPIC, first)
        self.hub.subscribe(TOPIC, second)
        self.hub.publish(TOPIC, {"b": 1, "a": "é"})
        (publication,) = first.publications
        self.assertEqual(second.publications, [publication])
        self.assertEqual(publication.body, '{"b":1,"a":"é"}'.encode())
        self.assertEqual(publication.destination, TOPIC)
        self.assertEqual(publication.message_id, "node-1")
        self.assertIsNone(publication.encoded)

    def test_subscribe_is_plain(self) -> None:
        """Subscribing twice delivers once; unsubscribing unknown pairs is harmless."""
        keeper = Keeper()
        self.assertIsNone(self.hub.subscribe(TOPIC, keeper))
        self.assertIsNone(self.hub.subscribe(TOPIC, keeper))
        self.hub.publish(TOPIC, {})
        self.assertEqual(len(keeper.publications), 1)
        self.assertIsNone(self.hub.unsubscribe(TOPIC, keeper))
        self.assertIsNone(self.hub.unsubscribe(TOPIC, keeper))
        self.assertIsNone(self.hub.unsubscribe("/elsewhere", keeper))
        self.hub.publish(TOPIC, {})
        self.assertEqual(len(keeper.publications), 1)
        self.assertEqual(self.hub.subscriber_count(TOPIC), 0)

    def test_unsubscribe_during_delivery(self) -> None:
        """A subscriber that leaves while a publication is delivered does not disturb it."""
        late = Keeper()
        early = Keeper(then=lambda: self.hub.unsubscribe(TOPIC, late))
        self.hub.subscribe(TOPIC, early)
        self.hub.subscribe(TOPIC, late)
        self.hub.publish(TOPIC, {})
        self.assertEqual((len(early.publications), len(late.publications)), (1, 1))
        self.hub.publish(TOPIC, {})
        self.assertEqual((len(early.publications), len(late.publications)), (2, 1))

    def test_failing_subscriber_logged(self) -> None:
        """A subscriber that raises is logged; the others still get the publication."""

        def boom() -> None:
            raise RuntimeError("boom")

        broken, fine = Keeper(then=boom), Keeper()
        self.hub.subscribe(TOPIC, broken)
        self.hub.subscribe(TOPIC, fine)
        self.hub.publish(TOPIC, {})
        self.assertEqual(len(fine.publications), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
