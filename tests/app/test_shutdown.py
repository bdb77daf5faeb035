"""
Tests for the shutdown and connection-limit parts of L{medichat.app.tap}: the options,
L{MedichatService.stopService} answering HTTP requests in flight before the store stops and
draining, and the SQLite data directory's lock.
"""

from __future__ import annotations

import os
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
from medichat._readiness import Readiness
from medichat._timers import TimerWheel
from medichat.app._datalock import DataDirectoryLock, LockedError
from medichat.app.tap import CannotStart, MedichatService, Options
from medichat.http._channel import HTTPConnections
from medichat.http.site import make_site
from medichat.model import User
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


class _Session:
    """A live STOMP session that records when it was shut down."""

    def __init__(self, user_id: str, clock: Clock, log: list[str]) -> None:
        self.user = User(user_id, user_id, "customer")
        self._clock = clock
        self._log = log
        self.closed_at: float | None = None

    def end(self, message: str, detail: str = "") -> None:
        raise AssertionError("not ended by a stop")

    def shutdown(self) -> None:
        self.closed_at = self._clock.seconds()
        self._log.append("session closed")


class _Node:
    """A cluster node that records when it left."""

    def __init__(self, log: list[str]) -> None:
        self._log = log

    def stopService(self) -> Deferred[None]:
        self._log.append("node left")
        return succeed(None)


class DrainTests(SynchronousTestCase):
    """
    SIGTERM drains: not ready at once, sessions closed in slices over the spread, the
    node's presence removed after them and before the store stops.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: list[str] = []
        self.registry = SessionRegistry()
        self.sessions = [_Session(f"user-{i}", self.clock, self.log) for i in range(40)]
        for session in self.sessions:
            self.registry.add(session)
        self.readiness = Readiness()
        self.service = MedichatService(
            self.clock, _Store(self.log), self.registry,
            TimerWheel(self.clock), ThreadPool(), _WebSockets(),  # type: ignore[arg-type]
            shutdown_timeout=25, readiness=self.readiness, close_spread=2.0,
            node=_Node(self.log),  # type: ignore[arg-type]
        )

    def test_not_ready_at_once(self) -> None:
        """Readiness reports draining as soon as the stop begins."""
        self.assertFalse(self.readiness.draining)
        self.service.stopService()
        self.assertTrue(self.readiness.draining)

    def test_sessions_closed_in_slices(self) -> None:
        """Sessions close a slice at a time over --close-spread, not all at once."""
        stopped = self.service.stopService()
        closed_now = [s for s in self.sessions if s.closed_at is not None]
        self.assertEqual(len(closed_now), 2)
        self.clock.pump([0.1] * 19)
        times = sorted(s.closed_at for s in self.sessions if s.closed_at is not None)
        self.assertEqual(len(times), 40)
        self.assertEqual(len(set(times)), 20)
        self.assertLess(times[-1], 2.0)
        self.successResultOf(stopped)
        self.assertEqual(self.log, ["session closed"] * 40 + ["node left", "store stopped"])

    def test_no_spread(self) -> None:
        """With a spread of 0 every session closes at once."""
        service = MedichatService(
            self.clock, _Store(self.log), self.registry,
            TimerWheel(self.clock), ThreadPool(), _WebSockets(),  # type: ignore[arg-type]
            close_spread=0.0,
        )
        self.successResultOf(service.stopService())
        self.assertEqual({s.closed_at for s in self.sessions}, {0.0})
        self.assertEqual(self.log[-1], "store stopped")


class _LockStore(_Store):
    """A store whose preflight and start succeed."""

    kind = "sqlite"

    def preflight(self) -> None:
        self._log.append("preflight")

    def start(self) -> Deferred[None]:
        return succeed(None)


class DataDirectoryLockTests(SynchronousTestCase):
    """
    An SQLite data directory serves one server process at a time.
    """

    def test_second_holder_refused(self) -> None:
        """A second lock on the same directory fails with one line naming the holder."""
        data_dir = os.path.join(self.mktemp(), "data")
        first = DataDirectoryLock(data_dir)
        first.acquire()
        self.addCleanup(first.release)
        self.assertEqual(os.stat(data_dir).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(first.path).st_mode & 0o777, 0o600)
        error = self.assertRaises(LockedError, DataDirectoryLock(data_dir).acquire)
        self.assertIn(f"in use by process {os.getpid()}", str(error))
        self.assertIn("--database", str(error))
        self.assertNotIn("\n", str(error))
        first.release()
        again = DataDirectoryLock(data_dir)
        again.acquire()
        again.release()

    def test_service_refuses_to_start(self) -> None:
        """A server whose data directory is locked cannot start; one that can, holds it."""
        data_dir = self.mktemp()
        log: list[str] = []

        def service() -> MedichatService:
            return MedichatService(
                self.clock, _LockStore(log), SessionRegistry(),  # type: ignore[arg-type]
                TimerWheel(self.clock), ThreadPool(), _WebSockets(),  # type: ignore[arg-type]
                lock=DataDirectoryLock(data_dir),
            )

        self.clock = Clock()
        running = service()
        running.startService()
        self.successResultOf(running.ready)
        second = service()
        second.startService()
        error = self.failureResultOf(second.ready, CannotStart).value
        self.assertIn("is in use", str(error))
        self.assertEqual(log, ["preflight"], "the second never reached its store")
        self.successResultOf(running.stopService())
        third = service()
        third.startService()
        self.successResultOf(third.ready)
        self.successResultOf(third.stopService())
