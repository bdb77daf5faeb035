"""
Cookie-authenticated STOMP sessions follow their login session: the real SQL store (run
inline by L{medichat.testing.MemoryStore}), the real accounts service and the real
session-cookie checker, with timers on a memory clock; nothing waits for the reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from zope.interface import implementer
from zope.interface.verify import verifyObject

from medichat.auth.checkers import SessionCookieChecker
from medichat.auth.credentials import SessionCookie
from medichat.auth.realm import build_portal
from medichat.domain.accounts import Accounts, run_here
from medichat.domain.presence import InProcessPresence
from medichat.interfaces import ICarrier, IConversations
from medichat.pubsub.hub import InProcessHub
from medichat.stomp.registry import RevocationObserver
from medichat.stomp.session import CLOSE_POLICY, StompConfig, StompServices, StompSession
from medichat.testing import MemoryStore
from tests._inline import InlineTestCase
from tests._stomp import NoConversations, realistic_clock


@implementer(ICarrier)
class _Carrier:
    """Records what the session sends and whether it closed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: int | None = None

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed = code

    def abort(self) -> None:
        self.closed = -1


class RevalidationTests(InlineTestCase):
    """
    Logout, disablement and expiry reach live STOMP sessions.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.clock = realistic_clock()
        self.store = MemoryStore(self.clock)
        yield self.store.start()
        self.addCleanup(self.store.stop)
        self.accounts = Accounts(self.store, self.clock, session_ttl=600, run_blocking=run_here)
        yield self.accounts.add_employee("nurse@example.org", "Nurse", "correct horse")
        checker = SessionCookieChecker(600, store=self.store, clock=self.clock)
        hub = InProcessHub("t")
        self.presence = InProcessPresence(hub)
        self.services = StompServices(
            hub=hub, presence=self.presence, portal=build_portal([checker]), clock=self.clock,
            conversations=NoConversations(), config=StompConfig(revalidate_interval=30.0),
        )

    @inlineCallbacks
    def connect(self) -> Any:
        token, _user = yield self.accounts.login("nurse@example.org", "correct horse", "1.2.3.4")
        carrier = _Carrier()
        session = StompSession(carrier, self.services, credentials=SessionCookie(token))
        session.connection_made()
        session.data_received(b"CONNECT\naccept-version:1.2\n\n\x00")
        yield self.settle(lambda: carrier.sent)
        self.assertTrue(carrier.sent[0].startswith(b"CONNECTED\n"), carrier.sent)
        return token, carrier, session

    def settle(self, predicate: Any) -> None:
        """What the session does must have happened already: the store answers inline."""
        if not predicate():
            self.fail("nothing happened")

    @inlineCallbacks
    def test_disabled_employee_is_ended(self) -> Any:
        """Disabling the account (from any process) ends the live session with ERROR."""
        _token, carrier, _session = yield self.connect()
        self.assertEqual(self.successResultOf(self.presence.online_employees()), 1)
        yield self.accounts.set_disabled("nurse@example.org", True)
        self.clock.advance(31)
        yield self.settle(lambda: carrier.closed is not None)
        self.assertIn(b"message:session revoked", carrier.sent[-1])
        self.assertEqual(self.successResultOf(self.presence.online_employees()), 0)

    @inlineCallbacks
    def test_logout_ends_session(self) -> Any:
        """Logging out ends the live session at the next re-check."""
        token, carrier, _session = yield self.connect()
        yield self.accounts.logout(token)
        self.clock.advance(31)
        yield self.settle(lambda: carrier.closed is not None)
        self.assertTrue(carrier.sent[-1].startswith(b"ERROR\n"))

    @inlineCallbacks
    def test_valid_session_slides(self) -> Any:
        """A session still valid stays open past its original expiry as it slides."""
        _token, carrier, session = yield self.connect()
        first = session.user.expires_at
        for _ in range(12):  # 12 x 61 s > the 600 s ttl; each re-check slides it by 61 s
            before = session.user.expires_at
            self.clock.advance(61)
            yield self.settle(lambda before=before: session.user.expires_at != before
                              or carrier.closed is not None)
        self.assertIsNone(carrier.closed)
        self.assertGreater(session.user.expires_at, first + 600 * 1_000_000)

    @inlineCallbacks
    def test_logout_ends_only_that_login(self) -> Any:
        """Logout on one device ends that login's sessions at once; the other device's stays."""
        self.accounts.add_revocation_observer(RevocationObserver(self.services.registry))
        token, phone, _ = yield self.connect()
        _other, desk, _ = yield self.connect()
        yield self.accounts.logout(token)
        self.assertEqual(phone.closed, CLOSE_POLICY)
        self.assertIn(b"message:session revoked", phone.sent[-1])
        self.assertIsNone(desk.closed)
        self.assertEqual(self.successResultOf(self.presence.online_employees()), 1)

    @inlineCallbacks
    def test_password_change_ends_all(self) -> Any:
        """A new password ends every live session of the employee at once, on every device."""
        self.accounts.add_revocation_observer(RevocationObserver(self.services.registry))
        _token, phone, _ = yield self.connect()
        _other, desk, _ = yield self.connect()
        yield self.accounts.set_password("nurse@example.org", "battery staple")
        self.assertEqual((phone.closed, desk.closed), (CLOSE_POLICY, CLOSE_POLICY))
        self.assertEqual(self.successResultOf(self.presence.online_employees()), 0)

    def test_fakes_provide_interfaces(self) -> None:
        """The stand-in conversations provide what the session needs."""
        self.assertTrue(verifyObject(IConversations, NoConversations()))
