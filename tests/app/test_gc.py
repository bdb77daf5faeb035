"""
Tests for the garbage-collector setting of L{medichat.app.tap.MedichatService}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from medichat._timers import TimerWheel
from medichat.app import tap
from medichat.app.tap import MedichatService
from medichat.stomp.registry import SessionRegistry
from medichat.testing import MemoryStore


class _WebSockets:
    def drain(self) -> Deferred[None]:
        return succeed(None)


class FreezeTests(SynchronousTestCase):
    """
    A service that owns its process freezes what exists once it serves, out of the
    collector's full passes; one inside a test process does not.
    """

    def started(self, **kwargs: Any) -> list[str]:
        calls: list[str] = []
        self.patch(tap.gc, "freeze", lambda: calls.append("freeze"))
        self.patch(tap.gc, "get_threshold", lambda: (700, 10, 10))
        self.patch(tap.gc, "set_threshold",
                   lambda *values: calls.append(f"threshold {values}"))
        clock = Clock()
        service = MedichatService(
            clock, MemoryStore(clock), SessionRegistry(), TimerWheel(clock), ThreadPool(),
            _WebSockets(), **kwargs,  # type: ignore[arg-type]
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(service.ready)
        return calls

    def test_frozen_once_serving(self) -> None:
        """
        With freeze_gc, gc.freeze() is called once the service is ready, and young
        collections happen every 5,000 allocations; the older generations keep theirs.
        """
        self.assertEqual(self.started(freeze_gc=True),
                         ["freeze", "threshold (5000, 10, 10)"])

    def test_not_by_default(self) -> None:
        """Without it (tests, embedding), nothing is frozen or changed."""
        self.assertEqual(self.started(), [])
