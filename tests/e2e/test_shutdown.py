"""
End to end: stopping the real server (what SIGTERM does) answers the HTTP request in flight
with its real answer before the store stops, then closes the kept-alive connection.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests._server import start_server

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"


class _RawHTTP(Protocol):
    """An HTTP/1.1 client that sends exactly the bytes it is given."""

    def __init__(self) -> None:
        self.buffer = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: Deferred[tuple[int, dict[str, str], bytes]] | None = None

    def response(self) -> Deferred[tuple[int, dict[str, str], bytes]]:
        """The next whole response (status, lower-cased headers, body)."""
        self._waiting = Deferred()
        d = self._waiting
        self._check()
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)

    def _check(self) -> None:
        if self._waiting is None or b"\r\n\r\n" not in self.buffer:
            return
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while True:
                size, crlf, rest = rest.partition(b"\r\n")
                if not crlf:
                    return
                length = int(size, 16)
                if len(rest) < length + 2:
                    return
                chunks.append(rest[:length])
                rest = rest[length + 2:]
                if not length:
                    break
            body = b"".join(chunks)
        else:
            length = int(headers.get("content-length", "0"))
            if len(rest) < length:
                return
            body, rest = rest[:length], rest[length:]
        self.buffer = rest
        waiting, self._waiting = self._waiting, None
        waiting.callback((int(lines[0].split(" ")[1]), headers, body))


class ShutdownTests(TestCase):
    """
    SIGTERM drains HTTP before the store stops.
    """

    timeout = 60

    @inlineCallbacks
    def test_request_in_flight_answered(self) -> Any:
        """A POST still arriving at stop gets its real 201, then its connection closes."""
        # Meanwhile no new connection is accepted, and the stop completes only after.
        server = yield start_server(self)
        token = jwt.encode({"sub": CUSTOMER, "name": "c1", "role": "customer"}, server.secret,
                           algorithm="HS256")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.http_port)
        client = _RawHTTP()
        yield connectProtocol(endpoint, client)

        # One request answered on the connection first: it is kept alive.
        client.transport.write(b"GET /api/health HTTP/1.1\r\nHost: medichat\r\n\r\n")
        code, headers, _ = yield client.response()
        self.assertEqual(code, 200)
        self.assertNotEqual(headers.get("connection"), "close")

        # The next request's body is still arriving when the stop begins.
        client.transport.write(
            b"POST /api/v1/conversation HTTP/1.1\r\nHost: medichat\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
        )
        yield deferLater(reactor, 0.2, lambda: None)
        stopped = server.service.stopService()
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(stopped.called)
        with self.assertRaises(ConnectError):
            yield connectProtocol(endpoint, Protocol())

        client.transport.write(b"}")
        code, headers, body = yield client.response()
        self.assertEqual(code, 201, body)
        self.assertEqual(json.loads(body)["customerId"], CUSTOMER)
        self.assertEqual(headers.get("connection"), "close")
        yield client.closed
        yield stopped
