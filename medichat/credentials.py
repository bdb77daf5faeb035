"""
The credentials medichat accepts, and the one call every edge uses to turn them into a user.
"""

from __future__ import annotations

from attrs import frozen
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from medichat.interfaces import IBearerToken, ISessionCookie
from medichat.model import User


class IUserAvatar(Interface):
    """
    The avatar interface the realm produces: a L{medichat.model.User}.
    """


class AuthenticationFailed(UnauthorizedLogin):
    """
    Credentials were missing or did not check out.

    @ivar reason: a short human reason, safe to show to the client ("missing credentials",
        "malformed token", "credential expired", "bad signature", ...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@implementer(IBearerToken)
@frozen
class BearerToken:
    """
    A bearer JWT.
    """

    token: str


@implementer(ISessionCookie)
@frozen
class SessionCookie:
    """
    An employee session cookie value.
    """

    token: str


def authenticate(portal: Portal, credentials: object) -> Deferred[User]:
    """
    Log C{credentials} in through C{portal}.

    @return: a L{Deferred} that fires with the L{User}, or fails with
        L{AuthenticationFailed} (any other L{UnauthorizedLogin} is wrapped in one).
    """

    def avatar(result: tuple[object, User, object]) -> User:
        return result[1]

    def failed(failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, UnauthorizedLogin) and not isinstance(error, AuthenticationFailed):
            return Failure(AuthenticationFailed(str(error) or "invalid credentials"))
        return failure

    login = portal.login(credentials, None, IUserAvatar)  # type: ignore[arg-type]
    d: Deferred[User] = login.addCallbacks(avatar, failed)
    return d
