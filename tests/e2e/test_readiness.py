"""
End to end: C{/readyz} of the real server: 503 at once when a stop begins (while C{/livez}
stays 200), and, with PostgreSQL, not ready while the C{LISTEN} connection is down.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests._pg import create_test_database
from tests._server import LiveServerMixin, in_thread


def _begin(port: int, path: str) -> socket.socket:
    """Open a connection and send all of a request but its last line end."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(f"GET /api{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    return connection


def _finish(connection: socket.socket) -> tuple[int, Any]:
    """End the request begun on C{connection}; its status and JSON body."""
    try:
        connection.sendall(b"Connection: close\r\n\r\n")
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class DrainingTests(LiveServerMixin, TestCase):
    """
    A stopping server says at once that it should be sent nothing new.
    """

    @inlineCallbacks
    def test_readyz_flips_when_stopping(self) -> Any:
        """Before a stop /readyz is 200; once it begins, 503 draining; /livez stays 200."""
        ready = yield treq.get(self.server.base_url + "/readyz", pool=self.pool)
        self.assertEqual((ready.code, (yield ready.json())["status"]), (200, "ready"))
        port = self.server.http_port
        readyz = yield in_thread(_begin, port, "/readyz")
        livez = yield in_thread(_begin, port, "/livez")
        # The server has read those heads: they are requests in flight, which a stop answers.
        yield deferLater(reactor, 0.2, lambda: None)
        stopping = self.server.service.stopService()
        self.assertTrue(self.server.service.readiness.draining)
        self.assertEqual((yield in_thread(_finish, readyz)), (503, {"status": "draining"}))
        self.assertEqual((yield in_thread(_finish, livez)), (200, {"status": "ok"}))
        yield stopping


class PostgreSQLReadinessTests(LiveServerMixin, TestCase):
    """
    With PostgreSQL, readiness includes the LISTEN connection that brings the other
    processes' events.
    """

    @inlineCallbacks
    def server_args(self) -> Any:
        url = yield create_test_database(self)
        return ["--database", url]

    @inlineCallbacks
    def readyz(self) -> Any:
        response = yield treq.get(self.server.base_url + "/readyz", pool=self.pool)
        return response.code, (yield response.json())

    @inlineCallbacks
    def test_listen_connection_required(self) -> Any:
        """Ready with the store and LISTEN up; 503 naming the check once LISTEN is gone."""
        self.assertEqual((yield self.readyz()), (
            200, {"status": "ready", "store": "ok", "checks": {"listen": "ok"}},
        ))
        yield self.server.service.broadcast.stop()
        self.assertEqual((yield self.readyz()), (
            503, {"status": "unavailable", "store": "ok", "checks": {"listen": "failing"}},
        ))
