"""
Per-user rate limits of STOMP frames, shared by every session of a user in this process:
a user who opens more connections gets no more throughput.
"""

from __future__ import annotations

from attrs import frozen

from medichat._ratelimit import TokenBuckets


def user_buckets(rate: float, burst: float) -> TokenBuckets:
    """
    Token buckets keyed by user id: C{burst} frames at once, refilled at C{rate} a second.

    @param rate: frames per second on average (positive).
    @param burst: frames in one burst; rounded, at least one.
    """
    capacity = max(1, round(burst))
    return TokenBuckets(capacity, capacity / rate)


@frozen
class UserRateLimits:
    """
    The buckets, each keyed by user id.

    @ivar send: C{SEND} frames.
    @ivar ack: C{ACK} and C{NACK} frames.
    @ivar subscribe: C{SUBSCRIBE} and C{UNSUBSCRIBE} frames (each may publish presence to
        everyone watching a conversation).
    """

    send: TokenBuckets
    ack: TokenBuckets
    subscribe: TokenBuckets
