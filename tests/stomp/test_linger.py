"""
Tests for L{medichat.stomp.linger.Lingering}: connections an ERROR ended, held before
their close.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from medichat.stomp.linger import Lingering


class LingeringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.closed: list[str] = []

    def closer(self, name: str) -> object:
        return lambda: self.closed.append(name)

    def test_closed_after_delay(self) -> None:
        """A held connection is closed once the delay has passed, and only then."""
        lingering = Lingering(self.clock, 1.0)
        self.assertTrue(lingering.hold("a", self.closer("a")))
        self.clock.advance(0.99)
        self.assertEqual((self.closed, len(lingering)), ([], 1))
        self.clock.advance(0.01)
        self.assertEqual((self.closed, len(lingering)), (["a"], 0))

    def test_no_delay(self) -> None:
        """With no delay nothing is held: the caller closes at once."""
        lingering = Lingering(self.clock, 0)
        self.assertFalse(lingering.hold("a", self.closer("a")))
        self.assertEqual((self.closed, len(lingering), self.clock.getDelayedCalls()), ([], 0, []))

    def test_held_once(self) -> None:
        """A connection held already is not held again (its second close is now)."""
        lingering = Lingering(self.clock, 1.0)
        self.assertTrue(lingering.hold("a", self.closer("a")))
        self.assertFalse(lingering.hold("a", self.closer("again")))
        self.clock.advance(1)
        self.assertEqual(self.closed, ["a"])

    def test_forget(self) -> None:
        """A connection gone meanwhile is forgotten: no close, no timer left."""
        lingering = Lingering(self.clock, 1.0)
        lingering.hold("a", self.closer("a"))
        lingering.forget("a")
        lingering.forget("never held")
        self.assertEqual((len(lingering), self.clock.getDelayedCalls()), (0, []))
        self.clock.advance(2)
        self.assertEqual(self.closed, [])

    def test_close_all(self) -> None:
        """At shutdown every held connection is closed at once, its timer cancelled."""
        lingering = Lingering(self.clock, 30.0)
        lingering.hold("a", self.closer("a"))
        lingering.hold("b", self.closer("b"))
        lingering.close_all()
        self.assertEqual((sorted(self.closed), len(lingering)), (["a", "b"], 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
