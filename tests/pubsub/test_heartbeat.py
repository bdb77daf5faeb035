"""
Tests for L{medichat.pubsub.heartbeat}: the time on the heartbeat topic, at intervals.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from medichat.pubsub.heartbeat import HeartbeatTopicService
from medichat.pubsub.hub import InProcessHub
from medichat.pubsub.topics import HEARTBEAT_TOPIC
from tests.pubsub.test_hub import Keeper


class HeartbeatTopicServiceTests(SynchronousTestCase):
    """
    L{HeartbeatTopicService} publishes the clock's time while it runs.
    """

    def test_beats(self) -> None:
        """At start and every interval until stopped: {"heartbeat": {"time": RFC 3339}}."""
        clock = Clock()
        clock.advance(1627301122.25)
        hub = InProcessHub()
        keeper = Keeper()
        hub.subscribe(HEARTBEAT_TOPIC, keeper)
        service = HeartbeatTopicService(hub, clock, 10.0)
        service.startService()
        clock.advance(10)
        service.stopService()
        clock.advance(30)
        self.assertEqual(
            [json.loads(p.body) for p in keeper.publications],
            [
                {"heartbeat": {"time": "2021-07-26T12:05:22.250000Z"}},
                {"heartbeat": {"time": "2021-07-26T12:05:32.250000Z"}},
            ],
        )
