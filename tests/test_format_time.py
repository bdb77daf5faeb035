"""
Tests for L{medichat.model.format_time}: the same text as the C{strftime} formatting it
replaced, for every time.
"""

from __future__ import annotations

import datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from medichat import model
from medichat.model import format_time, parse_time

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def strftime_format(us: int) -> str:
    """The formatting as it was, with C{datetime.strftime}."""
    dt = _EPOCH + datetime.timedelta(microseconds=us)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


_FIRST = parse_time("0001-01-01T00:00:00Z")
_LAST = parse_time("9999-12-31T23:59:59.999999Z")
_YEAR_1000 = parse_time("1000-01-01T00:00:00Z")


class FormatTimeTests(SynchronousTestCase):
    @settings(max_examples=2000, deadline=None)
    @given(st.integers(min_value=_FIRST, max_value=_LAST))
    def test_as_strftime(self, us: int) -> None:
        """
        Any time from year 1 to 9999 reads as strftime wrote it, and from year 1000 on
        round-trips (strftime writes earlier years with fewer than four digits).
        """
        self.assertEqual(format_time(us), strftime_format(us))
        if us >= _YEAR_1000:
            self.assertEqual(parse_time(format_time(us)), us)

    @settings(max_examples=500, deadline=None)
    @given(st.integers(min_value=0, max_value=3 * 86_400_000_000),
           st.integers(min_value=0, max_value=10))
    def test_neighbouring_days(self, us: int, days: int) -> None:
        """Alternating between days never reuses the wrong day's date."""
        later = us + days * 86_400_000_000 + 1
        for value in (us, later, us):
            self.assertEqual(format_time(value), strftime_format(value))

    def test_edges(self) -> None:
        """Whole seconds, microseconds, midnight, the last microsecond of a day."""
        for text in ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000001Z",
                     "2000-02-29T23:59:59.999999Z", "2021-07-14T12:00:00Z",
                     "9999-12-31T23:59:59.999999Z", "1969-12-31T23:59:59.5Z"):
            us = parse_time(text)
            self.assertEqual(format_time(us), strftime_format(us))

    def test_out_of_range(self) -> None:
        """Times past year 9999 fail as before."""
        self.assertRaises(OverflowError, format_time, _LAST + 1)
        self.assertRaises(OverflowError, strftime_format, _LAST + 1)

    def test_day_remembered(self) -> None:
        """The date part is computed once for a run of times on one day."""
        calls = []
        real = datetime.date.fromordinal

        class Date(datetime.date):
            @classmethod
            def fromordinal(cls, n: int) -> datetime.date:  # type: ignore[override]
                calls.append(n)
                return real(n)

        base = parse_time("2030-05-06T07:08:09Z")
        fake = type("datetime_module", (), {"date": Date})
        self.patch(model, "datetime", fake)
        self.patch(model, "_last_day", (-1, ""))
        texts = [format_time(base + n * 1_000_001) for n in range(5)]
        self.assertEqual(texts[1], "2030-05-06T07:08:10.000001Z")
        self.assertEqual(len(calls), 1)

    def test_last_time_remembered(self) -> None:
        """
        The time made last is given again as it was, without being made again; another
        time is made afresh (also one that is equal but not an int).
        """
        self.patch(model, "_last_time", (-1, ""))
        first = parse_time("2030-05-06T07:08:09.5Z")
        self.assertEqual(format_time(first), "2030-05-06T07:08:09.500000Z")
        self.assertEqual(model._last_time, (first, "2030-05-06T07:08:09.500000Z"))
        self.patch(model, "_last_time", (first, "remembered"))
        self.assertEqual(format_time(first), "remembered")
        self.assertEqual(format_time(first + 1), "2030-05-06T07:08:09.500001Z")
        self.assertEqual(format_time(first), "2030-05-06T07:08:09.500000Z")
        self.patch(model, "_last_time", (0, "remembered"))
        self.assertEqual(format_time(False), "1970-01-01T00:00:00Z")
