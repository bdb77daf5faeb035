"""
Tests for the bounds of the paging cursor (L{medichat.domain.conversations.decode_cursor}).
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from medichat.domain.conversations import decode_cursor, encode_cursor
from medichat.errors import BadRequest
from medichat.model import Conversation

ID = "28ccd489-f588-4d35-99a9-1e74ec2475b2"


def cursor_of(created_text: str) -> str:
    raw = f"{created_text}.{ID}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class CursorBoundsTests(SynchronousTestCase):
    """
    A cursor whose time is too large for the store (a 64-bit integer) is malformed.
    """

    def test_too_many_digits(self) -> None:
        """A 30-digit (or 19-digit) created is refused, not passed to the store."""
        for created in ("1" * 30, "9" * 19):
            with self.assertRaises(BadRequest) as raised:
                decode_cursor(cursor_of(created))
            self.assertTrue(raised.exception.detail.startswith("cursor: malformed"))

    def test_year_9999(self) -> None:
        """The latest time medichat can write (year 9999) still round-trips."""
        latest = 253_402_300_799_999_999
        cursor = encode_cursor(Conversation(ID, latest, "c1", "C"))
        self.assertEqual(decode_cursor(cursor), (latest, ID))
