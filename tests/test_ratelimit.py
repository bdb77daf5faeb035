"""
Tests for L{medichat._ratelimit}: the token buckets behind every per-user rate.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from medichat._ratelimit import TokenBuckets


class PerSecondTests(SynchronousTestCase):
    """
    L{TokenBuckets.per_second}: a burst at once, then the rate.
    """

    def test_burst_then_rate(self) -> None:
        """20/s with bursts of 40: 40 at once, then one every 1/20 s, per key."""
        buckets = TokenBuckets.per_second(20.0, 40.0)
        self.assertEqual([buckets.take("u", 0.0) for _ in range(40)], [None] * 40)
        self.assertAlmostEqual(buckets.take("u", 0.0), 0.05)
        self.assertIsNone(buckets.take("other", 0.0))
        self.assertIsNone(buckets.take("u", 0.05))
        self.assertIsNotNone(buckets.take("u", 0.05))

    def test_burst_at_least_one(self) -> None:
        """A burst under one rounds up to one token."""
        buckets = TokenBuckets.per_second(1.0, 0.2)
        self.assertIsNone(buckets.take("u", 0.0))
        self.assertIsNotNone(buckets.take("u", 0.0))
