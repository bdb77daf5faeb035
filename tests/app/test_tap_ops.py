"""
Tests for the operator-facing options of L{medichat.app.tap}: C{--trusted-proxy}.
"""

from __future__ import annotations

from ipaddress import ip_network

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from medichat.app.tap import Options


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
