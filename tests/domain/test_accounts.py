"""
Tests for L{medichat.domain.accounts} and
L{medichat.auth.checkers.SessionCookieChecker}, on the real SQL store run inline
(L{medichat.testing.MemoryStore}), with argon2 run inline too, on a L{Clock}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import argon2
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from medichat._ratelimit import SlidingWindowLimiter
from medichat.auth.checkers import SessionCookieChecker, hash_session_token
from medichat.auth.credentials import SessionCookie
from medichat.domain.accounts import Accounts, run_here
from medichat.errors import (
    AuthenticationFailed,
    BadRequest,
    DuplicateError,
    NotFound,
    RateLimited,
    Unauthorized,
)
from medichat.model import User, micros
from medichat.testing import MemoryStore
from tests._inline import InlineTestCase

T = TypeVar("T")

NOW = 1_700_000_000
TTL = 3600
EMAIL = "nurse@example.org"
PASSWORD = "correct horse"


class CountingHasher(argon2.PasswordHasher):
    """The cheapest real argon2id hasher, counting its verifications."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


class StoreTestCase(InlineTestCase):
    """
    Accounts and a session checker on a fresh in-memory store, driven by a L{Clock};
    nothing waits for the reactor or a thread.
    """

    max_failures = 3

    async def setUp(self) -> None:  # type: ignore[override]  # run inline
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore(self.clock)
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.hasher = CountingHasher()
        self.accounts = Accounts(
            self.store,
            self.clock,
            session_ttl=TTL,
            hasher=self.hasher,
            run_blocking=run_here,
            max_failures=self.max_failures,
            failure_window=60,
        )
        self.checker = SessionCookieChecker(TTL)
        self.checker.attach(self.store, self.clock)
        self.revoked: list[tuple[str | None, str | None]] = []
        self.accounts.add_revocation_observer(
            lambda session_id, employee_id: self.revoked.append((session_id, employee_id))
        )

    async def check(self, token: str) -> User:
        user: User = await self.checker.requestAvatarId(SessionCookie(token))
        return user

    async def reason(self, token: str) -> str:
        try:
            await self.checker.requestAvatarId(SessionCookie(token))
        except AuthenticationFailed as e:
            return e.reason
        raise self.failureException("the cookie was accepted")

    async def login_fails(self, email: str, password: str, address: str = "10.0.0.1") -> str:
        try:
            await self.accounts.login(email, password, address)
        except Unauthorized as e:
            return e.detail
        raise self.failureException("the login succeeded")


class AddEmployeeTests(StoreTestCase):
    """
    Adding employees.
    """

    async def test_add(self) -> None:
        """An added employee is stored enabled, with a normalised email and a hash only."""
        employee = await self.accounts.add_employee("  Nurse@Example.ORG ", " Ann ", PASSWORD)
        self.assertEqual((employee.email, employee.name), (EMAIL, "Ann"))
        self.assertFalse(employee.disabled)
        self.assertEqual(employee.created, micros(NOW))
        self.assertIsNone(employee.last_login)
        self.assertTrue(employee.password_hash.startswith("$argon2id$"))
        self.assertNotIn(PASSWORD, employee.password_hash)
        self.assertEqual(await self.accounts.list_employees(), [employee])

    async def test_invalid(self) -> None:
        """A malformed email, an empty name or a short password are bad requests."""
        for email, name, password in [
            ("nurse", "Ann", PASSWORD),
            ("nurse@", "Ann", PASSWORD),
            ("a b@example.org", "Ann", PASSWORD),
            (EMAIL, "  ", PASSWORD),
            (EMAIL, "Ann", "1234567"),
        ]:
            with self.assertRaises(BadRequest):
                await self.accounts.add_employee(email, name, password)
        self.assertEqual(await self.accounts.list_employees(), [])

    async def test_duplicate(self) -> None:
        """An email taken in any case is a duplicate."""
        await self.accounts.add_employee(EMAIL, "Ann", PASSWORD)
        with self.assertRaises(DuplicateError):
            await self.accounts.add_employee(EMAIL.upper(), "Bob", PASSWORD)

    async def test_hashing_runs_blocking(self) -> None:
        """Hashing goes through the given runner, not the reactor thread."""
        calls: list[Callable[[], Any]] = []

        def runner(f: Callable[[], T]) -> Deferred[T]:
            calls.append(f)
            return Deferred.fromCoroutine(_call(f))

        accounts = Accounts(self.store, self.clock, hasher=self.hasher, run_blocking=runner)
        await accounts.add_employee(EMAIL, "Ann", PASSWORD)
        await accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        self.assertEqual(len(calls), 2)


