"""
Tests for L{medichat._persecond}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from medichat._persecond import PerSecond


class PerSecondTests(SynchronousTestCase):
    """
    A value made once for each second asked in a row, and made again when it changes.
    """

    def test_once_a_second(self) -> None:
        """The same second gives the value made for it; another second, a new one."""
        made: list[int] = []

        def make(second: int) -> str:
            made.append(second)
            return f"s{second}"

        per_second = PerSecond(make)
        values = [per_second(second) for second in (5, 5, 5, 6, 6, 5, 0, 0)]
        self.assertEqual(values, ["s5", "s5", "s5", "s6", "s6", "s5", "s0", "s0"])
        self.assertEqual(made, [5, 6, 5, 0])
