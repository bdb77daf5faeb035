"""
Tests for the access-log wiring of L{medichat.app.tap}: C{--audit-retention}, the pruner
that runs once the store is up, and the trusted proxies the WebSocket carrier is given.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from medichat.app.tap import Options, makeService
from medichat.domain.access import YEAR, AccessLogPruner


class AuditRetentionOptionTests(SynchronousTestCase):
    """
    --audit-retention defaults to five years and refuses less than two.
    """

    def test_default(self) -> None:
        """Five years (of 365.25 days)."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["audit-retention"], 5 * YEAR)

    def test_values(self) -> None:
        """Years, days or seconds."""
        for text, seconds in (("7y", 7 * YEAR), ("800d", 800 * 86400),
                              ("63115200", 63115200)):
            options = Options()
            options.parseOptions(["--audit-retention", text])
            self.assertEqual(options["audit-retention"], seconds)

    def test_refused(self) -> None:
        """Less than two years, or no duration, is a usage error naming the option."""
        for bad in ("1y", "365d", "0", "forever", "-5y"):
            with self.subTest(bad=bad):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, ["--audit-retention", bad]
                )
                self.assertIn("--audit-retention", str(error))

    def test_wired(self) -> None:
        """The service prunes the access log with the retention once the store is up."""
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--audit-retention", "3y",
                              "--trusted-proxy", "10.0.0.0/8"])
        service: Any = makeService(options, reactor)
        [pruner] = [p for p in service._after_store if isinstance(p, AccessLogPruner)]
        self.assertEqual(pruner.retention, 3 * YEAR)
        self.assertEqual(service._websockets.trusted_proxies, (ip_network("10.0.0.0/8"),))
