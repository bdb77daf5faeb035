"""
Test support: an event feed for a L{medichat.domain.conversations.ConversationService}
under test.
"""

from __future__ import annotations

from typing import Any

from medichat.pubsub.feed import EventFeed


def started_feed(store: Any, hub: Any, clock: Any, position: int = 0) -> EventFeed:
    """
    An L{EventFeed} from C{store} to C{hub}, started after C{position} (a fresh store has
    no events: 0), without the fallback poll, taking what the store commits as it commits
    (C{hand_off}, as the server's feed does).
    """
    feed = EventFeed(store, hub, clock, poll_interval=None, hand_off=True)
    feed.start(position)
    return feed
