"""
Tests for L{medichat.stomp.registry}: the live sessions of this process, and the observer
that ends them when their login is revoked.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from medichat.model import User
from medichat.stomp.registry import RevocationObserver, SessionRegistry

NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
OTHER_NURSE = "5b1f6c1e-6f0e-4a39-9a51-2b9a7c1d2e3f"


class _Session:
    """A live session that records how it was ended."""

    def __init__(self, user_id: str, login: str | None) -> None:
        self.user: User | None = User(user_id, "n", "employee", session_id=login)
        self.ended: str | None = None

    def end(self, message: str, detail: str = "") -> None:
        self.ended = message

    def shutdown(self) -> None:
        self.ended = "shutdown"


class RevocationObserverTests(SynchronousTestCase):
    """
    L{RevocationObserver} ends the sessions of a revoked login, or of a whole employee.
    """

    def setUp(self) -> None:
        self.registry = SessionRegistry()
        self.phone = _Session(NURSE, "login-phone")
        self.desk = _Session(NURSE, "login-desk")
        self.colleague = _Session(OTHER_NURSE, "login-colleague")
        for session in (self.phone, self.desk, self.colleague):
            self.registry.add(session)
        self.observer = RevocationObserver(self.registry)

    def test_logout_ends_that_login_only(self) -> None:
        """A logout (both ids given) ends only the sessions of that login session."""
        self.observer("login-phone", NURSE)
        self.assertEqual(
            [self.phone.ended, self.desk.ended, self.colleague.ended],
            ["session revoked", None, None],
        )

    def test_all_logins_of_employee(self) -> None:
        """A password change or disablement (no session id) ends all of the employee's."""
        self.observer(None, NURSE)
        self.assertEqual(
            [self.phone.ended, self.desk.ended, self.colleague.ended],
            ["session revoked", "session revoked", None],
        )

    def test_nothing_named(self) -> None:
        """Neither id given ends nothing (not the sessions that have no login session)."""
        bearer = _Session(OTHER_NURSE, None)
        self.registry.add(bearer)
        self.observer(None, None)
        self.assertIsNone(bearer.ended)
        self.assertEqual(self.registry.end_sessions(), 0)


class SessionRegistryTests(SynchronousTestCase):
    """
    L{SessionRegistry} knows the live sessions by user until they are removed.
    """

    def test_add_remove(self) -> None:
        """Sessions are found by user until removed; removing twice is harmless."""
        registry = SessionRegistry()
        first, second = _Session(NURSE, None), _Session(NURSE, None)
        registry.add(first)
        registry.add(second)
        self.assertEqual(registry.sessions_of(NURSE), {first, second})
        registry.remove(first)
        registry.remove(first)
        self.assertEqual(registry.sessions_of(NURSE), {second})

    def test_shutdown(self) -> None:
        """Shutdown ends every live session and says how many."""
        registry = SessionRegistry()
        sessions = [_Session(NURSE, None), _Session(OTHER_NURSE, None)]
        for session in sessions:
            registry.add(session)
        self.assertEqual(registry.shutdown(), 2)
        self.assertEqual([s.ended for s in sessions], ["shutdown", "shutdown"])
