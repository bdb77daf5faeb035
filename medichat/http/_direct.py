"""
A chat message's POST, read whole, answered without twisted.web's request machinery.

Every chat message is a C{POST {base}/v1/conversation/{id}/message}.  Read whole
(L{medichat.http._whole}), such a request still went through twisted.web's L{Request}:
its two L{Headers} (each name canonicalised, each value scanned for line breaks, some
forty times a message), C{requestReceived} and C{process}, the resource tree walked a
segment at a time, C{write} building the answer's head from its headers, C{finish}.  On
its own, twisted.web's per-request work costs more than the rest of a plain HTTP server
(docs/benchmarks.md, twentieth session on issue 10).

L{DirectRequest} is what the API's resource needs of a request, for that one route, with
the same outcome: the same headers in the same order with the same values, the same
status line, the same access-log line and metrics, the same request id in the log's
context, and the channel left as twisted.web's own request leaves it.  The channel makes
one (L{DirectRoute}) for a whole POST to that route whose target and headers hold
nothing twisted.web or the resources in front of the API would do anything with (no
C{%}, no query, no byte outside ASCII, a C{Content-Type} that is JSON or none), and gives
it the API's resource as twisted.web would have found it.  Every other request, and
every other route, is twisted.web's and Klein's as before.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, RESPONSES, toChunk
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, version

from medichat._logcontext import request_id
from medichat.http._whole import CR, LF, TOKEN, WholeRequest

__all__ = ["DirectHeaders", "DirectRequest", "DirectRoute"]

_log = Logger()

_SPECIAL_CASES = {
    b"Content-Md5": b"Content-MD5",
    b"Dnt": b"DNT",
    b"Etag": b"ETag",
    b"P3p": b"P3P",
    b"Te": b"TE",
    b"Www-Authenticate": b"WWW-Authenticate",
    b"X-Xss-Protection": b"X-XSS-Protection",
}
"""Header names whose usual spelling is not the words capitalised (as twisted.web has it)."""

_CANONICAL: dict[bytes | str, bytes] = {}
_MAX_CANONICAL = 1000


def canonical_name(name: bytes | str) -> bytes:
    """
    A header's name as twisted.web's L{Headers} keeps and writes it: ISO-8859-1, each
    word capitalised (C{content-type} is C{Content-Type}), with its few exceptions.

    @raise ValueError: for a name that is not an HTTP token.
    """
    known = _CANONICAL.get(name)
    if known is not None:
        return known
    raw = name.encode("iso-8859-1") if isinstance(name, str) else name
    if TOKEN.match(raw) is None:
        raise ValueError(f"not a header name: {raw!r}")
    result = b"-".join([word.capitalize() for word in raw.split(b"-")])
    result = _SPECIAL_CASES.get(result, result)
    if len(_CANONICAL) < _MAX_CANONICAL:
        _CANONICAL[name] = result
    return result


def _value(value: bytes | str) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if CR in raw or LF in raw:
        # As twisted.web sanitises a value: no line break can end the header early.
        raw = b" ".join(raw.splitlines())
    return raw


_KEYS: dict[bytes | str, bytes] = {}


def _key(name: bytes | str) -> bytes:
    """The key a header is kept under: its name in lower case."""
    if isinstance(name, str):
        name = name.encode("iso-8859-1")
    return name.lower()


def _checked_key(name: bytes | str) -> bytes:
    """L{_key} of a name being set, which must be a token (as twisted.web's must)."""
    key = _KEYS.get(name)
    if key is None:
        key = canonical_name(name).lower()
        if len(_KEYS) < _MAX_CANONICAL:
            _KEYS[name] = key
    return key


class DirectHeaders:
    """
    A request's or an answer's headers, with L{Headers}' meaning for the methods medichat
    uses: names kept canonical (L{canonical_name}), in the order first set; values with
    line breaks made spaces; a C{str} name's values given back as text.

    Kept by their names in lower case (two names have one canonical form exactly when
    they have one lower case), made canonical as they are listed.
    """

    __slots__ = ("_raw",)

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """
        @param pairs: names and values as a request's head has them: tokens, and values
            without line breaks (L{medichat.http._whole} reads no other).
        """
        raw: dict[bytes, list[bytes]] = {}
        for name, value in pairs:
            key = name.lower()
            values = raw.get(key)
            if values is None:
                raw[key] = [value]
            else:
                values.append(value)
        self._raw = raw

    def hasHeader(self, name: bytes | str) -> bool:
        return _key(name) in self._raw

    def getRawHeaders(self, name: bytes | str, default: Any = None) -> Any:
        values = self._raw.get(_key(name))
        if not values:
            return default
        if isinstance(name, str):
            return [value.decode("utf-8") for value in values]
        return values

    def setRawHeaders(self, name: bytes | str, values: Sequence[bytes | str]) -> None:
        self._raw[_checked_key(name)] = [_value(value) for value in values]

    def addRawHeader(self, name: bytes | str, value: bytes | str) -> None:
        self._raw.setdefault(_checked_key(name), []).append(_value(value))

    def removeHeader(self, name: bytes | str) -> None:
        self._raw.pop(_key(name), None)

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, Sequence[bytes]]]:
        return ((canonical_name(key), values) for key, values in self._raw.items())


