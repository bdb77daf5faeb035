"""
The HTTP access log: one event per request, in the namespace C{medichat.http.access}.

Each line says who asked what and how it went, and nothing a reader of the logs could use
to act as the client or learn what patients wrote::

    GET /api/v1/conversation/ID 200 1234B 3.1ms from 192.0.2.7 user ID (customer) [REQUEST-ID]

The line is the event's C{access} field (its format is C{{access}}); its other fields, for
JSON logs: C{request_id}, C{method}, C{path}, C{status}, C{bytes},
C{duration_ms}, C{client} (the client's address, as a trusted proxy forwarded it),
C{user_id} and C{user_role} (once authenticated; C{-} before), C{user_agent}.  Left out on
purpose: the query string (some clients put tokens there), headers (C{Authorization},
C{Cookie}), the referrer, and bodies.  The WebSocket handshake is logged when it is handed
over (status 101); the session's own lines follow under its session id.

The request id is made here for each request, sent back as C{X-Request-Id}, and set in
L{medichat._logcontext.request_id} while the request is dispatched, so that the JSON log
names it on every event logged on the request's behalf.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import count
from time import time
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.web.iweb import IRequest

from medichat.http.forwarded import Network, client_address
from medichat.model import User

_log = Logger(namespace="medichat.http.access")

_USER_ATTRIBUTE = "medichat_user"
_MAX_PATH = 512


def remember_user(request: IRequest, user: User) -> None:
    """
    Note who C{request} was authenticated as, for its access log line.
    """
    try:
        setattr(request, _USER_ATTRIBUTE, user)
    except AttributeError:  # a request class with slots: it is just not logged
        pass


def _text(raw: bytes, limit: int) -> str:
    text = raw[:limit].decode("latin-1")
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text + ("..." if len(raw) > limit else "")


class RequestIds:
    """
    Makes request ids unique across processes: a random prefix per process, then a
    counter (cheaper than random bytes for each request).
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._numbers = count(1)

    def next(self) -> str:
        """A new request id."""
        return f"{self._prefix}-{next(self._numbers):x}"


class AccessLog:
    """
    Logs each finished request (L{log}), or nothing when disabled.

    @ivar enabled: C{--access-log on}.
    @ivar trusted_proxies: whose C{Forwarded} / C{X-Forwarded-For} name the client.
    """

    def __init__(self, *, enabled: bool = True, trusted_proxies: Sequence[Network] = ()) -> None:
        self.enabled = enabled
        self.trusted_proxies = tuple(trusted_proxies)

    def log(self, request: IRequest, *, status: int | None = None,
            duration: float | None = None) -> None:
        """
        Log C{request}, which finished with C{status} (its response code by default)
        after C{duration} seconds (unknown if L{None}).
        """
        if not self.enabled:
            return
        user: User | None = getattr(request, _USER_ATTRIBUTE, None)
        raw_path = getattr(request, "path", None) or request.uri.split(b"?", 1)[0]
        agent = request.getHeader(b"user-agent")
        fields: dict[str, Any] = {
            "request_id": getattr(request, "request_id", None) or "-",
            "method": _text(request.method, 16),
            "path": _text(raw_path, _MAX_PATH),
            "status": getattr(request, "code", 0) if status is None else status,
            "bytes": getattr(request, "sentLength", 0),
            "duration_ms": "-" if duration is None else round(duration * 1000, 1),
            "client": client_address(request, self.trusted_proxies),
            "user_id": user.user_id if user is not None else "-",
            "user_role": user.user_role if user is not None else "-",
            "user_agent": _text(agent, 256) if agent is not None else "-",
        }
        # The line is made here, once, rather than from a format string naming every
        # field: twisted.logger's formatting (and the JSON log's flattening) of ten fields
        # took twice as long as the rest of the event.
        fields["access"] = (
            f"{fields['method']} {fields['path']} {fields['status']} {fields['bytes']}B "
            f"{fields['duration_ms']}ms from {fields['client']} user {fields['user_id']} "
            f"({fields['user_role']}) [{fields['request_id']}]"
        )
        # The event that _log.info("{access}", ...) would make, made here: Logger.emit
        # first looks the level up among LogLevel's constants (sorting them) and copies
        # the keyword arguments, 3.8 us a request against 0.5 for this
        # (docs/benchmarks.md, fifteenth session).
        fields.update(
            log_logger=_log,
            log_level=LogLevel.info,
            log_namespace=_log.namespace,
            log_source=_log.source,
            log_format="{access}",
            log_time=time(),
        )
        _log.observer(fields)


__all__ = ["AccessLog", "RequestIds", "remember_user"]
