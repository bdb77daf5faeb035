"""
Tests for L{medichat.model.is_uuid}: the canonical hyphenated form only, any case.
"""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from medichat.model import is_uuid


def parsed_and_canonical(text: object) -> bool:
    """The definition: what L{uuid.UUID} reads, written back the same (lower case)."""
    try:
        return str(uuid.UUID(text)) == text.lower()  # type: ignore[arg-type, union-attr]
    except (ValueError, AttributeError, TypeError):
        return False


def spellings(value: uuid.UUID) -> list[str]:
    """Ways to write a UUID, canonical or not."""
    text = str(value)
    return [
        text, text.upper(), text[:9] + text[9:].upper(), "{" + text + "}", "urn:uuid:" + text,
        value.hex, text + "\n", " " + text, text.replace("-", "_"),
        text[:-1] + "\uff10", text[:-1] + "g", text[:8] + "-" + text[8:],
    ]


class IsUUIDTests(SynchronousTestCase):
    def test_canonical(self) -> None:
        """The hyphenated form, in lower, upper or mixed case."""
        text = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
        for candidate in (text, text.upper(), "0F1E2D3C-4b5a-4978-8695-A4B3C2D1E0F9"):
            self.assertTrue(is_uuid(candidate), candidate)

    def test_other_forms_refused(self) -> None:
        """Braces, URNs, no hyphens, spaces, line ends, non-ASCII digits: refused."""
        text = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
        for candidate in ("{" + text + "}", "urn:uuid:" + text, text.replace("-", ""),
                          text + "\n", " " + text, text[:-1] + "\uff10", text[:-1] + "g",
                          "", "not a uuid"):
            self.assertFalse(is_uuid(candidate), repr(candidate))

    def test_not_text(self) -> None:
        """Anything but a string is not a UUID."""
        for value in (None, 7, b"0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", uuid.uuid4()):
            self.assertFalse(is_uuid(value))  # type: ignore[arg-type]

    @given(st.uuids())
    def test_spellings_as_defined(self, value: uuid.UUID) -> None:
        """Every spelling of a UUID: as the definition says."""
        for text in spellings(value):
            self.assertEqual(is_uuid(text), parsed_and_canonical(text), repr(text))

    @given(st.text(alphabet="0123456789abcdefABCDEF-{}:urnid_ \n\uff10", max_size=45))
    def test_text_as_defined(self, text: str) -> None:
        """Any text of the characters a UUID is written with: as the definition says."""
        self.assertEqual(is_uuid(text), parsed_and_canonical(text))
