"""
The HTTP resource tree: everything under C{--base-path}; the STOMP WebSocket endpoint at
C{{base-path}/v1/chat}, and the REST API (Klein) for every other path below the base.

Whatever arrives, the answer is problem+json: requests twisted.web cannot parse (L{Channel}),
header values that are not UTF-8 (checked once, at the root, before any resource reads a
header), and plain HTTP at the WebSocket endpoint (426).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site, version

from medichat._logcontext import request_id
from medichat._persecond import PerSecond
from medichat.errors import NotFound
from medichat.http._channel import EagerWriter, MedichatChannel, WholeRequests
from medichat.http._direct import JSON_CONTENT_TYPE, DirectRoute
from medichat.http.accesslog import AccessLog, RequestIds
from medichat.http.forwarded import client_address
from medichat.http.origins import OriginPolicy
from medichat.http.problems import Problem, problem_for, write_problem

_log = Logger()


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


class _Refusal(Resource):
    """Answers every request with one problem."""

    isLeaf = True

    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self._problem = problem

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Cache-Control", b"no-store")
        return write_problem(request, self._problem)


def header_problem(request: Request) -> Problem | None:
    """
    The problem with C{request}'s headers, if a value is not UTF-8: 403 for C{Origin} (a
    cross-origin check that cannot be made fails closed), 400 for any other header.

    twisted.web decodes a header as UTF-8 whenever code asks for it by a C{str} name, so
    a stray byte would otherwise become a 500 wherever a header is read.
    """
    origin_bad = False
    bad_name: bytes | None = None
    for name, values in request.requestHeaders.getAllRawHeaders():
        for value in values:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                if name.lower() == b"origin":
                    origin_bad = True
                elif bad_name is None:
                    bad_name = name
    if origin_bad:
        return Problem.of(403, "Origin header: not UTF-8")
    if bad_name is not None:
        return Problem.of(400, f"{bad_name.decode('ascii', 'replace')} header: not UTF-8")
    return None


class _HeaderGuard(Resource):
    """
    The root: refuses a request whose headers are not UTF-8 (L{header_problem}) before
    any resource below sees it.
    """

    def __init__(self, child: IResource) -> None:
        super().__init__()
        self._child = child

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        problem = header_problem(request)
        if problem is not None:
            return _Refusal(problem)
        return self._child.getChildWithDefault(path, request)

    def render(self, request: Request) -> bytes:
        problem = header_problem(request)
        if problem is not None:
            return _Refusal(problem).render(request)
        return self._child.render(request)  # type: ignore[no-any-return]


class _ChatEndpoint(Resource):
    """
    The WebSocket endpoint: a WebSocket handshake goes to Autobahn; anything else is told
    to upgrade (426), rather than getting Autobahn's HTML status page.  A handshake from
    an origin that is not allowed is refused here (403), as problem+json; Autobahn would
    refuse it too, with a bare status line.
    """

    isLeaf = True

    def __init__(self, chat: IResource, origins: OriginPolicy | None) -> None:
        super().__init__()
        self._chat = chat
        self._origins = origins

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader(b"upgrade") or b""
        if b"websocket" not in (token.strip().lower() for token in upgrade.split(b",")):
            request.setHeader(b"Cache-Control", b"no-store")
            problem = Problem.of(
                426,
                "this is the STOMP-over-WebSocket endpoint: open a WebSocket here",
                # Connection stays twisted.web's: it knows whether this one persists.
                (("Upgrade", "websocket"),),
            )
            return write_problem(request, problem)
        origin = request.getHeader(b"origin")
        if self._origins is not None and origin is not None:
            # The site's guard has made sure that headers are UTF-8.
            origin_text = origin.decode("utf-8")
            host = request.getHeader(b"host")
            if not self._origins.is_allowed(
                origin_text,
                scheme="https" if request.isSecure() else "http",
                host_header=None if host is None else host.decode("utf-8"),
            ):
                _log.info(
                    "refused WebSocket handshake from {client}: origin {origin} not allowed",
                    client=_client(request),
                    origin=origin_text,
                )
                request.setHeader(b"Cache-Control", b"no-store")
                problem = Problem.of(403, f"origin {origin_text} is not allowed")
                return write_problem(request, problem)
        site = getattr(request, "site", None)
        if isinstance(site, MedichatSite):
            # The request is handed over and never finishes: log it now.
            started = getattr(request, "started", None)
            site.access_log.log(
                request, status=101,
                duration=None if started is None else site.reactor.seconds() - started,
            )
        result = self._chat.render(request)
        channel = request.channel
        if channel.transport is None and request in channel.requests:
            # Autobahn took the connection over: the HTTP channel is done with, but it and
            # this request refer to each other, a cycle left for the collector.
            channel.requests.remove(request)
        return result


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


def build_root(
    base_path: str, rest: IResource, chat: IResource, origins: OriginPolicy | None = None
) -> IResource:
    """
    The site's root resource.

    @param base_path: as returned by L{normalise_base_path}.
    @param rest: the REST API's resource (Klein), routing relative to the base path.
    @param chat: the WebSocket resource.
    @param origins: the origins allowed to open WebSockets (L{None}: left to C{chat}).
    """
    resource: IResource = _Base(rest, _ChatEndpoint(chat, origins))
    for segment in reversed([s for s in base_path.split("/") if s]):
        resource = _Prefix(segment.encode("utf-8"), resource)
    return _HeaderGuard(resource)


class HTTPDate:
    """
    The C{Date} header's value now, as twisted.web writes it (L{datetimeToString}), made
    once a second rather than for every answer (L{PerSecond}).

    @ivar clock: the wall clock, in seconds since the epoch.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._text = PerSecond(datetimeToString)

    def __call__(self) -> bytes:
        return self._text(int(self.clock()))


