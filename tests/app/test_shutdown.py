"""
Tests for the shutdown and connection-limit parts of L{medichat.app.tap}: the options, and
L{MedichatService.stopService} answering HTTP requests in flight before the store stops.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from medichat._connections import ConnectionCap, default_max_connections
from medichat._timers import TimerWheel
from medichat.app.tap import MedichatService, Options
from medichat.http._channel import HTTPConnections
from medichat.http.site import make_site
from medichat.stomp.registry import SessionRegistry


class OptionTests(SynchronousTestCase):
    """
    --request-head-timeout, --max-connections and --shutdown-timeout.
    """

    def test_defaults(self) -> None:
        """The head deadline is 10 s, the shutdown bound 25 s (SPEC 8), the cap positive."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["request-head-timeout"], 10.0)
        self.assertEqual(options["shutdown-timeout"], 25.0)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(options["max-connections"], default_max_connections(soft))

    def test_given(self) -> None:
        """Given values are used."""
        options = Options()
        options.parseOptions(["--request-head-timeout", "2.5", "--max-connections", "50",
                              "--shutdown-timeout", "5"])
        self.assertEqual((options["request-head-timeout"], options["max-connections"],
                          options["shutdown-timeout"]), (2.5, 50, 5.0))

    def test_refused(self) -> None:
        """Zero, negative and non-numeric values are usage errors."""
        for args in (["--request-head-timeout", "0"], ["--max-connections", "-1"],
                     ["--max-connections", "many"], ["--shutdown-timeout", "nan"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, args)

    def test_default_from_file_limit(self) -> None:
        """The default cap keeps room below the open-file limit, and is at most 20,000."""
        self.assertEqual(default_max_connections(1024), 924)
        self.assertEqual(default_max_connections(20000), 19900)
        self.assertEqual(default_max_connections(1 << 20), 20000)
        self.assertEqual(default_max_connections(resource.RLIM_INFINITY), 20000)
        self.assertEqual(default_max_connections(50), 1)


class _Store:
    """Records when it was stopped."""

    def __init__(self, log: list[str]) -> None:
        self._log = log

    def stop(self) -> Deferred[None]:
        self._log.append("store stopped")
        return succeed(None)


class _WebSockets:
    def drain(self) -> Deferred[None]:
        return succeed(None)


class _Held(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed = True


class StopServiceTests(SynchronousTestCase):
    """
    SIGTERM: requests in flight are answered before the store stops.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: list[str] = []
        self.held = _Held()
        site = make_site(self.held, 1000, clock=self.clock)
        self.http = HTTPConnections(site, ConnectionCap(10, self.clock), self.clock)
        self.service = MedichatService(
            self.clock, _Store(self.log), SessionRegistry(),
            TimerWheel(self.clock), ThreadPool(), _WebSockets(),  # type: ignore[arg-type]
            http=self.http, shutdown_timeout=25,
        )
        server = self.http.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert server is not None
        self.client = _Client()
        transport = makeFakeClient(self.client)
        self.pump = connect(server, makeFakeServer(server), self.client, transport,
                            greet=False, clock=self.clock)
        transport.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.pump.flush()
        self.assertEqual(len(self.held.requests), 1)

    def test_request_answered_before_store_stops(self) -> None:
        """The store stops only after the request in flight was answered."""
        stopped = self.service.stopService()
        self.assertEqual(self.log, [])
        self.assertNoResult(stopped)
        request = self.held.requests.pop()
        self.log.append("answered")
        request.setResponseCode(201)
        request.finish()
        self.pump.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.log, ["answered", "store stopped"])
        self.assertTrue(self.client.received.startswith(b"HTTP/1.1 201 "))
        self.assertTrue(self.client.closed)

    def test_bounded(self) -> None:
        """A request that never ends holds the stop for --shutdown-timeout only."""
        stopped = self.service.stopService()
        self.clock.advance(24)
        self.assertNoResult(stopped)
        self.clock.advance(1)
        self.pump.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.log, ["store stopped"])
        self.assertTrue(self.client.closed)

    def test_stopped_twice(self) -> None:
        """A second stop waits for the first; the store is stopped once."""
        first = self.service.stopService()
        second = self.service.stopService()
        self.assertNoResult(second)
        self.clock.advance(25)
        self.pump.flush()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.log, ["store stopped"])
