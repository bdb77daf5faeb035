"""
L{medichat._writebatch}: frames held per connection while a block of deliveries runs,
written at its end, one write per connection.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from medichat._writebatch import WriteBatch


class Writer:
    def __init__(self, name: str, log: list[tuple[str, list[bytes]]], fail: bool = False):
        self.name = name
        self.log = log
        self.fail = fail

    def write_held(self, frames: list[bytes]) -> None:
        if self.fail:
            raise OSError("gone")
        self.log.append((self.name, frames))


class WriteBatchTests(SynchronousTestCase):
    def test_held_until_outermost_end(self) -> None:
        """
        Frames wait for the end of the outermost block; each writer then writes its
        frames once, in their order, writers in the order they first held.
        """
        batch = WriteBatch()
        log: list[tuple[str, list[bytes]]] = []
        a, b = Writer("a", log), Writer("b", log)
        self.assertFalse(batch.active)
        with batch:
            self.assertTrue(batch.active)
            batch.hold(b, b"1")
            with batch:
                batch.hold(a, b"2")
                batch.hold(b, b"3")
            self.assertEqual(log, [])
            batch.hold(a, b"4")
        self.assertFalse(batch.active)
        self.assertEqual(log, [("b", [b"1", b"3"]), ("a", [b"2", b"4"])])
        with batch:
            pass
        self.assertEqual(len(log), 2)

    def test_take(self) -> None:
        """What a writer takes back is no longer written at the end."""
        batch = WriteBatch()
        log: list[tuple[str, list[bytes]]] = []
        a, b = Writer("a", log), Writer("b", log)
        with batch:
            batch.hold(a, b"1")
            batch.hold(b, b"2")
            self.assertEqual(batch.take(a), [b"1"])
            self.assertEqual(batch.take(a), [])
        self.assertEqual(log, [("b", [b"2"])])

    def test_failing_writer(self) -> None:
        """A writer that fails is logged; the others still write."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        batch = WriteBatch()
        log: list[tuple[str, list[bytes]]] = []
        with batch:
            batch.hold(Writer("bad", log, fail=True), b"1")
            batch.hold(Writer("good", log), b"2")
        self.assertEqual(log, [("good", [b"2"])])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(logged), 1)

    def test_error_in_block(self) -> None:
        """An exception out of the block still writes what was held, and propagates."""
        batch = WriteBatch()
        log: list[tuple[str, list[bytes]]] = []
        with self.assertRaises(ValueError):
            with batch:
                batch.hold(Writer("a", log), b"1")
                raise ValueError("x")
        self.assertEqual(log, [("a", [b"1"])])
        self.assertFalse(batch.active)