def _cookies(values: Sequence[bytes] | None) -> dict[bytes, bytes]:
    """The cookies of C{Cookie} headers, as twisted.web's C{parseCookies} reads them."""
    cookies: dict[bytes, bytes] = {}
    for text in values or ():
        for cookie in text.split(b";"):
            name, equals, value = cookie.lstrip().partition(b"=")
            if equals:
                cookies[name] = value
    return cookies


class DirectRequest:
    """
    One whole C{POST} to the chat message route, for the API's resource: what it and the
    code below it use of twisted.web's L{Request} (see the module).

    @ivar request_id: the request's id (C{X-Request-Id}, the log's context).
    @ivar started: when it was dispatched, by the site's clock (the access log).
    @ivar route_template: the route's template, for the metrics (set by the API).
    """

    method = b"POST"
    clientproto = b"HTTP/1.1"
    code = 200
    code_message = b"OK"
    sentLength = 0
    startedWriting = False
    finished = False
    chunked = False
    queued = 0
    request_id: str | None = None
    started: float | None = None
    route_template: str | None = None
    site: Any = None
    _disconnected = False

    def __init__(self, channel: Any, target: bytes, headers: Iterable[tuple[bytes, bytes]],
                 body: bytes, max_body: int) -> None:
        """
        @param channel: the connection's channel.
        @param target: the request's target: its path, with no query.
        @param headers: as the client sent them (names as sent).
        @param body: the whole body, of which at most C{max_body + 1} bytes are kept (as
            L{medichat.http.site.BoundedRequest} keeps them).
        """
        self.channel = channel
        self.uri = self.path = target
        self.prepath: list[bytes] = []
        self.postpath: list[bytes] = []
        self.sitepath: list[bytes] = []
        self.args: dict[bytes, list[bytes]] = {}
        self.requestHeaders = DirectHeaders(headers)
        self.responseHeaders = DirectHeaders()
        self.received_cookies = _cookies(self.requestHeaders.getRawHeaders(b"cookie"))
        self.cookies: list[bytes] = []
        self.content: BytesIO | None = BytesIO(body[:max_body + 1])
        self.notifications: list[Deferred[None]] = []
        self.client = channel.getPeer()
        self.host = channel.getHost()

    # What the resources read

    def getHeader(self, key: bytes | str) -> Any:
        if type(key) is bytes:
            # What getRawHeaders does, at once: a bytes name gives bytes.
            values = self.requestHeaders._raw.get(key.lower())
            return values[-1] if values else None
        values = self.requestHeaders.getRawHeaders(key)
        return None if values is None else values[-1]

    def getCookie(self, key: bytes) -> bytes | None:
        return self.received_cookies.get(key)

    def isSecure(self) -> bool:
        channel = self.channel
        return channel is not None and bool(channel.isSecure())

    def getClientAddress(self) -> Any:
        return self.client

    def getHost(self) -> Any:
        return self.host

    def getComponent(self, interface: Any, default: Any = None) -> Any:
        return default

    # What they set

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = RESPONSES.get(code, b"Unknown Status") if message is None else message

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        # What setRawHeaders(name, [value]) does, at once.
        key = _KEYS.get(name) or _checked_key(name)
        if type(value) is not bytes or CR in value or LF in value:
            value = _value(value)
        self.responseHeaders._raw[key] = [value]

    def notifyFinish(self) -> Deferred[None]:
        finished: Deferred[None] = Deferred()
        self.notifications.append(finished)
        return finished

    # Running it

    def run(self, resource: IResource, prepath: list[bytes], postpath: list[bytes],
            date: Callable[[], bytes]) -> None:
        """
        Dispatch the request to C{resource} (the API's, found as twisted.web's walk of the
        resource tree finds it, with C{prepath} and C{postpath}), as
        L{medichat.http.site.BoundedRequest.process} and twisted.web's C{render} do.
        A resource that fails is answered 500 as twisted.web answers it (no traceback);
        so is one that renders something other than bytes or C{NOT_DONE_YET}, which
        the API never does (twisted.web's page for that says more).
        """
        channel = self.channel
        site = self.site = channel.site
        self.request_id = site.request_ids.next()
        self.started = site.reactor.seconds()
        headers = self.responseHeaders._raw
        headers[b"x-request-id"] = [self.request_id.encode("ascii")]
        token = request_id.set(self.request_id)
        try:
            headers[b"server"] = [version]
            headers[b"date"] = [date()]
            self.sitepath = list(prepath)
            self.prepath = prepath
            self.postpath = postpath
            try:
                body = resource.render(self)  # type: ignore[arg-type]
                if body is not NOT_DONE_YET:
                    if not isinstance(body, bytes):
                        raise TypeError(f"{resource!r} rendered {body!r}, not bytes")
                    self.setHeader(b"content-length", b"%d" % len(body))
                    self.write(body)
                    self.finish()
            except BaseException:
                self.processingFailed(Failure())
        finally:
            request_id.reset(token)

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish was called.")
        if self._disconnected:
            return
        head = b""
        if not self.startedWriting:
            self.startedWriting = True
            headers = self.responseHeaders
            raw = headers._raw
            code = self.code
            if code not in NO_BODY_CODES:
                length = raw.get(b"content-length")
                if not raw.get(b"content-type") and not (length and length[0] == b"0"):
                    # twisted.web's default type, for an answer that has a body.
                    headers.setRawHeaders(b"Content-Type", [b"text/html"])
                if not length:
                    headers.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
                    self.chunked = True
            if self.cookies:
                headers.setRawHeaders(b"Set-Cookie", self.cookies)
            lines = [b"HTTP/1.1 %d %s\r\n" % (code, self.code_message)]
            for key, values in raw.items():
                name = _CANONICAL.get(key) or canonical_name(key)
                for value in values:
                    lines += (name, b": ", value, b"\r\n")
            lines.append(b"\r\n")
            head = b"".join(lines)
            if code in NO_BODY_CODES:
                self.channel.write(head)
                self.write = self._nothing  # type: ignore[method-assign]
                return
        self.sentLength += len(data)
        if self.chunked and data:
            data = b"".join(toChunk(data))
        if head or data:
            self.channel.write(head + data)

    def _nothing(self, data: bytes) -> None:
        """Writes after the head of an answer that has no body (204, 304)."""

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError(
                "Request.finish called on a request after its connection was lost; "
                "use Request.notifyFinish to keep track of this."
            )
        if self.finished:
            warnings.warn("Warning! request.finish called twice.", stacklevel=2)
            return
        if not self.startedWriting:
            self.write(b"")
        channel = self.channel
        if self.chunked:
            channel.write(b"0\r\n\r\n")
        factory = getattr(channel, "factory", None)
        if factory is not None:
            factory.log(self)
        self.finished = True
        channel.requestDone(self)
        self.channel = None
        if self.content is not None:
            self.content.close()
            self.content = None
        notifications, self.notifications = self.notifications, []
        for finished in notifications:
            finished.callback(None)

    def processingFailed(self, reason: Failure) -> Failure:
        """As twisted.web answers a request whose resource failed: 500, without a traceback."""
        _log.failure("", failure=reason)
        body = (b"<html><head><title>Processing Failed</title></head><body>"
                b"<b>Processing Failed</b></body></html>")
        self.setResponseCode(500)
        self.setHeader(b"Content-Type", b"text/html")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return reason

    def connectionLost(self, reason: Failure) -> None:
        """The connection went before the answer was done (the channel tells)."""
        self._disconnected = True
        self.channel = None
        if self.content is not None:
            self.content.close()
        notifications, self.notifications = self.notifications, []
        for finished in notifications:
            finished.errback(reason)

    def loseConnection(self) -> None:
        if self.channel is not None:
            self.channel.loseConnection()


