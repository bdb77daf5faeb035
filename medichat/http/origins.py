"""
Which web origins may use a user's ambient credentials (the employee session cookie).

A browser attaches cookies to any request to our host, whichever page made it, and a
WebSocket handshake is not subject to CORS at all.  So, as Spring does, a cookie-carrying
request that changes state, or a WebSocket handshake, is accepted only when its C{Origin}
header is:

  - absent (native apps and backend tools send none; browsers always send one on
    cross-origin requests and on WebSocket handshakes);
  - the server's own origin: the same scheme, host and port as the request's C{Host}
    header (ports defaulting to 80 for C{http}/C{ws} and 443 for C{https}/C{wss});
  - or one of the configured origins (C{--allowed-origin}); C{*} allows any.

Behind a proxy that terminates TLS the request arrives as plain HTTP, so the browser's
C{https://...} origin is not "the same" as the request's: list the public origin
explicitly there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from attrs import field, frozen

__all__ = ["OriginPolicy", "normalise_origin"]

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_ORIGIN = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^\s/?#@\[\]:]+)(?::(?P<port>[0-9]{1,5}))?$"
)
_HOST = re.compile(r"^(?P<host>\[[0-9a-f:.]+\]|[^\s/?#@\[\]:]+)(?::(?P<port>[0-9]{1,5}))?$")

_Origin = tuple[str, str, int | None]


def normalise_origin(origin: str) -> _Origin | None:
    """
    Split an origin (C{scheme://host[:port]}) into C{(scheme, host, port)}, lower-cased and
    with the scheme's default port filled in.

    @return: L{None} if C{origin} is not a serialised origin (C{null} included).
    """
    match = _ORIGIN.match(origin.strip().lower())
    if match is None:
        return None
    scheme = match.group("scheme")
    port_text = match.group("port")
    port = int(port_text) if port_text else _DEFAULT_PORTS.get(scheme)
    return scheme, match.group("host"), port


def _own_origin(scheme: str, host_header: str | None) -> _Origin | None:
    if not host_header:
        return None
    match = _HOST.match(host_header.strip().lower())
    if match is None:
        return None
    port_text = match.group("port")
    port = int(port_text) if port_text else _DEFAULT_PORTS.get(scheme)
    return scheme, match.group("host"), port


@frozen
class OriginPolicy:
    """
    The configured list of allowed origins and the rule above.

    @ivar allowed: origins as given (C{https://dashboard.example.com}, C{http://localhost:3000}),
        or C{*} for any.  A trailing C{/} and letter case do not matter; an entry that is not
        an origin at all matches only itself, verbatim (so C{null} can be listed).
    """

    allowed: Sequence[str] = field(converter=tuple)
    _any: bool = field(init=False)
    _origins: frozenset[_Origin] = field(init=False)
    _verbatim: frozenset[str] = field(init=False)

    def __attrs_post_init__(self) -> None:
        origins = set()
        verbatim = set()
        for entry in self.allowed:
            normalised = normalise_origin(entry.strip().rstrip("/"))
            if normalised is None:
                verbatim.add(entry.strip())
            else:
                origins.add(normalised)
        object.__setattr__(self, "_any", "*" in verbatim)
        object.__setattr__(self, "_origins", frozenset(origins))
        object.__setattr__(self, "_verbatim", frozenset(verbatim))

    def is_listed(self, origin: str) -> bool:
        """
        C{True} if C{origin} is one of the configured origins (or C{*} is configured).
        """
        if self._any or origin in self._verbatim:
            return True
        normalised = normalise_origin(origin)
        return normalised is not None and normalised in self._origins

    def is_allowed(self, origin: str | None, *, scheme: str, host_header: str | None) -> bool:
        """
        May a request with this C{Origin} header use ambient credentials?

        @param origin: the C{Origin} header, or L{None} if there was none.
        @param scheme: the request's own scheme, C{"http"} or C{"https"} (C{"ws"}/C{"wss"}
            are treated alike).
        @param host_header: the request's C{Host} header, or L{None}.
        """
        if origin is None:
            return True
        if self.is_listed(origin):
            return True
        normalised = normalise_origin(origin)
        if normalised is None:
            return False
        own = _own_origin(_http_scheme(scheme.lower()), host_header)
        if own is None:
            return False
        return (_http_scheme(normalised[0]), *normalised[1:]) == own


def _http_scheme(scheme: str) -> str:
    """
    The page scheme that goes with a request scheme (a WebSocket handshake's C{ws} is
    made from an C{http} page).
    """
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)
