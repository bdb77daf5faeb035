"""
Tests for L{medichat._gcpauses}: the benchmarks' record of garbage-collection pauses.
"""

from __future__ import annotations

import gc
import os

from twisted.trial.unittest import SynchronousTestCase

from medichat._gcpauses import ENVIRONMENT_VARIABLE, PauseRecorder, install_from_environment


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class PauseRecorderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.written: list[bytes] = []
        self.timer = FakeTime(100.0)
        self.wall = FakeTime(1_700_000_000.0)
        self.cpu = FakeTime(5.0)
        self.recorder = PauseRecorder(self.written.append, timer=self.timer, wall=self.wall,
                                      cpu=self.cpu)

    def collect(self, generation: int, seconds: float, collected: int = 3) -> None:
        self.recorder("start", {"generation": generation})
        self.timer.now += seconds
        self.cpu.now += seconds / 2
        self.recorder("stop", {"generation": generation, "collected": collected,
                               "uncollectable": 0})

    def test_young_collections_are_batched(self) -> None:
        """
        Collections of the young generations wait, written together once half a second
        has passed.
        """
        self.collect(0, 0.000250)
        self.collect(1, 0.001)
        self.assertEqual(self.written, [])
        self.wall.now += 0.5
        self.collect(0, 0.0001, collected=0)
        self.assertEqual(
            b"".join(self.written),
            b"1700000000.000000 0 250 3 0 125\n"
            b"1700000000.000000 1 1000 3 0 500\n"
            b"1700000000.500000 0 100 0 0 50\n",
        )

    def test_full_collection_written_at_once(self) -> None:
        """A full collection is written at once, with those waiting before it."""
        self.collect(0, 0.0002)
        self.collect(2, 0.0125, collected=40)
        self.assertEqual(
            b"".join(self.written),
            b"1700000000.000000 0 200 3 0 100\n1700000000.000000 2 12500 40 0 6250\n",
        )

    def test_many_lines_written(self) -> None:
        """At most 256 lines wait."""
        for _ in range(256):
            self.collect(0, 0.0001)
        self.assertEqual(b"".join(self.written).count(b"\n"), 256)


class InstallTests(SynchronousTestCase):
    def test_nothing_without_the_variable(self) -> None:
        """Without the variable no callback is installed."""
        before = list(gc.callbacks)
        self.assertIsNone(install_from_environment({}))
        self.assertEqual(gc.callbacks, before)

    def test_installed_with_the_variable(self) -> None:
        """With the variable, real collections are appended to the file it names."""
        path = self.mktemp()
        recorder = install_from_environment({ENVIRONMENT_VARIABLE: path})
        assert recorder is not None
        self.addCleanup(gc.callbacks.remove, recorder)
        gc.collect()
        recorder.flush()
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        self.assertTrue(lines)
        fields = lines[-1].split()
        self.assertEqual((len(fields), fields[1]), (6, b"2"))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
