"""
The credentials medichat accepts, and the one call every edge uses to turn them into a user.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie

from attrs import frozen
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from medichat.errors import AuthenticationFailed
from medichat.interfaces import IBearerToken, ISessionCookie
from medichat.model import User

MISSING_CREDENTIALS = "missing credentials"
MALFORMED_TOKEN = "malformed token"
BAD_SIGNATURE = "bad signature"
CREDENTIAL_EXPIRED = "credential expired"
NOT_YET_VALID = "token not yet valid"
WRONG_ISSUER = "wrong issuer"
WRONG_AUDIENCE = "wrong audience"
UNSUPPORTED_ALGORITHM = "unsupported algorithm"
INVALID_CLAIMS = "invalid claims"
SESSION_EXPIRED = "session expired"
SESSION_REVOKED = "session revoked"
ACCOUNT_DISABLED = "account disabled"
INVALID_SESSION = "invalid session"


class IUserAvatar(Interface):
    """
    The avatar interface the realm produces: a L{medichat.model.User}.
    """


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


# --------------------------------------------------------------------------------------
# Credentials on the wire

SESSION_COOKIE = "medichat_session"
"""The name of the employee session cookie."""

# Three base64url parts; the signature may be empty (as in an C{alg: none} token), so that
# such a token is refused for its algorithm rather than its shape.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_LENGTH = 16 * 1024


def looks_like_jwt(value: str) -> bool:
    """
    C{True} if C{value} has the shape of a compact JWS: three dot-separated base64url parts.
    """
    return len(value) <= _MAX_TOKEN_LENGTH and _JWT_SHAPE.fullmatch(value) is not None


def parse_bearer(header_value: str) -> BearerToken:
    """
    Read an C{Authorization} header value of the C{Bearer} scheme (in any case).

    @raise AuthenticationFailed: C{"malformed token"} for any other scheme or shape.
    """
    parts = header_value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthenticationFailed(MALFORMED_TOKEN)
    return BearerToken(parts[1])


def credentials_from_stomp(headers_get_ci: Callable[[str], str | None]) -> object | None:
    """
    The credentials a STOMP C{CONNECT} (or C{STOMP}) frame carries, for clients that cannot
    set WebSocket handshake headers (browsers).

    An C{Authorization: Bearer <jwt>} header (its name in any case) comes first; otherwise a
    C{passcode} header holding a JWT is taken as a bearer token, as RabbitMQ's OAuth 2 plugin
    takes it.  A C{passcode} that is not shaped like a JWT is ignored.

    @param headers_get_ci: looks a frame header up by name, ignoring case.
    @return: a L{BearerToken}, or L{None} if the frame carries no credential.
    @raise AuthenticationFailed: C{"malformed token"} if an C{Authorization} header is
        present but is not a bearer token.
    """
    authorization = headers_get_ci("authorization")
    if authorization is not None:
        return parse_bearer(authorization)
    passcode = headers_get_ci("passcode")
    if passcode is not None and looks_like_jwt(passcode.strip()):
        return BearerToken(passcode.strip())
    return None


def handshake_credentials(headers: dict[str, str]) -> object | None:
    """
    The credentials of a WebSocket handshake: C{Authorization: Bearer} first, then the
    employee session cookie.  A malformed header gives the L{AuthenticationFailed} itself.
    """
    authorization = headers.get("authorization")
    if authorization:
        try:
            return parse_bearer(authorization)
        except AuthenticationFailed as e:
            # Reported at CONNECT, unless the frame brings valid credentials of its own.
            return e
    cookie_header = headers.get("cookie")
    if cookie_header:
        try:
            cookies: SimpleCookie = SimpleCookie(cookie_header)
        except CookieError:
            return None
        morsel = cookies.get(SESSION_COOKIE)
        if morsel is not None and morsel.value:
            return SessionCookie(morsel.value)
    return None
