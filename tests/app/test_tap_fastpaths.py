"""
Tests for the C{--no-fast-paths} option of L{medichat.app.tap}: it reaches both carriers,
and the HTTP answers' eager send (which the SQLite server alone uses).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from medichat.app.tap import Options, makeService
from medichat.carriers._fastpath import FastPaths
from medichat.http._direct import DirectRoute
from tests.http.test_direct import whole


class NoFastPathsTests(TestCase):
    """
    C{--no-fast-paths} turns the shortcuts off on the WebSocket and the TCP carrier.
    """

    def _service(self, *args: str) -> Any:
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--listen", "tcp:0",
                              "--stomp-listen", "tcp:0", *args])
        return makeService(options, MemoryReactorClock())

    def _factories(self, *args: str) -> tuple[Any, Any]:
        service = self._service(*args)
        websocket = service._websockets
        (tcp,) = [listener._factory.wrappedFactory for listener in service.listeners
                  if listener._what == "STOMP/TCP"]
        return websocket, tcp

    def _eager_writer(self, *args: str) -> Any:
        """What the HTTP site gives its connections for sending answers at once."""
        service = self._service(*args)
        (http,) = [listener._factory for listener in service.listeners
                   if listener._what != "STOMP/TCP"]
        return http.wrappedFactory.protocol.keywords["eager_writer"]

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

    def test_http_answers_sqlite(self) -> None:
        """The SQLite server sends HTTP answers at once, unless told not to."""
        writer = self._eager_writer()
        self.assertEqual((writer.__func__, writer.__self__),
                         (FastPaths.writer_for, FastPaths.probe()))
        self.assertEqual(self._eager_writer("--no-fast-paths").__self__, FastPaths())

    def test_http_answers_postgresql(self) -> None:
        """The PostgreSQL server leaves its HTTP answers to the transport."""
        writer = self._eager_writer("--database", "postgresql://nobody@127.0.0.1:1/none")
        self.assertIsNone(writer)

    def _site(self, *args: str) -> Any:
        service = self._service(*args)
        (http,) = [listener._factory for listener in service.listeners
                   if listener._what != "STOMP/TCP"]
        return http.wrappedFactory

    def test_message_posts_direct(self) -> None:
        """
        Chat messages' POSTs read whole are answered without twisted.web's request at
        the base path, on either store, unless told not to.
        """
        for args in [(), ("--database", "postgresql://nobody@127.0.0.1:1/none")]:
            site = self._site(*args)
            route = site.protocol.keywords["direct"]
            self.assertIsInstance(route, DirectRoute)
            self.assertIs(site.direct, route)
            self.assertIsNotNone(route.match(whole(b"/api/v1/conversation/c1/message")))
        route = self._site("--base-path", "/chat/api").direct
        self.assertIsNone(route.match(whole(b"/api/v1/conversation/c1/message")))
        self.assertIsNotNone(route.match(whole(b"/chat/api/v1/conversation/c1/message")))
        site = self._site("--no-fast-paths")
        self.assertIsNone(site.direct)
        self.assertIsNone(site.protocol.keywords["direct"])
