"""
The credentials medichat accepts, and the one call every edge uses to turn them into a user.
"""

from __future__ import annotations

from attrs import frozen
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, inlineCallbacks
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


@inlineCallbacks
def authenticate(portal: Portal, credentials: object) -> Deferred[User]:
    """
    Log C{credentials} in through C{portal}.

    @return: a L{Deferred} that fires with the L{User}, or fails with
        L{AuthenticationFailed} (any other L{UnauthorizedLogin} is wrapped in one).
    """
    try:
        _iface, avatar, _logout = yield portal.login(credentials, None, IUserAvatar)
    except AuthenticationFailed:
        raise
    except UnauthorizedLogin as e:
        raise AuthenticationFailed(str(e) or "invalid credentials") from e
    return avatar
