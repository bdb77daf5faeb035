"""
Tests for L{medichat.http.forwarded}: the client address behind trusted proxies, and the
login limits that use it over the REST API.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from medichat.http.forwarded import forwarded_client, parse_trusted_proxy
from tests.http.test_rest import EMAIL, PASSWORD, APITestCase

TRUSTED = (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))


class ForwardedClientTests(SynchronousTestCase):
    """
    L{forwarded_client} takes the rightmost untrusted hop, only from a trusted peer.
    """

    def client(self, peer: str, forwarded: str | None = None, xff: str | None = None) -> str:
        return forwarded_client(
            peer,
            [forwarded] if forwarded is not None else [],
            [xff] if xff is not None else [],
            TRUSTED,
        )

    def test_untrusted_peer(self) -> None:
        """Headers from a peer that is not a trusted proxy are ignored."""
        self.assertEqual(self.client("192.0.2.1", xff="198.51.100.7"), "192.0.2.1")
        self.assertEqual(self.client("192.0.2.1", forwarded="for=198.51.100.7"), "192.0.2.1")

    def test_x_forwarded_for(self) -> None:
        """The rightmost hop that is no trusted proxy is the client; hops left of it are ignored."""
        self.assertEqual(self.client("10.0.0.1", xff="198.51.100.7"), "198.51.100.7")
        self.assertEqual(
            self.client("10.0.0.1", xff="1.2.3.4, 198.51.100.7, 10.0.0.2"), "198.51.100.7"
        )
        self.assertEqual(self.client("10.0.0.1", xff="10.0.0.3, 10.0.0.2"), "10.0.0.3")

    def test_forwarded(self) -> None:
        """RFC 7239 Forwarded, with quoted IPv6 and ports, wins over X-Forwarded-For."""
        self.assertEqual(
            self.client(
                "10.0.0.1",
                forwarded='for=1.2.3.4, for="[2001:DB9::17]:4711";proto=https, for=10.0.0.2',
                xff="5.6.7.8",
            ),
            "2001:db9::17",
        )
        self.assertEqual(self.client("10.0.0.1", forwarded='For="192.0.2.9:80"'), "192.0.2.9")

    def test_no_or_unusable_hop(self) -> None:
        """No header, or a hop that is not an address, leaves the peer's address."""
        self.assertEqual(self.client("10.0.0.1"), "10.0.0.1")
        self.assertEqual(self.client("10.0.0.1", xff="unknown"), "10.0.0.1")
        self.assertEqual(self.client("10.0.0.1", forwarded="for=_hidden"), "10.0.0.1")
        self.assertEqual(self.client("10.0.0.1", xff=" , "), "10.0.0.1")

    def test_parse_trusted_proxy(self) -> None:
        """An IP or CIDR is accepted; anything else is a ValueError."""
        self.assertEqual(parse_trusted_proxy("10.1.2.3"), ip_network("10.1.2.3/32"))
        self.assertEqual(parse_trusted_proxy(" fd00::/8 "), ip_network("fd00::/8"))
        for bad in ("", "proxy.example", "10.0.0.1/33", "10.0.0.1/8"):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, parse_trusted_proxy, bad)


class ProxiedLoginTests(APITestCase):
    """
    Behind a trusted proxy (the test client's 127.0.0.1), failed logins from one client do
    not lock out a nurse logging in correctly from another.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.api.trusted_proxies = (ip_network("127.0.0.0/8"),)

    async def login_from(self, address: str, password: str) -> Any:
        return await self.request(
            "POST",
            "/api/v1/auth/login",
            json_body={"email": EMAIL, "password": password},
            headers={"X-Forwarded-For": address},
        )

    async def test_one_client_cannot_lock_out_others(self) -> None:
        """Eleven failures from one client: it gets 429, a nurse elsewhere logs in."""
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        for _ in range(10):
            reply = await self.login_from("203.0.113.66", "wrong password")
            self.assertEqual(reply.status, 401)
        reply = await self.login_from("203.0.113.66", PASSWORD)
        self.assertEqual(reply.status, 429)
        reply = await self.login_from("198.51.100.7", PASSWORD)
        self.assertEqual(reply.status, 200, reply.body)
        failed = [e for e in events if e["log_format"].startswith("login failed")]
        self.assertEqual({e["address"] for e in failed}, {"203.0.113.66"})
