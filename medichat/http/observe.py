"""
Telling an observer (metrics) about every HTTP request the site answers: its route
template, method and status, once it has been answered.

Labels stay a small, fixed set whatever clients send: the route is the REST API's rule
(C{/v1/conversation/<conversation_id>/message}, never the id itself), C{/v1/chat} for the
WebSocket endpoint and C{unmatched} for anything else; a method twisted.web accepted but
HTTP does not define becomes C{OTHER}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein.interfaces import IKleinRequest
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

__all__ = ["METHODS", "RequestObserver", "observe_requests", "route_of"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods reported by name; any other is C{OTHER}."""

UNMATCHED = "unmatched"
"""The route of a request that matched no route of the API."""

RequestObserver = Callable[[], Callable[[str, str, int], object]]
"""Called as a request begins; returns what is called with its route, method and
status once it has been answered."""


def route_of(request: Any) -> str:
    """
    The route template that C{request} matched: the API's rule, C{/v1/chat} for the
    WebSocket endpoint, or L{UNMATCHED}.
    """
    klein = request.getComponent(IKleinRequest)
    mapper = getattr(klein, "mapper", None)
    if mapper is not None:
        try:
            rule, _ = mapper.match(return_rule=True)
        except (HTTPException, RequestRedirect):
            return UNMATCHED
        return str(rule.rule)
    if request.path.endswith(b"/v1/chat"):
        return "/v1/chat"
    return UNMATCHED


def _method_of(request: Any) -> str:
    method = request.method.decode("ascii", "replace")
    return method if method in METHODS else "OTHER"


def observe_requests(site: Site, observer: RequestObserver) -> None:
    """
    Tell C{observer} about each request that C{site} answers from now on.  A request
    whose connection is lost before the answer (or that became a WebSocket) is not
    reported.
    """
    make = site.requestFactory

    def make_request(*args: Any, **kwargs: Any) -> Any:
        request = make(*args, **kwargs)
        answered = observer()

        def report(_: object) -> None:
            answered(route_of(request), _method_of(request), int(request.code))

        request.notifyFinish().addCallbacks(report, lambda _: None)
        return request

    site.requestFactory = make_request  # type: ignore[assignment]
