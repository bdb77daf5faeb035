"""
Tests for the C{--no-fast-paths} option of L{medichat.app.tap}: it reaches both carriers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from medichat.app.tap import Options, makeService
from medichat.carriers._fastpath import FastPaths


class NoFastPathsTests(TestCase):
    """
    C{--no-fast-paths} turns the shortcuts off on the WebSocket and the TCP carrier.
    """

    def _factories(self, *args: str) -> tuple[Any, Any]:
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--listen", "tcp:0",
                              "--stomp-listen", "tcp:0", *args])
        service: Any = makeService(options, MemoryReactorClock())
        websocket = service._websockets
        (tcp,) = [listener._factory.wrappedFactory for listener in service.listeners
                  if listener._what == "STOMP/TCP"]
        return websocket, tcp

    def test_default_on(self) -> None:
        """Without the option both carriers use every shortcut the libraries allow."""
        websocket, tcp = self._factories()
        self.assertEqual(websocket.fast_paths, FastPaths.probe())
        self.assertEqual(tcp.fast_paths, FastPaths.probe())

    def test_off(self) -> None:
        """With it, neither carrier uses any."""
        websocket, tcp = self._factories("--no-fast-paths")
        self.assertEqual(websocket.fast_paths, FastPaths())
        self.assertEqual(tcp.fast_paths, FastPaths())
