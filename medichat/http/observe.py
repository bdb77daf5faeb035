"""
Telling an observer (metrics) about every HTTP request the site answers: its route
template, method and status, once it has been answered.

Labels stay a small, fixed set whatever clients send: the route is the REST API's rule
(C{/v1/conversation/<conversation_id>/message}, never the id itself), C{/v1/chat} for the
WebSocket endpoint and C{unmatched} for anything else; a method twisted.web accepted but
HTTP does not define becomes C{OTHER}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from klein.interfaces import IKleinRequest
from twisted.web.server import Site
from werkzeug.routing import Map

__all__ = ["METHODS", "RequestObserver", "RouteTemplates", "observe_requests", "route_of"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods reported by name; any other is C{OTHER}."""

UNMATCHED = "unmatched"
"""The route of a request that matched no route of the API."""

RequestObserver = Callable[[], Callable[[str, str, int], object]]
"""Called as a request begins; returns what is called with its route, method and
status once it has been answered."""

_ANY = object()
"""The key of a variable segment (C{<conversation_id>}) in L{RouteTemplates}' tree."""

_END = object()
"""The key of the template of a route that ends at a node of L{RouteTemplates}' tree."""


class RouteTemplates:
    """
    The route templates of a URL map (the REST API's), matched segment by segment: what
    the routing matched, found again at a fraction of its cost (each segment is one
    dictionary look-up), once the request is answered.
    """

    def __init__(self, templates: Iterable[str]) -> None:
        self._root: dict[object, Any] = {}
        for template in templates:
            node = self._root
            for segment in template.split("/"):
                key = _ANY if segment.startswith("<") else segment
                node = node.setdefault(key, {})
            node[_END] = template

    @classmethod
    def of(cls, url_map: Map) -> RouteTemplates:
        """The templates of every rule of C{url_map}."""
        return cls(rule.rule for rule in url_map.iter_rules())

    def match(self, path: str) -> str | None:
        """The template that C{path} (below the base path) matches, if any."""
        return _match(self._root, path.split("/"), 0)


def _match(node: dict[object, Any], segments: list[str], index: int) -> str | None:
    if index == len(segments):
        template: str | None = node.get(_END)
        return template
    segment = segments[index]
    literal = node.get(segment)
    if literal is not None:
        found = _match(literal, segments, index + 1)
        if found is not None:
            return found
    variable = node.get(_ANY)
    if variable is not None and segment:
        return _match(variable, segments, index + 1)
    return None


def route_of(request: Any, templates: RouteTemplates) -> str:
    """
    The route template that C{request} matched: the API's rule, C{/v1/chat} for the
    WebSocket endpoint, or L{UNMATCHED}.
    """
    direct = getattr(request, "route_template", None)
    if direct is not None:
        # Served without Klein (the chat messages' own path), which names its route.
        return str(direct)
    klein = request.getComponent(IKleinRequest)
    mapper = getattr(klein, "mapper", None)
    if mapper is not None:
        return templates.match(mapper.path_info) or UNMATCHED
    if request.path.endswith(b"/v1/chat"):
        return "/v1/chat"
    return UNMATCHED


def _method_of(request: Any) -> str:
    method = request.method.decode("ascii", "replace")
    return method if method in METHODS else "OTHER"


def observe_requests(site: Site, observer: RequestObserver, url_map: Map) -> None:
    """
    Tell C{observer} about each request that C{site} answers from now on, with the
    route templates of C{url_map} (the REST API's).  A request whose connection is lost
    before the answer (or that became a WebSocket) is not reported.
    """
    templates = RouteTemplates.of(url_map)

    def observed(make: Callable[..., Any]) -> Callable[..., Any]:
        def make_request(*args: Any, **kwargs: Any) -> Any:
            request = make(*args, **kwargs)
            answered = observer()

            def report(_: object) -> None:
                answered(route_of(request, templates), _method_of(request), int(request.code))

            request.notifyFinish().addCallbacks(report, lambda _: None)
            return request

        return make_request

    site.requestFactory = observed(site.requestFactory)  # type: ignore[assignment]
    direct = getattr(site, "direct", None)
    if direct is not None:
        # The chat messages' POSTs answered without twisted.web's request.
        direct.request_factory = observed(direct.request_factory)
