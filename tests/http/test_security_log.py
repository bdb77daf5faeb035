"""
Security events are logged at info or warn, with who and from where, never a password:
failed logins, lockouts, refused origins (REST and the WebSocket endpoint), revoked login
sessions.  (Sessions ended for abuse: L{tests.e2e.test_log_scan}.)
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web.resource import Resource

from medichat.http.forwarded import parse_trusted_proxy
from medichat.http.origins import OriginPolicy
from medichat.http.site import build_root
from tests.http.test_rest import DASHBOARD, EMAIL, HOST, PASSWORD, APITestCase


class SecurityEventTests(APITestCase):
    """
    Each security event leaves one clear line at info or warn.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.events: Any = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )

    def logged(self, text: str) -> list[Any]:
        """The events whose formatted text contains C{text}, each at info or warn."""
        found = [e for e in self.events if text in formatEvent(e)]
        for event in found:
            self.assertIn(event["log_level"], (LogLevel.info, LogLevel.warn), formatEvent(event))
        return found

    def assertNeverLogged(self, secret: str) -> None:
        for event in self.events:
            self.assertNotIn(secret, formatEvent(event))
            self.assertNotIn(secret, repr(event))

    async def test_failed_login(self) -> None:
        """A failed login names the email and address, at info, and not the password."""
        reply = await self.request(
            "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": "not-it-123"}
        )
        self.assertEqual(reply.status, 401)
        (event,) = self.logged("login failed for")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["email"], EMAIL)
        self.assertNeverLogged("not-it-123")

    async def test_lockout(self) -> None:
        """The login that reaches the address limit is logged once, at warn."""
        for _ in range(10):
            reply = await self.request(
                "POST", "/api/v1/auth/login",
                json_body={"email": f"x{_}@example.org", "password": "wrong-wrong"},
            )
            self.assertEqual(reply.status, 401)
        reply = await self.request(
            "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": PASSWORD}
        )
        self.assertEqual(reply.status, 429)
        (lockout,) = self.logged("too many failed logins from")
        self.assertEqual(lockout["log_level"], LogLevel.warn)
        (refused,) = self.logged("login refused for")
        self.assertEqual(refused["email"], EMAIL)
        self.assertNeverLogged(PASSWORD)
        self.assertNeverLogged("wrong-wrong")

    async def test_account_lockout(self) -> None:
        """Failures on one account from ten addresses lock it, logged once at warn."""
        self.api.trusted_proxies = (parse_trusted_proxy("0.0.0.0/0"),)
        for number in range(10):
            reply = await self.request(
                "POST", "/api/v1/auth/login",
                json_body={"email": EMAIL, "password": "wrong-wrong"},
                headers={"X-Forwarded-For": f"203.0.113.{number}"},
            )
            self.assertEqual(reply.status, 401)
        (lockout,) = self.logged("too many failed logins for")
        self.assertEqual(lockout["log_level"], LogLevel.warn)
        self.assertEqual(lockout["email"], EMAIL)

    async def test_refused_origin_rest(self) -> None:
        """A cookie-authenticated change from a foreign origin is logged with the origin."""
        conversation_id = await self.create()
        cookie = await self.login()
        await self.problem(
            403, "POST", f"/api/v1/conversation/{conversation_id}/read",
            cookie=cookie, headers={"Origin": "https://evil.example"},
        )
        (event,) = self.logged("origin https://evil.example not allowed")
        self.assertEqual(event["method"], "POST")
        self.assertNeverLogged(cookie)

    async def test_refused_origin_login(self) -> None:
        """A login from a foreign page is refused and logged."""
        await self.problem(
            403, "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        self.assertEqual(len(self.logged("origin https://evil.example not allowed")), 1)
        self.assertNeverLogged(PASSWORD)

    async def test_refused_origin_websocket(self) -> None:
        """A WebSocket handshake from a foreign origin is refused at the endpoint, logged."""
        root = build_root("/api", Resource(), Resource(), OriginPolicy([DASHBOARD]))
        treq = StubTreq(root)
        headers = {"Upgrade": "websocket", "Connection": "Upgrade",
                   "Origin": "https://evil.example", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        d = treq.get(f"http://{HOST}/api/v1/chat", headers=headers)
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 403)
        (event,) = self.logged("refused WebSocket handshake")
        self.assertEqual(event["origin"], "https://evil.example")

    async def test_logout_revokes(self) -> None:
        """A logout's revoked login session is logged with the employee's id."""
        cookie = await self.login()
        reply = await self.request("POST", "/api/v1/auth/logout", cookie=cookie)
        self.assertEqual(reply.status, 204)
        (event,) = self.logged("revoked (logout)")
        self.assertEqual(event["employee_id"], self.employee.id)
        self.assertNeverLogged(cookie)

    async def test_new_password_and_disable_revoke(self) -> None:
        """A new password and a disabled account each log the revocation of every session."""
        await self.login()
        await self.accounts.set_password(EMAIL, "another good password")
        (event,) = self.logged("revoked (new password)")
        self.assertEqual(event["employee_id"], self.employee.id)
        await self.accounts.set_disabled(EMAIL, True)
        self.assertEqual(len(self.logged("revoked (account disabled)")), 1)
        self.assertNeverLogged("another good password")
