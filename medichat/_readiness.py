"""
Whether this process should be sent traffic: L{Readiness}, which C{GET {base}/readyz}
answers from.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.defer import Deferred

__all__ = ["Readiness"]

Check = Callable[[], Deferred[None]]
"""A readiness check: a L{Deferred} that fails while what it checks is not ready."""


@define
class Readiness:
    """
    What makes this process ready besides its store: the checks that services register
    (a connection the process needs, say), and whether it is draining (stopping: it still
    serves what it has, but should be sent nothing new).

    @ivar draining: C{True} from the moment the process starts to stop.
    """

    draining: bool = False
    _checks: dict[str, Check] = field(factory=dict)

    def add_check(self, name: str, check: Check) -> None:
        """
        Count C{check} among the readiness checks, under C{name} (which replaces an
        earlier check of that name).
        """
        self._checks[name] = check

    def remove_check(self, name: str) -> None:
        """Stop counting the check C{name}; unknown names are ignored."""
        self._checks.pop(name, None)

    def checks(self) -> list[tuple[str, Check]]:
        """The registered checks, by name."""
        return sorted(self._checks.items(), key=lambda item: item[0])