async def _call(f: Callable[[], T]) -> T:
    return f()


class LoginTests(StoreTestCase):
    """
    Logging in, and the cookie the login gives.
    """

    async def setUp(self) -> None:  # type: ignore[override]  # run inline
        await super().setUp()
        self.employee = await self.accounts.add_employee(EMAIL, "Ann", PASSWORD)

    async def test_login(self) -> None:
        """A login gives a 256-bit token, stored only hashed, and the employee's user."""
        token, user = await self.accounts.login("NURSE@example.org", PASSWORD, "10.0.0.1")
        self.assertGreaterEqual(len(token), 43)
        self.assertEqual(user.user_id, self.employee.id)
        self.assertEqual(user.user_name, "Ann")
        self.assertEqual(user.user_role, "employee")
        self.assertEqual(user.expires_at, micros(NOW + TTL))
        session = await self.store.find_login_session(hash_session_token(token))
        self.assertEqual(session.id, user.session_id)
        self.assertEqual(session.employee_id, self.employee.id)
        self.assertNotEqual(session.token_hash, token)
        stored = await self.store.get_employee(self.employee.id)
        self.assertEqual(stored.last_login, micros(NOW))

    async def test_cookie(self) -> None:
        """The token is a session cookie the checker accepts."""
        token, user = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        self.assertEqual(await self.check(token), user)

    async def test_uniform_failures(self) -> None:
        """Unknown email, wrong password and disabled account fail alike, after a verify."""
        self.assertEqual(
            await self.login_fails("nobody@example.org", PASSWORD), "invalid email or password"
        )
        self.assertEqual(self.hasher.verified, 1)
        self.assertEqual(
            await self.login_fails(EMAIL, "wrong password"), "invalid email or password"
        )
        self.assertEqual(self.hasher.verified, 2)
        await self.accounts.set_disabled(EMAIL, True)
        self.assertEqual(
            await self.login_fails(EMAIL, PASSWORD, "10.0.0.2"), "invalid email or password"
        )
        self.assertEqual(self.hasher.verified, 3)

    async def test_malformed_email(self) -> None:
        """A login with something that is no email fails as any other."""
        self.assertEqual(await self.login_fails("nurse", PASSWORD), "invalid email or password")

    async def test_rehash(self) -> None:
        """A hash made with weaker parameters is replaced on login."""
        stronger = CountingHasher(time_cost=2)
        accounts = Accounts(self.store, self.clock, hasher=stronger)
        await accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        stored = await self.store.get_employee(self.employee.id)
        self.assertNotEqual(stored.password_hash, self.employee.password_hash)
        self.assertFalse(stronger.check_needs_rehash(stored.password_hash))
        await accounts.login(EMAIL, PASSWORD, "10.0.0.1")

    async def test_unknown_cookie(self) -> None:
        """A cookie that names no session is an invalid session."""
        self.assertEqual(await self.reason("no-such-token"), "invalid session")
        self.assertEqual(await self.reason("x" * 600), "invalid session")
        self.assertEqual(await self.reason(""), "missing credentials")

    async def test_sliding_expiry(self) -> None:
        """Use moves the expiry to a ttl from now, at most once a minute."""
        token, _ = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        self.clock.advance(30)
        self.assertEqual((await self.check(token)).expires_at, micros(NOW + TTL))
        self.clock.advance(60)
        self.assertEqual((await self.check(token)).expires_at, micros(NOW + 90 + TTL))
        self.clock.advance(TTL - 1)
        self.assertEqual((await self.check(token)).expires_at, micros(NOW + 89 + 2 * TTL))
        session = await self.store.find_login_session(hash_session_token(token))
        self.assertEqual(session.expires_at, micros(NOW + 89 + 2 * TTL))

    async def test_expiry(self) -> None:
        """An unused session expires after its ttl."""
        token, _ = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        self.clock.advance(TTL)
        self.assertEqual(await self.reason(token), "session expired")

    async def test_logout(self) -> None:
        """Logout revokes the session, once, and tells the observers."""
        token, user = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        other, _ = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        self.assertTrue(await self.accounts.logout(token))
        self.assertEqual(self.revoked, [(user.session_id, self.employee.id)])
        self.assertEqual(await self.reason(token), "session revoked")
        await self.check(other)
        self.assertFalse(await self.accounts.logout(token))
        self.assertFalse(await self.accounts.logout("no-such-token"))
        self.assertEqual(len(self.revoked), 1)

    async def test_set_password(self) -> None:
        """A new password ends every session; only the new password logs in."""
        token, _ = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        await self.accounts.set_password("Nurse@Example.org", "battery staple")
        self.assertEqual(self.revoked, [(None, self.employee.id)])
        self.assertEqual(await self.reason(token), "session revoked")
        await self.login_fails(EMAIL, PASSWORD)
        await self.accounts.login(EMAIL, "battery staple", "10.0.0.1")

    async def test_set_password_invalid(self) -> None:
        """A short password is refused, and an unknown account is not found."""
        with self.assertRaises(BadRequest):
            await self.accounts.set_password(EMAIL, "short")
        with self.assertRaises(NotFound):
            await self.accounts.set_password("nobody@example.org", "battery staple")

    async def test_disable(self) -> None:
        """Disabling ends every session; enabling lets the employee in again."""
        token, _ = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        await self.accounts.set_disabled(EMAIL, True)
        self.assertEqual(self.revoked, [(None, self.employee.id)])
        self.assertEqual(await self.reason(token), "session revoked")
        (listed,) = await self.accounts.list_employees()
        self.assertTrue(listed.disabled)
        await self.accounts.set_disabled(EMAIL, False)
        self.assertEqual(len(self.revoked), 1)
        await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        with self.assertRaises(NotFound):
            await self.accounts.set_disabled("nobody@example.org", True)

    async def test_disabled_cookie(self) -> None:
        """A live session of an employee disabled behind the service's back is refused."""
        token, _ = await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        await self.store.update_employee(self.employee.id, disabled=True)
        self.assertEqual(await self.reason(token), "account disabled")

    async def test_observer_failure(self) -> None:
        """An observer that raises does not keep the others from hearing."""

        def broken(session_id: str | None, employee_id: str | None) -> None:
            raise RuntimeError("observer bug")

        self.accounts.add_revocation_observer(broken)
        heard: list[str | None] = []
        self.accounts.add_revocation_observer(lambda s, e: heard.append(e))
        await self.accounts.set_disabled(EMAIL, True)
        self.assertEqual(heard, [self.employee.id])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.accounts.remove_revocation_observer(broken)
        self.accounts.remove_revocation_observer(broken)


