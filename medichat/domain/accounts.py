"""
Employee accounts: adding nurses, their passwords, logging in and out, disabling.

Failed logins are limited so that guessing is slow and so that no one address can lock
anyone else out (C{max_failures} per C{failure_window}, 10 per 5 minutes by default):

  - B{per address}: an address with C{max_failures} failures (on any accounts) is refused
    until the window frees up, even with a right password.  Other addresses are not
    affected, so behind a proxy give C{--trusted-proxy} or every client shares one address.
  - B{per account}: an account is refused from everywhere only once failures on it came from
    C{max_failures} different addresses within the window.  One hostile address alone
    cannot trigger it: it is blocked by the per-address limit first.  A successful login
    clears the account's count.

Each failure is logged (account and address, never the password), each limit once when
it is reached, and each refused attempt.

No HTTP here: the REST edge and C{medichat-admin} both call L{Accounts}.  Passwords are
hashed with argon2id; a login makes a L{LoginSession} whose random token goes to the
client as a cookie and is stored only as its SHA-256 (see
L{medichat.auth.checkers.SessionCookieChecker}, which checks it on later requests).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from typing import Protocol, TypeVar

import argon2
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from medichat._ratelimit import SlidingWindowLimiter
from medichat.auth.checkers import DEFAULT_SESSION_TTL, hash_session_token
from medichat.errors import BadRequest, NotFound, RateLimited, StoreError, Unauthorized
from medichat.interfaces import IStore
from medichat.model import (
    DISPLAY_NAME_RULE,
    Employee,
    LoginSession,
    User,
    is_blank,
    is_display_name,
    micros,
    new_id,
)

T = TypeVar("T")

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_NAME_LENGTH = 200
MAX_EMAIL_LENGTH = 254

LOGIN_FAILED = "invalid email or password"
TOO_MANY_FAILURES = "too many failed logins; try again later"

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
EMAIL_CONTROLS = "email: must not hold control characters"


class BlockingRunner(Protocol):
    """
    Runs a CPU-heavy call (argon2) somewhere that does not block the reactor.
    """

    def __call__(self, f: Callable[[], T], /) -> Deferred[T]:
        """
        Call C{f} and fire with its result (or fail with its exception).
        """


def run_here(f: Callable[[], T]) -> Deferred[T]:
    """
    The default L{BlockingRunner}: call C{f} at once, in this thread.
    """
    try:
        return succeed(f())
    except Exception:
        return fail()


def normalise_email(email: str) -> str:
    """
    The form in which emails are stored and compared: stripped, lower case.
    """
    return email.strip().lower()


class Accounts:
    """
    The employee accounts domain service.

    @ivar session_ttl: seconds a login session lives without use.
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        session_ttl: int = DEFAULT_SESSION_TTL,
        hasher: argon2.PasswordHasher | None = None,
        *,
        run_blocking: BlockingRunner = run_here,
        max_failures: int = 10,
        failure_window: float = 300.0,
    ) -> None:
        """
        @param store: where employees and login sessions are kept.
        @param clock: the time source.
        @param session_ttl: seconds a login session lives without use; the
            L{medichat.auth.checkers.SessionCookieChecker} should slide it by the same.
        @param hasher: the argon2id password hasher (its parameters are the cost).
        @param run_blocking: runs argon2 hashing and verification; pass a thread pool runner
            in a server so that a login does not stall the reactor.
        @param max_failures: failed logins allowed per client address, and different
            failing addresses allowed per email, within C{failure_window} seconds; more are
            refused with L{RateLimited} (see the module's docstring).
        """
        if session_ttl <= 0:
            raise ValueError("the session ttl must be a positive number of seconds")
        self._store = store
        self._clock = clock
        self.session_ttl = session_ttl
        self._hasher = hasher if hasher is not None else argon2.PasswordHasher()
        self._run_blocking = run_blocking
        # Counts the different addresses that failed on an account, not its failures.
        self._failures_by_email = SlidingWindowLimiter(max_failures, failure_window)
        self._failures_by_address = SlidingWindowLimiter(max_failures, failure_window)
        # Whether an address failed on an account within the window (one event each).
        self._failed_pairs = SlidingWindowLimiter(1, failure_window, max_keys=50_000)
        # Bumped by each successful login, so that the pairs counted before it no longer
        # count; only real accounts log in, so this holds one entry per employee at most.
        self._generations: dict[str, int] = {}
        self._dummy_hash: str | None = None
        self._observers: list[Callable[[str | None, str | None], None]] = []

    # ----------------------------------------------------------------------------------
    # Administration

    def add_employee(self, email: str, name: str, password: str) -> Deferred[Employee]:
        """
        Add an enabled employee account.

        @raise BadRequest: (asynchronously) for a malformed email, an empty name or a
            password shorter than 8 characters.
        @raise medichat.interfaces.DuplicateError: (asynchronously) if the email is taken.
        """
        return Deferred.fromCoroutine(self._add_employee(email, name, password))

    async def _add_employee(self, email: str, name: str, password: str) -> Employee:
        email = _valid_email(email)
        name = name.strip()
        if is_blank(name):
            raise BadRequest("name must not be empty")
        if not is_display_name(name):
            raise BadRequest(f"name {DISPLAY_NAME_RULE}")
        if len(name) > MAX_NAME_LENGTH:
            raise BadRequest(f"name must be at most {MAX_NAME_LENGTH} characters")
        _check_password(password)
        password_hash = await self._run_blocking(lambda: self._hasher.hash(password))
        employee = Employee(
            id=new_id(),
            email=email,
            name=name,
            password_hash=password_hash,
            disabled=False,
            created=micros(self._clock.seconds()),
            last_login=None,
        )
        await self._store.add_employee(employee)
        return employee

    def set_password(self, email: str, password: str) -> Deferred[None]:
        """
        Give an employee a new password, and end all their login sessions.

        @raise BadRequest: (asynchronously) for a password shorter than 8 characters.
        @raise NotFound: (asynchronously) if there is no such employee.
        """
        return Deferred.fromCoroutine(self._set_password(email, password))

    async def _set_password(self, email: str, password: str) -> None:
        _check_password(password)
        employee = await self._existing(email)
        password_hash = await self._run_blocking(lambda: self._hasher.hash(password))
        await self._store.update_employee(employee.id, password_hash=password_hash)
        await self._revoke(employee_id=employee.id, reason="new password")

    def set_disabled(self, email: str, disabled: bool) -> Deferred[None]:
        """
        Disable or re-enable an employee; disabling ends all their login sessions.

        @raise NotFound: (asynchronously) if there is no such employee.
        """
        return Deferred.fromCoroutine(self._set_disabled(email, disabled))

    async def _set_disabled(self, email: str, disabled: bool) -> None:
        employee = await self._existing(email)
        await self._store.update_employee(employee.id, disabled=disabled)
        if disabled:
            await self._revoke(employee_id=employee.id, reason="account disabled")

    def list_employees(self) -> Deferred[list[Employee]]:
        """
        Every employee, ordered by email.
        """
        return self._store.list_employees().addCallback(list)

    # ----------------------------------------------------------------------------------
    # Logging in and out

    def login(self, email: str, password: str, client_address: str) -> Deferred[tuple[str, User]]:
        """
        Check an employee's password and open a login session.

        An unknown email, a wrong password and a disabled account all fail alike, after the
        same amount of argon2 work, so that a caller learns nothing about which accounts
        exist.

        @param client_address: the client's address, for rate limiting.
        @return: a L{Deferred} firing with C{(token, user)}: the session token for the
            cookie (shown once, stored only hashed) and the employee's L{User}.
        @raise Unauthorized: (asynchronously) C{"invalid email or password"}.
        @raise BadRequest: (asynchronously) for an email with control characters.
        @raise RateLimited: (asynchronously) after too many failures for this email or
            from this address within the window.
        """
        return Deferred.fromCoroutine(self._login(email, password, client_address))

    async def _login(self, email: str, password: str, client_address: str) -> tuple[str, User]:
        email = normalise_email(email)
        _refuse_controls(email)
        well_formed = len(email) <= MAX_EMAIL_LENGTH and _EMAIL.fullmatch(email) is not None
        # Malformed emails share one key, so that long junk cannot fill the limiter's memory.
        email_key = email if well_formed else ""
        attempted = self._clock.seconds()
        self._refuse_if_limited(email_key, client_address, attempted)
        # Counted as failures before the slow check, so that attempts made in parallel
        # cannot outrun the limit; a success takes its count back.
        pair = f"{email_key}\n{self._generations.get(email_key, 0)}\n{client_address}"
        new_address = self._failed_pairs.retry_after(pair, attempted) is None
        if new_address:
            self._failures_by_email.hit(email_key, attempted)
        self._failed_pairs.hit(pair, attempted)
        self._failures_by_address.hit(client_address, attempted)
        try:
            employee = await self._store.find_employee(email) if well_formed else None
        except StoreError:
            # Not the client's failure: take the counts back.
            self._failures_by_address.forgive(client_address, attempted)
            self._failed_pairs.forgive(pair, attempted)
            if new_address:
                self._failures_by_email.forgive(email_key, attempted)
            raise
        stored_hash = employee.password_hash if employee is not None else None
        matched = await self._run_blocking(lambda: self._verify(stored_hash, password))
        if employee is None or not matched or employee.disabled:
            self._log_failure(email_key, client_address, attempted)
            raise Unauthorized(LOGIN_FAILED)
        self._failures_by_email.reset(email_key)
        self._failed_pairs.reset(pair)
        self._generations[email_key] = self._generations.get(email_key, 0) + 1
        self._failures_by_address.forgive(client_address, attempted)

        new_hash = None
        if self._hasher.check_needs_rehash(employee.password_hash):
            new_hash = await self._run_blocking(lambda: self._hasher.hash(password))
        now_us = micros(self._clock.seconds())
        await self._store.update_employee(employee.id, password_hash=new_hash, last_login=now_us)
        token = secrets.token_urlsafe(32)
        session = LoginSession(
            id=new_id(),
            employee_id=employee.id,
            token_hash=hash_session_token(token),
            created=now_us,
            expires_at=now_us + self.session_ttl * 1_000_000,
            revoked=False,
        )
        await self._store.add_login_session(session)
        self._log.info(
            "employee {email} logged in from {address}", email=email, address=client_address
        )
        user = User(
            user_id=employee.id,
            user_name=employee.name,
            user_role="employee",
            expires_at=session.expires_at,
            session_id=session.id,
        )
        return token, user

    def logout(self, token: str) -> Deferred[bool]:
        """
        Revoke the login session of C{token}.

        @return: a L{Deferred} firing with C{True} if a live session was revoked (an unknown
            or already revoked token is no error).
        """
        return Deferred.fromCoroutine(self._logout(token))

    async def _logout(self, token: str) -> bool:
        if not token:
            return False
        session = await self._store.find_login_session(hash_session_token(token))
        if session is None or session.revoked:
            return False
        await self._revoke(session_id=session.id, employee_id=session.employee_id, reason="logout")
        return True

    # ----------------------------------------------------------------------------------
    # Revocation observers

    def add_revocation_observer(self, observer: Callable[[str | None, str | None], None]) -> None:
        """
        Call C{observer(session_id, employee_id)} whenever login sessions are revoked: with
        both for a logout, with C{session_id} L{None} when all of an employee's sessions end
        (new password, disabled).  Live connections use it to end themselves.
        """
        self._observers.append(observer)

    def remove_revocation_observer(
        self, observer: Callable[[str | None, str | None], None]
    ) -> None:
        """
        Stop calling C{observer}; an unknown observer is ignored.
        """
        if observer in self._observers:
            self._observers.remove(observer)

    # ----------------------------------------------------------------------------------

    async def _existing(self, email: str) -> Employee:
        _refuse_controls(normalise_email(email))
        employee: Employee | None = await self._store.find_employee(normalise_email(email))
        if employee is None:
            raise NotFound(f"no employee with email {normalise_email(email)}")
        return employee

    async def _revoke(
        self, *, session_id: str | None = None, employee_id: str, reason: str
    ) -> None:
        if session_id is not None:
            await self._store.revoke_login_sessions(session_id=session_id)
            self._log.info(
                "login session {login_session} of employee {employee_id} revoked ({reason})",
                login_session=session_id,
                employee_id=employee_id,
                reason=reason,
            )
        else:
            await self._store.revoke_login_sessions(employee_id=employee_id)
            self._log.info(
                "every login session of employee {employee_id} revoked ({reason})",
                employee_id=employee_id,
                reason=reason,
            )
        for observer in list(self._observers):
            try:
                observer(session_id, employee_id)
            except Exception:
                self._log.failure("revocation observer {observer!r} failed", observer=observer)

    def _refuse_if_limited(self, email_key: str, client_address: str, now: float) -> None:
        waits = [
            wait
            for wait in (
                self._failures_by_email.retry_after(email_key, now),
                self._failures_by_address.retry_after(client_address, now),
            )
            if wait is not None
        ]
        if waits:
            self._log.info(
                "login refused for {email} from {address}: too many failures",
                email=email_key or "(malformed)",
                address=client_address,
            )
            raise RateLimited(TOO_MANY_FAILURES, retry_after=float(math.ceil(max(waits))))

    def _log_failure(self, email_key: str, client_address: str, now: float) -> None:
        """
        Log a failed login, and a limit that it made reach.
        """
        email = email_key or "(malformed)"
        self._log.info(
            "login failed for {email} from {address}", email=email, address=client_address
        )
        # Parallel attempts may all see the limit reached; only the one that reached it
        # (with no attempt refused yet) is the one to log it, which is close enough.
        address_wait = self._failures_by_address.retry_after(client_address, now)
        if address_wait is not None and self._failures_by_address.newest(client_address) == now:
            self._log.warn(
                "too many failed logins from {address}; refusing it for {seconds:.0f} seconds",
                address=client_address,
                seconds=address_wait,
            )
        email_wait = self._failures_by_email.retry_after(email_key, now)
        if email_wait is not None and self._failures_by_email.newest(email_key) == now:
            self._log.warn(
                "too many failed logins for {email} from different addresses; refusing "
                "the account for {seconds:.0f} seconds",
                email=email,
                seconds=email_wait,
            )

    def _verify(self, password_hash: str | None, password: str) -> bool:
        """
        Check C{password} against C{password_hash}, or, when there is no account, against
        a hash of nothing in particular so that the answer takes as long.  Runs under
        C{run_blocking}.
        """
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
            password_hash = self._dummy_hash
            real = False
        else:
            real = True
        try:
            return self._hasher.verify(password_hash, password) and real
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            self._log.error("an employee's stored password hash is not an argon2 hash")
            return False


def _refuse_controls(email: str) -> None:
    """
    Refuse an email with control characters: no address holds one, and a NUL could not
    even be looked up in PostgreSQL.

    @raise BadRequest: if C{email} holds a C0 or C1 control character.
    """
    if _CONTROL.search(email):
        raise BadRequest(EMAIL_CONTROLS)


def _valid_email(email: str) -> str:
    email = normalise_email(email)
    _refuse_controls(email)
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise BadRequest(f"not an email address: {email!r}")
    return email


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
