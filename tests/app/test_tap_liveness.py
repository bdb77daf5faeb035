"""
Tests for the carrier liveness and ping options of L{medichat.app.tap}: C{--ws-ping-interval}
and C{--ws-ping-rate} reach the carriers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import TestCase

from medichat.app.tap import Options, makeService


class PingOptionsTests(TestCase):
    """
    The WebSocket liveness pings and ping rate, and the keepalive of STOMP/TCP connections.
    """

    def _factories(self, *args: str) -> tuple[Any, Any]:
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--listen", "tcp:0",
                              "--stomp-listen", "tcp:0", *args])
        service: Any = makeService(options, MemoryReactorClock())
        (tcp,) = [listener._factory.wrappedFactory for listener in service.listeners
                  if listener._what == "STOMP/TCP"]
        return service._websockets, tcp

    def test_defaults(self) -> None:
        """A ping every 30 s (and keepalive after 30 s of silence); 1 ping/s from clients."""
        websocket, tcp = self._factories()
        self.assertEqual((websocket.ping_interval, websocket.ping_rate, tcp.keepalive),
                         (30.0, 1.0, 30.0))

    def test_set(self) -> None:
        """The options set both carriers."""
        websocket, tcp = self._factories("--ws-ping-interval", "12.5", "--ws-ping-rate", "4")
        self.assertEqual((websocket.ping_interval, websocket.ping_rate, tcp.keepalive),
                         (12.5, 4.0, 12.5))

    def test_off(self) -> None:
        """C{--ws-ping-interval 0} sends no pings and leaves the system's keepalive timing."""
        websocket, tcp = self._factories("--ws-ping-interval", "0")
        self.assertEqual((websocket.ping_interval, tcp.keepalive), (0.0, 0.0))

    def test_invalid(self) -> None:
        """Negative or non-numeric values are usage errors."""
        for args in (["--ws-ping-interval", "-1"], ["--ws-ping-interval", "x"],
                     ["--ws-ping-rate", "0"]):
            options = Options()
            self.assertRaises(usage.UsageError, options.parseOptions,
                              ["--data-dir", self.mktemp(), *args])
