"""
The HTTP client side of webhooks: L{TreqSender} POSTs one signed Standard Webhooks
request to the operator's receiver and reports its status and C{Retry-After}.

Redirects are not followed (the specification counts a 3xx as a failure: the URL should
be updated instead), the response body is read and dropped, and the whole exchange,
body included, is bounded by a timeout.
"""

from __future__ import annotations

import email.utils
from typing import Any

from treq import collect
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from medichat.interfaces import IWebhookSender
from medichat.model import WebhookResponse

__all__ = ["TreqSender", "make_http_client", "parse_retry_after"]

MAX_BODY = 64 * 1024
"""Bytes of a receiver's response body read before the connection is dropped."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """
    The seconds a C{Retry-After} header asks for: a number of seconds, or an HTTP date
    (then counted from C{now}); L{None} if absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def make_http_client(reactor: Any) -> tuple[HTTPClient, HTTPConnectionPool]:
    """
    A treq C{HTTPClient} on a persistent connection pool (the receiver is always the
    same), for L{TreqSender}, and the pool, for L{TreqSender.close}.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    return HTTPClient(Agent(reactor, pool=pool)), pool


class _TooLarge(Exception):
    """The receiver's response body was longer than L{MAX_BODY}."""


@implementer(IWebhookSender)
class TreqSender:
    """
    L{IWebhookSender} over treq.

    @param http: a treq C{HTTPClient} (or anything with its C{request} method, such as
        C{treq.testing.StubTreq}).
    @param url: the receiver's URL.
    @param clock: drives the timeout and dates C{Retry-After}.
    @param timeout: seconds the whole exchange may take.
    @param pool: the connection pool of C{http}, closed by L{close}.
    """

    def __init__(self, http: Any, url: str, clock: IReactorTime, timeout: float,
                 pool: HTTPConnectionPool | None = None) -> None:
        self._http = http
        self._url = url
        self._clock = clock
        self._timeout = timeout
        self._pool = pool

    def close(self) -> Deferred[None]:
        """See L{IWebhookSender.close}."""
        if self._pool is None:
            return succeed(None)
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d

    def send(self, headers: dict[str, str], body: bytes) -> Deferred[WebhookResponse]:
        """See L{IWebhookSender.send}."""
        all_headers = {
            "content-type": "application/json",
            "user-agent": "medichat-webhooks",
            **headers,
        }
        d: Deferred[WebhookResponse] = Deferred.fromCoroutine(self._send(all_headers, body))
        d.addTimeout(self._timeout, self._clock)
        return d

    async def _send(self, headers: dict[str, str], body: bytes) -> WebhookResponse:
        response = await self._http.request(
            "POST",
            self._url,
            headers={name: [value] for name, value in headers.items()},
            data=body,
            allow_redirects=False,
        )
        received = 0

        def drop(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > MAX_BODY:
                raise _TooLarge()

        try:
            await collect(response, drop)
        except _TooLarge:
            pass  # the status is what counts; the connection is dropped
        except Exception:
            # A body cut short does not change what the status said.
            pass
        retry_after = response.headers.getRawHeaders("retry-after", [None])[0]
        return WebhookResponse(
            status=int(response.code),
            retry_after=parse_retry_after(retry_after, self._clock.seconds()),
        )