_SEGMENT = re.compile(rb"/v1/conversation/([A-Za-z0-9_-]+)/message\Z")
"""The chat message route below the base path, for an id of letters, digits, C{_} and C{-}."""

JSON_CONTENT_TYPE = re.compile(rb"[ \t]*application/json(?:[ \t;]|\Z)", re.IGNORECASE)
"""
A C{Content-Type} that is certainly C{application/json}, whatever its parameters: neither
of the form types twisted.web looks for.
"""


class DirectRoute:
    """
    Which whole POSTs a channel answers with a L{DirectRequest}, and where they go.

    @ivar request_factory: makes the requests (wrapped by the metrics, as the site's
        C{requestFactory} is).
    """

    def __init__(self, base_path: str, resource: IResource, date: Callable[[], bytes],
                 max_body: int) -> None:
        """
        @param base_path: the API's base path (normalised: C{""} or C{"/api"}).
        @param resource: the API's resource, mounted at the base path.
        @param date: the C{Date} header's value now.
        @param max_body: the most body bytes a request keeps, beyond one.
        """
        self._base = base_path.encode("ascii")
        self._prepath = [segment for segment in self._base.split(b"/") if segment]
        self._resource = resource
        self._date = date
        self._max_body = max_body
        self.request_factory: Callable[..., Any] = DirectRequest

    def match(self, whole: WholeRequest) -> list[bytes] | None:
        """
        The path's segments below the base, for a message POST that a L{DirectRequest}
        answers as twisted.web's would be; L{None} for any other.
        """
        base = self._base
        target = whole.target
        if not target.startswith(base):
            return None
        found = _SEGMENT.match(target, len(base))
        # Not ASCII: the root's check refuses headers that are not UTF-8, twisted.web's.
        # A type other than JSON: twisted.web parses a form's body, and refuses a
        # malformed one itself.
        content_type = whole.content_type
        if found is None or not whole.ascii or (
                content_type and JSON_CONTENT_TYPE.match(content_type) is None):
            return None
        return [b"v1", b"conversation", found.group(1), b"message"]

    def make(self, channel: Any, whole: WholeRequest) -> Any:
        """A request for C{channel} (L{request_factory}'s)."""
        return self.request_factory(channel, whole.target, whole.headers, whole.body,
                                    self._max_body)

    def run(self, request: Any, postpath: list[bytes]) -> None:
        """Dispatch C{request} (made by L{make}) to the API's resource."""
        request.run(self._resource, list(self._prepath), postpath, self._date)
