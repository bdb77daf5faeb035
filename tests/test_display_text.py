"""
Tests for the character rules of display names and chat messages (L{medichat.model}), and
their use by the JWT checker, employee accounts, C{medichat-admin} and the conversation
service.
"""

from __future__ import annotations

import io
import os
from typing import Any

import jwt
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from medichat.app.admin import run
from medichat.auth.checkers import JWTChecker
from medichat.auth.credentials import BearerToken
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.errors import AuthenticationFailed, BadRequest
from medichat.model import is_blank, is_display_name
from medichat.pubsub.hub import InProcessHub
from medichat.testing import MemoryStore
from tests._feed import started_feed

NOW = 1_700_000_000
SECRET = b"s" * 32

# Each refused kind: C0, DEL, C1, line and paragraph separators, bidi embeddings and
# overrides (U+202A-202E) and isolates (U+2066-2069).
REFUSED = ["\x00", "\x09", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\u2028", "\u2029",
           "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
           "\u2069"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e", "\u2061",
             "\u3164", "\u115f", "\u1160", "\uffa0", "\u034f", "\u2800"]


class DisplayNameTests(SynchronousTestCase):
    """
    L{is_display_name}: no control, separator or bidi-override characters.
    """

    def test_refused(self) -> None:
        """Every refused character is refused, alone or inside a name."""
        for char in REFUSED:
            self.assertFalse(is_display_name(f"Ann{char}Lee"), repr(char))
            self.assertFalse(is_display_name(char), repr(char))

    def test_accepted(self) -> None:
        """Letters of any script, spaces, punctuation and emoji are fine."""
        for name in ("Ann Lee", "Zoë O'Brien", "李小龙", "محمد", "Ann 👩\u200d⚕️", "שלום"):
            self.assertTrue(is_display_name(name), name)

    def test_lone_surrogate(self) -> None:
        """A lone surrogate is not text."""
        self.assertFalse(is_display_name("a\ud800b"))


class BlankTests(SynchronousTestCase):
    """
    L{is_blank}: nothing visible.
    """

    def test_blank(self) -> None:
        """Whitespace and invisible characters, in any mix, are blank."""
        self.assertTrue(is_blank(""))
        self.assertTrue(is_blank(" \t\n\u00a0\u3000"))
        for char in INVISIBLE:
            self.assertTrue(is_blank(char * 3), repr(char))
            self.assertTrue(is_blank(f" {char}\n{char} "), repr(char))
        self.assertTrue(is_blank("".join(INVISIBLE)))

    def test_not_blank(self) -> None:
        """One visible character is enough."""
        for text in ("a", "\u200b.\u200b", "👍", " 0 "):
            self.assertFalse(is_blank(text), text)


class JWTNameTests(SynchronousTestCase):
    """
    The JWT C{name} claim follows the display-name rule.
    """

    def reason_or_name(self, name: str) -> str:
        clock = Clock()
        clock.advance(NOW)
        checker = JWTChecker(secret=SECRET, clock=clock)
        payload = {"sub": "cust-1", "name": name, "exp": NOW + 600}
        d = checker.requestAvatarId(BearerToken(jwt.encode(payload, SECRET, "HS256")))
        outcome: list[Any] = []
        d.addCallbacks(outcome.append, lambda f: outcome.append(f.trap(AuthenticationFailed)
                                                                and f.value))
        [result] = outcome
        if isinstance(result, AuthenticationFailed):
            return f"refused: {result.reason}"
        return str(result.user_name)

    def test_refused(self) -> None:
        """A name with a refused character is 'invalid claims'."""
        for char in REFUSED:
            self.assertEqual(self.reason_or_name(f"Eve{char}gnp.exe"), "refused: invalid claims")

    def test_invisible_name(self) -> None:
        """A name of invisible characters only counts as absent: the sub is shown."""
        self.assertEqual(self.reason_or_name("\u200b\u2060 "), "cust-1")

    def test_fine(self) -> None:
        """An ordinary name is kept."""
        self.assertEqual(self.reason_or_name("Zoë 李"), "Zoë 李")


class BlankMessageTests(SynchronousTestCase):
    """
    A chat message made of whitespace and invisible characters is blank.
    """

    def test_invisible_only(self) -> None:
        """Zero-width spaces and friends with whitespace: 'message: must not be blank'."""
        store = MemoryStore(Clock())
        hub = InProcessHub()
        service = ConversationService(
            store, hub, Clock(), InProcessPresence(hub), started_feed(store, hub, Clock())
        )
        for text in ("\u200b", "\u200b\u200c\u200d \n\u2060\ufeff", "\u3164\u2800"):
            with self.assertRaises(BadRequest) as raised:
                service.validate_message(text)
            self.assertEqual(raised.exception.detail, "message: must not be blank")
        self.assertEqual(service.validate_message("hi\u200b"), "hi\u200b")


class AdminNameTests(TestCase):
    """
    C{medichat-admin add-employee --name} refuses what a display name may not hold.
    """

    async def admin(self, *argv: str) -> tuple[int, str]:
        stderr = io.StringIO()
        data_dir = os.path.abspath(self.mktemp())
        status: int = await run(
            reactor,
            ["--data-dir", data_dir, "--create", *argv],
            io.StringIO("correct horse"),
            io.StringIO(),
            stderr,
        )
        return status, stderr.getvalue()

    async def test_refused(self) -> None:
        """A bidi override or a control character: exit 1 and a clear message."""
        for name in ("Ann\u202eeeL", "Ann\x1b[31m", "Ann\u2028Lee"):
            status, error = await self.admin("add-employee", "a@example.org", "--name", name)
            self.assertEqual(status, 1, name)
            self.assertEqual(
                error,
                "medichat-admin: name must not contain control characters, line or paragraph "
                "separators, or bidirectional overrides or isolates\n",
            )

    async def test_invisible(self) -> None:
        """A name of invisible characters only is empty."""
        status, error = await self.admin("add-employee", "a@example.org", "--name", "\u200b ")
        self.assertEqual((status, error), (1, "medichat-admin: name must not be empty\n"))

    async def test_token(self) -> None:
        """The token command refuses such a name as a usage error."""
        status, error = await self.admin("token", "--user-id", "u1", "--name", "Ann\u202e")
        self.assertEqual(status, 2)
        self.assertIn("--name must not contain control characters", error)