class RateLimitTests(StoreTestCase):
    """
    Failed logins are limited per client address, and per email by the number of
    different addresses that failed on it.
    """

    async def setUp(self) -> None:  # type: ignore[override]  # run inline
        await super().setUp()
        await self.accounts.add_employee(EMAIL, "Ann", PASSWORD)

    async def test_per_email(self) -> None:
        """After failures from three addresses on an email even the right password waits."""
        for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            await self.login_fails(EMAIL, "wrong password", address)
        self.clock.advance(10)
        with self.assertRaises(RateLimited) as raised:
            await self.accounts.login(EMAIL, PASSWORD, "10.0.0.4")
        self.assertEqual(raised.exception.retry_after, 50)
        self.assertEqual(raised.exception.status, 429)
        self.clock.advance(50)
        await self.accounts.login(EMAIL, PASSWORD, "10.0.0.4")

    async def test_per_address(self) -> None:
        """After three failures from an address, it waits, whatever email it tries."""
        for email in ("a@example.org", "b@example.org", "c@example.org"):
            await self.login_fails(email, "wrong password", "10.0.0.9")
        with self.assertRaises(RateLimited):
            await self.accounts.login(EMAIL, PASSWORD, "10.0.0.9")
        await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")

    async def test_limited_costs_nothing(self) -> None:
        """A refused attempt does no argon2 work and does not extend the wait."""
        for _ in range(3):
            await self.login_fails("x@example.org", "wrong password", "10.0.0.9")
        verified = self.hasher.verified
        # (Failures from one address block that address, not the account: see
        # tests.domain.test_login_limits.)
        for _ in range(5):
            with self.assertRaises(RateLimited):
                await self.accounts.login("x@example.org", "wrong password", "10.0.0.9")
        self.assertEqual(self.hasher.verified, verified)
        self.clock.advance(60)
        await self.login_fails("x@example.org", "wrong password", "10.0.0.9")

    async def test_success_resets_email(self) -> None:
        """A successful login forgets the email's earlier failures."""
        for address in ("10.0.0.1", "10.0.0.2"):
            await self.login_fails(EMAIL, "wrong password", address)
        await self.accounts.login(EMAIL, PASSWORD, "10.0.0.3")
        for address in ("10.0.0.4", "10.0.0.5"):
            await self.login_fails(EMAIL, "wrong password", address)
        await self.accounts.login(EMAIL, PASSWORD, "10.0.0.6")

    async def test_success_not_counted_for_address(self) -> None:
        """Successful logins do not count against their address."""
        await self.login_fails(EMAIL, "wrong password", "10.0.0.1")
        for _ in range(3):
            await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")
        await self.login_fails("x@example.org", "wrong password", "10.0.0.1")
        await self.accounts.login(EMAIL, PASSWORD, "10.0.0.1")

    async def test_parallel_attempts(self) -> None:
        """Attempts in flight at once count at once: parallelism does not beat the limit."""
        attempts = [self.accounts.login(EMAIL, f"guess {i}", f"10.1.0.{i}") for i in range(5)]
        results = []
        for attempt in attempts:
            try:
                await attempt
            except (Unauthorized, RateLimited) as e:
                results.append(type(e))
        self.assertEqual(results, [Unauthorized] * 3 + [RateLimited] * 2)

    async def test_malformed_emails_share_a_key(self) -> None:
        """Malformed emails are limited together, whatever junk they hold."""
        for i in range(3):
            await self.login_fails(f"junk {i}", "wrong password", f"10.2.0.{i}")
        with self.assertRaises(RateLimited):
            await self.accounts.login("more junk", "wrong password", "10.2.0.9")
        await self.accounts.login(EMAIL, PASSWORD, "10.2.0.9")


