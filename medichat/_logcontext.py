"""
The HTTP request a log event was emitted for.

A twisted.logger event carries only the fields its call names.  The handling of one HTTP
request spans several callbacks (Klein's coroutines, the store's Deferreds), and Twisted
runs each step of a coroutine in the C{contextvars} context that was current when the
coroutine started.  So the site sets L{request_id} while it dispatches a request, and the
JSON log observer (L{medichat.app.logs}) adds it to every event emitted on the request's
behalf that does not name one itself: a failed login, a store error, the access log line.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("medichat_request_id", default=None)
"""The id of the HTTP request being handled, or L{None} outside of one."""

__all__ = ["request_id"]
