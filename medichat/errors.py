"""
Domain errors.  Domain services raise these; each edge turns them into its own shape in
one place: problem+json for REST (L{medichat.http.problems}), an C{ERROR} frame for STOMP.
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin


class DomainError(Exception):
    """
    Base of the errors that users cause and that are shown to them.

    @ivar status: the HTTP status this error maps to.
    @ivar title: a short, fixed summary of the kind of error.
    @ivar detail: what exactly was wrong (said to the user; never secrets, never tracebacks).
    """

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(DomainError):
    """Malformed JSON, a wrong field or a bad query; C{detail} says where."""


class Unauthorized(DomainError):
    """No credentials, or credentials that do not check out."""

    status = 401
    title = "Unauthorized"


class Forbidden(DomainError):
    """Authenticated, but not allowed to do this."""

    status = 403
    title = "Forbidden"


class NotFound(DomainError):
    """No such thing, or not one the caller may know about."""

    status = 404
    title = "Not Found"


class Conflict(DomainError):
    """
    The request clashes with the state it found (a conversation someone else claimed).

    @ivar extensions: extra members of the problem details, as C{(name, value)} pairs.
    """

    status = 409
    title = "Conflict"

    def __init__(self, detail: str, extensions: tuple[tuple[str, object], ...] = ()) -> None:
        super().__init__(detail)
        self.extensions = extensions


class PayloadTooLarge(DomainError):
    """A request body over the limit."""

    status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(DomainError):
    """A request body that is not JSON."""

    status = 415
    title = "Unsupported Media Type"


class RateLimited(DomainError):
    """
    Too many requests.

    @ivar retry_after: seconds until trying again makes sense.
    """

    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StoreError(Exception):
    """
    The store could not do what was asked (connection lost, constraint violated).
    """


class StoreUnavailable(StoreError):
    """
    The store cannot serve requests now: unreachable, read-only, out of space, or busy
    past its timeout.  Answered with 503 and C{Retry-After}; trying again later may work.
    """


class MissingDatabase(StoreError):
    """
    The store was told not to create a database, and found none where it looked.
    """


class DuplicateError(StoreError):
    """
    A unique value (an employee's email, say) is taken already.
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