class SlidingWindowLimiterTests(SynchronousTestCase):
    """
    The failure counter itself.
    """

    def test_window_slides(self) -> None:
        """Each event stops counting a window after it happened."""
        limiter = SlidingWindowLimiter(2, 10)
        limiter.hit("k", 0)
        limiter.hit("k", 5)
        self.assertEqual(limiter.retry_after("k", 6), 4)
        self.assertIsNone(limiter.retry_after("k", 10))
        limiter.hit("k", 10)
        self.assertEqual(limiter.retry_after("k", 12), 3)
        self.assertIsNone(limiter.retry_after("other", 12))

    def test_forgive(self) -> None:
        """A forgiven event no longer counts; forgiving the unknown is harmless."""
        limiter = SlidingWindowLimiter(2, 10)
        limiter.hit("k", 1)
        limiter.hit("k", 2)
        limiter.forgive("k", 2)
        self.assertIsNone(limiter.retry_after("k", 3))
        limiter.forgive("k", 7)
        limiter.forgive("other", 1)
        limiter.forgive("k", 1)
        self.assertEqual(len(limiter), 0)

    def test_bounded(self) -> None:
        """Idle keys are dropped first, then the oldest, past the key limit."""
        limiter = SlidingWindowLimiter(1, 10, max_keys=3)
        for i in range(3):
            limiter.hit(f"old{i}", 0)
        limiter.hit("new0", 20)
        self.assertEqual(len(limiter), 1)
        for i in range(1, 5):
            limiter.hit(f"new{i}", 21)
        self.assertEqual(len(limiter), 3)
        self.assertIsNotNone(limiter.retry_after("new4", 22))
        self.assertIsNone(limiter.retry_after("new0", 22))