http_date = HTTPDate()
"""The C{Date} of every answer of the site's requests (L{BoundedRequest.process})."""


_PERCENT = 0x25


def _path_segment(segment: bytes) -> bytes:
    """A segment of a request's path, percent-decoded as twisted.web decodes it."""
    # The byte as a number: see medichat.http._whole.CR.
    return unquote_to_bytes(segment) if _PERCENT in segment else segment


_EMAIL_LINE_BREAK = re.compile(rb"[\x0b\x0c\x1c-\x1e\x85]")
"""
Bytes that the email package, which twisted.web has parse a form's C{Content-Type},
takes for line breaks in a header and refuses (C{\r} and C{\n} never reach it).
"""


class BoundedRequest(Request):
    """
    A request that keeps at most C{max_body + 1} bytes of its body, and has an id.

    twisted.web buffers a whole body before any resource sees it; this keeps an oversized
    one from being held in memory (or spooled to disk), while the one byte over the limit
    lets the API answer 413.

    twisted.web parses the C{Content-Type} of every C{POST} with the C{email} package to
    find form data for C{request.args}, which medichat never reads: about a tenth of a
    message POST's CPU.  A request whose type is plainly C{application/json} (every body
    the API accepts, as clients send it) skips that; any other type is still parsed as
    before, so a malformed multipart body is still refused the same way, except for a
    type that the email package would raise for (see L{requestReceived}).

    @ivar request_id: set when the request is dispatched, sent back as C{X-Request-Id},
        and named in its log events (L{medichat.http.accesslog}).
    @ivar started: when it was dispatched (by the site's clock), for the access log.
    """

    request_id: str | None = None
    started: float | None = None

    def __init__(self, *args: Any, max_body: int = 65536, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_body = max_body
        self._kept = 0

    def process(self) -> None:
        """
        What L{Request.process} does (the default headers, the path's segments, the
        resource found and rendered), with an id for the request, and with the C{Date}
        header's text made once a second (L{HTTPDate}) and only the segments that hold a
        C{%} percent-decoded: twisted.web formats the time and runs the decoder on every
        segment of every request.  Unlike twisted.web's, it does not look for a content
        encoding on the resource (its private C{_IEncodingResource}): no resource of the
        site has one (twisted.web's gzip wrapper is not used).
        """
        site = getattr(self.channel, "site", None)
        if isinstance(site, MedichatSite):
            self.request_id = site.request_ids.next()
            self.started = site.reactor.seconds()
            self.setHeader(b"X-Request-Id", self.request_id.encode("ascii"))
        # Callbacks and coroutines started from here run in a copy of this context.
        token = request_id.set(self.request_id)
        try:
            if self.path == b"*":
                # A request for the server as a whole (OPTIONS *): twisted.web's answer.
                super().process()
                return
            self.site = self.channel.site  # type: ignore[attr-defined]
            self.setHeader(b"Server", version)
            self.setHeader(b"Date", http_date())
            self.prepath = []
            self.postpath = [_path_segment(s) for s in self.path[1:].split(b"/")]
            try:
                self.render(self.site.getResourceFor(self))
            except BaseException:
                self.processingFailed(Failure())
        finally:
            request_id.reset(token)

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

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        types = self.requestHeaders.getRawHeaders(b"content-type")
        if types is not None and (JSON_CONTENT_TYPE.match(types[0])
                                  or _EMAIL_LINE_BREAK.search(types[0])):
            # The email package would find application/json: no form to parse.  Or it
            # would raise (ValueError) for what it takes as a line break in the type,
            # and the connection would close unanswered: not a form medichat reads
            # anyway, so the API answers it (415).
            self._parsePOSTFormSubmission = False
        super().requestReceived(command, path, version)


class Channel(MedichatChannel):
    """
    An HTTP/1.1 connection whose own refusals are problem+json.

    twisted.web answers a request it cannot parse with a bare C{400} status line, and one
    whose request line or a header line exceeds C{MAX_LENGTH} by closing the connection
    without a word.  This channel answers the same requests, under the same limits, with
    C{414} (the request line), C{431} (a header line, the whole head, or more than
    C{maxHeaders} headers) or C{400} (anything else malformed), as problem+json, and then
    closes the connection.

    @ivar _in_head: the request line of a request has arrived, its head has not ended.
    @ivar _head_bytes: bytes of the current head so far, as twisted.web counts them
        (line ends excluded).
    @ivar _head_lines: header lines of the current head so far.
    """

    _in_head = False
    _head_bytes = 0
    _head_lines = 0
    _host: Any = None
    _peer: Any = None

    def getHost(self) -> Any:
        # Every request asks for the connection's local address, a getsockname() call
        # each time; it does not change while the connection lives.
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def getPeer(self) -> Any:
        # Likewise the client's address, which every request asks for (a new address
        # object each time, through two wrappers).
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def lineReceived(self, line: bytes) -> None:
        if not self._in_head:
            # twisted.web tolerates one empty line before a request line.
            if line:
                self._in_head = True
                self._head_bytes = len(line)
                self._head_lines = 0
        elif not line:
            self._in_head = False
        else:
            self._head_bytes += len(line)
            if line[:1] not in (b" ", b"\t"):
                self._head_lines += 1
            if self._head_bytes > self.totalHeadersSize:
                self._refuse(
                    431, f"the request head may be at most {self.totalHeadersSize} bytes"
                )
                return
            if self._head_lines > self.maxHeaders:
                self._refuse(431, f"a request may have at most {self.maxHeaders} headers")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self._refuse(431, f"a header line may be at most {self.MAX_LENGTH} bytes")
        else:
            self._refuse(414, f"the request line may be at most {self.MAX_LENGTH} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, "malformed HTTP/1.1 request (request line, a header or the body framing)")

    def _refuse(self, status: int, detail: str) -> None:
        """
        Answer C{status} with a problem and close the connection; whatever else the
        client sent is not read.
        """
        if self.transport is None:
            return
        self.transport.write(Problem.of(status, detail).raw_response())
        self.loseConnection()


class MedichatSite(Site):
    """
    The site: requests get ids, and the access log is medichat's own
    (L{medichat.http.accesslog}) rather than twisted.web's combined log format, which would
    name the query string and the referrer.

    @ivar access_log: logs each finished request.
    @ivar request_ids: makes the requests' ids.
    @ivar direct: the chat message POSTs answered without twisted.web's request
        (L{medichat.http._direct}), if any.
    """

    def __init__(self, root: IResource, *, access_log: AccessLog, clock: IReactorTime | None
                 ) -> None:
        super().__init__(root, reactor=clock)
        self.access_log = access_log
        self.request_ids = RequestIds()
        self.direct: DirectRoute | None = None

    def log(self, request: Request) -> None:  # type: ignore[override]
        started = getattr(request, "started", None)
        duration = None if started is None else self.reactor.seconds() - started
        self.access_log.log(request, duration=duration)


def _client(request: Request) -> str:
    site = getattr(request, "site", None)
    trusted = site.access_log.trusted_proxies if isinstance(site, MedichatSite) else ()
    return client_address(request, trusted)


def make_site(root: IResource, max_body: int, *, clock: IReactorTime | None = None,
              head_timeout: float = 10.0, access_log: AccessLog | None = None,
              rate_limit_hold: float = 1.0, eager_writer: EagerWriter | None = None,
              whole_requests: WholeRequests | None = None,
              direct: tuple[str, IResource] | None = None) -> Site:
    """
    The HTTP site: bounded request bodies, a deadline for request heads, problem+json for
    whatever twisted.web refuses itself, no tracebacks shown, request ids, the access log.

    @param clock: the site's timers (twisted.web's idle timeout, the head deadline); the
        global reactor when L{None}.
    @param head_timeout: seconds a request line and its headers may take to arrive.
    @param access_log: logs each request; one that logs every request by default.
    @param rate_limit_hold: seconds a connection reads nothing after a 429 (0: never).
    @param eager_writer: lets connections send answers at once (see
        L{medichat.http._channel}); L{None} writes them only through the transport.
    @param whole_requests: lets connections read a POST that arrives whole themselves
        (see L{medichat.http._channel}); L{None} leaves every request to twisted.web.
    @param direct: the API's base path and resource, for the chat message POSTs that
        connections read whole (L{medichat.http._direct}); L{None} leaves them to
        twisted.web's request.
    """
    site = MedichatSite(
        root, access_log=access_log if access_log is not None else AccessLog(), clock=clock
    )
    if direct is not None and whole_requests is not None:
        site.direct = DirectRoute(direct[0], direct[1], http_date, max_body)
    site.protocol = partial(  # type: ignore[assignment]
        Channel, head_timeout, rate_limit_hold=rate_limit_hold,
        eager_writer=eager_writer, whole_requests=whole_requests, direct=site.direct,
    )
    site.requestFactory = partial(BoundedRequest, max_body=max_body)  # type: ignore[assignment]
    site.displayTracebacks = False
    return site
