"""
Tests for the login failure limits of L{medichat.domain.accounts.Accounts}: one address
cannot lock an account out for everyone else, a blocked address does not stop a correct
password from another one, and failures and lockouts are logged without the password.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from medichat.errors import RateLimited, StoreUnavailable
from tests.domain.test_accounts import EMAIL, PASSWORD, StoreTestCase


class LoginLimitTests(StoreTestCase):
    """
    The per-address and per-account limits, with three failures allowed per minute.
    """

    async def setUp(self) -> None:  # type: ignore[override]  # trial waits for it
        await super().setUp()
        await self.accounts.add_employee(EMAIL, "Ann", PASSWORD)
        self.events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )

    async def test_one_address_cannot_lock_the_account(self) -> None:
        """However often one address fails on an account, the owner logs in from elsewhere."""
        for _ in range(3):
            await self.login_fails(EMAIL, "wrong password", "203.0.113.66")
        for _ in range(5):
            with self.assertRaises(RateLimited):
                await self.accounts.login(EMAIL, "wrong password", "203.0.113.66")
        await self.accounts.login(EMAIL, PASSWORD, "198.51.100.7")

    async def test_blocked_address_only(self) -> None:
        """A blocked address is refused even with the right password; others are not."""
        for email in ("a@example.org", "b@example.org", "c@example.org"):
            await self.login_fails(email, "wrong password", "203.0.113.66")
        with self.assertRaises(RateLimited):
            await self.accounts.login(EMAIL, PASSWORD, "203.0.113.66")
        await self.accounts.login(EMAIL, PASSWORD, "198.51.100.7")

    async def test_many_addresses_lock_the_account(self) -> None:
        """Failures on one account from as many addresses as the limit lock it everywhere."""
        for address in ("203.0.113.1", "203.0.113.2"):
            for _ in range(2):
                await self.login_fails(EMAIL, "wrong password", address)
        await self.accounts.login(EMAIL, PASSWORD, "198.51.100.7")
        for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            await self.login_fails(EMAIL, "wrong password", address)
        with self.assertRaises(RateLimited):
            await self.accounts.login(EMAIL, PASSWORD, "198.51.100.8")

    async def test_logged(self) -> None:
        """Failures and lockouts are logged with address and account, never the password."""
        for _ in range(3):
            await self.login_fails(EMAIL, "hunter2 secret", "203.0.113.66")
        with self.assertRaises(RateLimited):
            await self.accounts.login(EMAIL, "hunter2 secret", "203.0.113.66")
        failed = [e for e in self.events if e["log_format"].startswith("login failed")]
        self.assertEqual(len(failed), 3)
        self.assertEqual((failed[0]["email"], failed[0]["address"]), (EMAIL, "203.0.113.66"))
        locked = [e for e in self.events if e["log_format"].startswith("too many failed")]
        self.assertEqual(len(locked), 1)
        self.assertEqual(locked[0]["log_level"], LogLevel.warn)
        self.assertEqual(locked[0]["address"], "203.0.113.66")
        refused = [e for e in self.events if e["log_format"].startswith("login refused")]
        self.assertEqual(len(refused), 1)
        self.assertEqual((refused[0]["email"], refused[0]["address"]), (EMAIL, "203.0.113.66"))
        for event in self.events:
            self.assertNotIn("hunter2", repr(event))


class OutageLimitTests(StoreTestCase):
    """
    Logins that fail because the store cannot answer are not counted as failed logins.
    """

    async def test_store_failure_not_counted(self) -> None:
        """Attempts during an outage leave the limits as they were once it ends."""
        await self.accounts.add_employee(EMAIL, "Ann", PASSWORD)
        find = self.store.find_employee

        def unavailable(email: str) -> Any:
            return fail(StoreUnavailable("the database is away"))

        self.store.find_employee = unavailable  # type: ignore[method-assign]
        for _ in range(5):
            with self.assertRaises(StoreUnavailable):
                await self.accounts.login(EMAIL, PASSWORD, "203.0.113.66")
        self.store.find_employee = find  # type: ignore[method-assign]
        for _ in range(2):
            await self.login_fails(EMAIL, "wrong password", "203.0.113.66")
        await self.accounts.login(EMAIL, PASSWORD, "203.0.113.66")
