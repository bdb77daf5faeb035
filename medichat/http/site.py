"""
The HTTP resource tree: everything under C{--base-path}; the STOMP WebSocket endpoint at
C{{base-path}/v1/chat}, and the REST API (Klein) for every other path below the base.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from medichat.errors import NotFound
from medichat.http._channel import MedichatChannel
from medichat.http.problems import problem_for, write_problem


def normalise_base_path(base_path: str) -> str:
    """
    C{"/api/"} and C{"api"} become C{"/api"}; C{"/"} and C{""} become C{""}.

    @raise ValueError: for a path with empty segments, C{.} or C{..}, or a query.
    """
    segments = [s for s in base_path.strip().strip("/").split("/")]
    if segments == [""]:
        return ""
    for segment in segments:
        if segment in ("", ".", "..") or any(c in segment for c in "?#% \t"):
            raise ValueError(f"not a usable base path: {base_path!r}")
    return "/" + "/".join(segments)


class _NotFound(Resource):
    """A problem+json 404 for any path outside the API."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return write_problem(request, problem_for(NotFound("no such path")))


class _Base(Resource):
    """
    The resource at the base path: C{v1/chat} is the WebSocket endpoint, everything else
    goes to the REST API, which routes relative to here.
    """

    def __init__(self, rest: IResource, chat: IResource) -> None:
        super().__init__()
        self._rest = rest
        self._chat = chat

    def getChild(self, path: bytes, request: Request) -> IResource:
        assert request.postpath is not None and request.prepath is not None
        if path == b"v1" and request.postpath == [b"chat"]:
            request.prepath.append(request.postpath.pop(0))
            return self._chat
        # Hand the segment back: Klein routes on the path below the base.
        request.postpath.insert(0, request.prepath.pop())
        return self._rest

    def render(self, request: Request) -> bytes:
        return self._rest.render(request)  # type: ignore[no-any-return]


class _Prefix(Resource):
    """One segment of the base path."""

    def __init__(self, name: bytes, child: IResource) -> None:
        super().__init__()
        self._name = name
        self._child = child

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == self._name:
            return self._child
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _NotFound().render(request)


def build_root(base_path: str, rest: IResource, chat: IResource) -> IResource:
    """
    The site's root resource.

    @param base_path: as returned by L{normalise_base_path}.
    @param rest: the REST API's resource (Klein), routing relative to the base path.
    @param chat: the WebSocket resource.
    """
    resource: IResource = _Base(rest, chat)
    for segment in reversed([s for s in base_path.split("/") if s]):
        resource = _Prefix(segment.encode("utf-8"), resource)
    return resource


class BoundedRequest(Request):
    """
    A request that keeps at most C{max_body + 1} bytes of its body.

    twisted.web buffers a whole body before any resource sees it; this keeps an oversized
    one from being held in memory (or spooled to disk), while the one byte over the limit
    lets the API answer 413.
    """

    def __init__(self, *args: Any, max_body: int = 65536, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_body = max_body
        self._kept = 0

    def gotLength(self, length: int | None) -> None:
        # Never more than the limit is kept, so the buffer is always a small BytesIO
        # (twisted.web spools unknown or large lengths to a temporary file).
        limit = self._max_body + 1
        super().gotLength(limit if length is None else min(length, limit))

    def handleContentChunk(self, data: bytes) -> None:
        room = self._max_body + 1 - self._kept
        if room > 0:
            chunk = data[:room]
            self._kept += len(chunk)
            super().handleContentChunk(chunk)


def make_site(root: IResource, max_body: int, *, clock: IReactorTime | None = None,
              head_timeout: float = 10.0) -> Site:
    """
    The HTTP site: bounded request bodies, a deadline for request heads, no tracebacks
    shown.

    @param clock: the site's timers (twisted.web's idle timeout, the head deadline); the
        global reactor when L{None}.
    @param head_timeout: seconds a request line and its headers may take to arrive.
    """
    site = Site(root, reactor=clock)
    site.protocol = partial(MedichatChannel, head_timeout)  # type: ignore[assignment]
    site.requestFactory = partial(BoundedRequest, max_body=max_body)  # type: ignore[assignment]
    site.displayTracebacks = False
    return site
