"""
Errors as HTTP responses: RFC 9457 "problem details" (C{application/problem+json}).

Every error the REST API answers with goes through this module, so they all look alike::

    {"type": "https://medichat.invalid/problems/not-found", "title": "Not Found",
     "status": 404, "detail": "no such conversation"}

C{type} is a stable identifier per kind of problem (it names no real web page); clients may
switch on it.  Unexpected failures become a 500 whose C{detail} says nothing about the
cause: the traceback goes to the log, never to the client.  A store that cannot serve
(L{medichat.errors.StoreUnavailable}) is a 503 with C{Retry-After} instead, logged once per
outage by the store rather than once per request.
"""

from __future__ import annotations

import json
import math

from attrs import evolve, frozen
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from medichat.errors import Conflict, DomainError, RateLimited, StoreUnavailable

__all__ = [
    "CONTENT_TYPE",
    "HOLD_ATTRIBUTE",
    "PROBLEM_TYPE_BASE",
    "STORE_RETRY_AFTER",
    "Problem",
    "hold_connection",
    "problem_for",
    "render_failure",
    "whole_body",
    "write_problem",
]

CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://medichat.invalid/problems/"

_log = Logger()

STORE_RETRY_AFTER = 5
"""Seconds a client is asked to wait (C{Retry-After}) while the store is unavailable."""

_KINDS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad Request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not Found"),
    409: ("conflict", "Conflict"),
    405: ("method-not-allowed", "Method Not Allowed"),
    408: ("request-timeout", "Request Timeout"),
    413: ("payload-too-large", "Payload Too Large"),
    414: ("uri-too-long", "URI Too Long"),
    415: ("unsupported-media-type", "Unsupported Media Type"),
    426: ("upgrade-required", "Upgrade Required"),
    429: ("rate-limited", "Too Many Requests"),
    431: ("header-fields-too-large", "Request Header Fields Too Large"),
    500: ("internal-error", "Internal Server Error"),
    503: ("unavailable", "Service Unavailable"),
}


@frozen
class Problem:
    """
    One problem-details response.

    @ivar status: the HTTP status code.
    @ivar title: a short summary that depends only on the kind of problem.
    @ivar detail: what went wrong this time (safe to show to the client).
    @ivar type: a URI naming the kind of problem.
    @ivar headers: extra response headers, as C{(name, value)} pairs.
    @ivar extensions: extra members of the body after the standard ones (RFC 9457
        section 3.2), as C{(name, value)} pairs.
    """

    status: int
    title: str
    detail: str
    type: str
    headers: tuple[tuple[str, str], ...] = ()
    extensions: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> Problem:
        """
        A problem of a known status, with the standard type and title for it.
        """
        slug, title = _KINDS.get(status, ("about:blank", ""))
        problem_type = f"{PROBLEM_TYPE_BASE}{slug}" if title else "about:blank"
        if status == 401:
            headers = (("WWW-Authenticate", 'Bearer realm="medichat"'), *headers)
        return cls(status, title or "Error", detail, problem_type, headers)

    def as_json(self) -> dict[str, object]:
        """
        The JSON body: C{type}, C{title}, C{status}, C{detail}, then the extensions.
        """
        body: dict[str, object] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extensions)
        return body

    def body(self) -> bytes:
        """
        The JSON body, encoded.
        """
        return json.dumps(self.as_json(), ensure_ascii=False).encode("utf-8")

    def raw_response(self) -> bytes:
        """
        The whole HTTP/1.1 response, for a connection that is closed after it: for what is
        refused below twisted.web's request objects (a request it cannot parse, a head
        too slow), where no L{IRequest} exists to write to.
        """
        body = self.body()
        head = (
            f"HTTP/1.1 {self.status} {self.title}\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("ascii") + body


def problem_for(error: BaseException) -> Problem:
    """
    The problem for an exception: a L{DomainError} says what it is; anything else is an
    internal error whose details stay secret.
    """
    if isinstance(error, DomainError):
        headers: tuple[tuple[str, str], ...] = ()
        if isinstance(error, RateLimited):
            headers = (("Retry-After", str(max(1, math.ceil(error.retry_after)))),)
        problem = Problem.of(error.status, error.detail, headers)
        if isinstance(error, Conflict) and error.extensions:
            problem = evolve(problem, extensions=error.extensions)
        return problem
    if isinstance(error, StoreUnavailable):
        return Problem.of(
            503,
            "the server cannot reach its database right now; try again later",
            (("Retry-After", str(STORE_RETRY_AFTER)),),
        )
    return Problem.of(500, "the server failed to handle this request; it has been logged")


HOLD_ATTRIBUTE = "medichat_hold_connection"
"""Set (to C{True}) on a request whose connection should be held once it is answered."""


def hold_connection(request: IRequest) -> None:
    """
    Ask that C{request}'s connection read nothing more for a while once C{request} is
    answered (L{medichat.http._channel.MedichatChannel}'s C{rate_limit_hold}).
    """
    try:
        setattr(request, HOLD_ATTRIBUTE, True)
    except AttributeError:  # a request class with slots: not held
        pass


def write_problem(request: IRequest, problem: Problem) -> bytes:
    """
    Set C{request}'s status (with the problem's title as the reason phrase: twisted.web
    knows none for 429, 426 or 431) and headers for C{problem}.  A 429 (a rate limit)
    also holds the request's connection once answered (L{hold_connection}).

    @return: the body to write.
    """
    request.setResponseCode(problem.status, problem.title.encode("ascii"))
    if problem.status == 429:
        hold_connection(request)
    request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
    for name, value in problem.headers:
        request.setHeader(name.encode("ascii"), value.encode("latin-1"))
    return whole_body(request, problem.body())


def whole_body(request: IRequest, body: bytes) -> bytes:
    """
    Say C{body}'s length in C{request}'s answer, and return it.  twisted.web sets
    C{Content-Length} itself only for a body that C{render} returns; one written later (a
    coroutine's, through Klein) would go chunked, its last chunk a second write.
    """
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """
    Answer C{request} with the problem for C{failure}, logging unexpected failures with
    their traceback.

    @return: the body to write.
    """
    error = failure.value if failure.value is not None else Exception()
    problem = problem_for(error)
    # An unavailable store is logged once per outage, by the store.
    if problem.status >= 500 and not isinstance(error, StoreUnavailable):
        _log.failure(
            "unhandled error answering {method} {uri}",
            failure=failure,
            method=_text(request.method),
            uri=_text(request.uri),
        )
    return write_problem(request, problem)


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")
