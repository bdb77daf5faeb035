"""
The heartbeat topic: C{{"heartbeat": {"time": "<RFC 3339>"}}} on C{/v1/topic/heartbeat}
every few seconds, so that clients can tell a quiet server from a gone one.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime

from medichat.interfaces import IHub
from medichat.model import format_time, micros
from medichat.pubsub.topics import HEARTBEAT_TOPIC

__all__ = ["HeartbeatTopicService"]


class HeartbeatTopicService(TimerService):
    """
    Publishes the current time on the heartbeat topic once when started, then every
    C{interval} seconds until stopped.

    @param hub: where to publish.
    @param clock: the source of the time and of the interval.
    @param interval: seconds between publications.
    """

    def __init__(self, hub: IHub, clock: IReactorTime, interval: float) -> None:
        super().__init__(interval, self.beat)
        self.clock = clock
        self._hub = hub
        self._clock = clock

    def beat(self) -> None:
        """
        Publish the current time now.
        """
        now = micros(self._clock.seconds())
        self._hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": format_time(now)}})
