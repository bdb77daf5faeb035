"""
The realm and portal of medichat users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from zope.interface import Interface, implementer

from medichat.auth.credentials import IUserAvatar
from medichat.model import User


def _logout() -> None:
    """A medichat user holds nothing that needs releasing on logout."""


@implementer(IRealm)
class MedichatRealm:
    """
    The realm of medichat users: the avatar is the L{User} that a checker produced.
    """

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: type[Interface]
    ) -> tuple[type[Interface], User, Callable[[], None]]:
        """
        Hand back the L{User} the checker made as the L{IUserAvatar}.

        @param avatarId: the L{User} produced by one of medichat's checkers.
        @raise NotImplementedError: if L{IUserAvatar} is not asked for, or C{avatarId} is
            not a L{User}.
        """
        if IUserAvatar in interfaces and isinstance(avatarId, User):
            return IUserAvatar, avatarId, _logout
        raise NotImplementedError("medichat only provides IUserAvatar for a User")


def build_portal(checkers: Iterable[ICredentialsChecker], realm: IRealm | None = None) -> Portal:
    """
    The one portal of a medichat server.

    @param checkers: one checker per credential kind (L{JWTChecker},
        L{SessionCookieChecker}, or any checker producing a L{User}).
    @param realm: defaults to a L{MedichatRealm}.
    """
    return Portal(realm if realm is not None else MedichatRealm(), list(checkers))


