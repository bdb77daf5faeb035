"""
Tests for the operator-facing parts of L{medichat.app.tap}: C{--trusted-proxy}, TLS
files of C{--listen}, and a server that cannot start.
"""

from __future__ import annotations

import os
from ipaddress import ip_network
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from medichat.app._datalock import DataDirectoryLock
from medichat.app.tap import CannotStart, Options, makeService
from medichat.domain.cluster_presence import ClusterPresence, NodeService


class TrustedProxyOptionTests(SynchronousTestCase):
    """
    C{--trusted-proxy} takes IPs and CIDRs, repeatedly, and refuses anything else.
    """

    def test_repeatable(self) -> None:
        """Each --trusted-proxy adds a network."""
        options = Options()
        options.parseOptions(["--trusted-proxy", "10.0.0.1", "--trusted-proxy", "fd00::/8"])
        self.assertEqual(
            options["trusted-proxy"], [ip_network("10.0.0.1/32"), ip_network("fd00::/8")]
        )

    def test_default(self) -> None:
        """No proxy is trusted unless given."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["trusted-proxy"], [])

    def test_bad(self) -> None:
        """A host name or a malformed network is a usage error that says what is expected."""
        for bad in ("proxy.example", "10.0.0.0/33"):
            with self.subTest(bad=bad):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, ["--trusted-proxy", bad]
                )
                self.assertIn("--trusted-proxy needs an IP or a CIDR", str(error))


class TLSOptionTests(SynchronousTestCase):
    """
    A TLS key or certificate that cannot be used is a usage error of --listen.
    """

    def test_missing_and_garbage(self) -> None:
        """A missing file and a file that is not PEM are one-line usage errors."""
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not PEM\n")
        for path in (self.mktemp(), garbage):
            with self.subTest(path=path):
                error = self.assertRaises(
                    usage.UsageError,
                    Options().parseOptions,
                    ["--listen", f"ssl:0:privateKey={path}:certKey={path}"],
                )
                self.assertTrue(str(error).startswith("--listen: "), str(error))
                self.assertNotIn("\n", str(error))


class CannotStartTests(TestCase):
    """
    In-process (as tests run it), a server that cannot start logs one line and fails
    C{ready}; it does not end the process.
    """

    async def test_port_taken(self) -> None:
        """A taken port: ready fails with CannotStart, logged once, without a traceback."""
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        blocker = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        options = Options()
        options.parseOptions(
            [
                "--data-dir", self.mktemp(),
                "--listen", f"tcp:{blocker.getHost().port}:interface=127.0.0.1",
            ]
        )
        service: Any = makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        error = await self.assertFailure(service.ready, CannotStart)
        self.assertIn("Address already in use", str(error))
        lines = [e for e in events if e["log_format"].startswith("medichat cannot start")]
        self.assertEqual(len(lines), 1)
        self.assertNotIn("log_failure", lines[0])
        self.assertEqual(self.flushLoggedErrors(), [])


class ClusterWiringTests(SynchronousTestCase):
    """
    PostgreSQL gets presence in the store and a heartbeating node; SQLite in-process
    presence and the data directory's lock.
    """

    def test_options(self) -> None:
        """--node-ttl defaults to 15 s and --close-spread to 2 s; both take given values."""
        options = Options()
        options.parseOptions([])
        self.assertEqual((options["node-ttl"], options["close-spread"]), (15.0, 2.0))
        options = Options()
        options.parseOptions(["--node-ttl", "5", "--close-spread", "0"])
        self.assertEqual((options["node-ttl"], options["close-spread"]), (5.0, 0.0))
        for args in (["--node-ttl", "0"], ["--close-spread", "-1"], ["--close-spread", "x"],
                     ["--close-spread", "5", "--shutdown-timeout", "5"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, args)

    def test_postgresql(self) -> None:
        """With --database: a node with the given TTL, cluster presence, no file lock."""
        options = Options()
        options.parseOptions(
            ["--data-dir", self.mktemp(), "--database", "postgresql://u@127.0.0.1:1/x",
             "--node-ttl", "6"]
        )
        service: Any = makeService(options, reactor)
        self.assertIsInstance(service._node, NodeService)
        self.assertEqual((service._node.ttl, service._node.interval), (6.0, 1.2))
        self.assertIsInstance(service._node._presence, ClusterPresence)
        self.assertIsNone(service._lock)

    def test_sqlite(self) -> None:
        """Without --database: no node, and the data directory's lock."""
        options = Options()
        data_dir = self.mktemp()
        options.parseOptions(["--data-dir", data_dir])
        service: Any = makeService(options, reactor)
        self.assertIsNone(service._node)
        self.assertIsInstance(service._lock, DataDirectoryLock)
        self.assertEqual(service._lock.path, os.path.join(os.path.abspath(data_dir),
                                                          "medichat.lock"))
