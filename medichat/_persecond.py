"""
Values that change once a second, made once a second.

A log line's timestamp and an HTTP answer's C{Date} are texts of the time to the second,
which twisted.logger and twisted.web format anew for every line and every answer.
L{PerSecond} keeps the last one it made, with its second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class PerSecond(Generic[_T]):
    """
    What C{make} gives for a second (seconds since the epoch, whole), made when the second
    changes and kept until it changes again.
    """

    def __init__(self, make: Callable[[int], _T]) -> None:
        self._make = make
        # One attribute, replaced whole, so a thread that asks at the same time reads a
        # second and its value that belong together.
        self._last: tuple[int, _T] | None = None

    def __call__(self, second: int) -> _T:
        last = self._last
        if last is not None and last[0] == second:
            return last[1]
        value = self._make(second)
        self._last = (second, value)
        return value


__all__ = ["PerSecond"]
