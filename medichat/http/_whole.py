"""
A request that arrived whole, read at once.

twisted.web reads a request's head a line at a time: each line goes through
L{LineReceiver}, the channel's C{lineReceived} (medichat's, which counts the head's size,
then twisted.web's) and C{headerReceived}, one header at a time; a chat message's POST
has seven or eight lines, and that reading was a tenth of the reactor thread's
instructions per message (docs/benchmarks.md, twentieth session on issue 10).  Most
POSTs arrive in one read, head and body together.  L{whole_post} reads such a request in
one pass, when it is one that twisted.web would read in the same way with the same
outcome, and says L{None} for anything else, which twisted.web then reads as before:
whatever it would refuse, and whatever it treats specially (a folded header line,
C{Transfer-Encoding}, C{Expect}, C{Upgrade}), a head over the channel's limits (which it
answers 431), HTTP/1.0, a request split over several reads or followed by another.
"""

from __future__ import annotations

import re

from attrs import frozen

__all__ = ["CR", "LF", "NUL", "TOKEN", "WholeRequest", "whole_post"]

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
"""A header name twisted.web takes as it is (RFC 9110's token)."""

_TARGET = re.compile(rb"[\x21-\xb0]+\Z")
"""A request target twisted.web takes: bytes 33 to 176 (its own bounds), at least one."""

NUL, CR, LF = 0, 13, 10
"""
Bytes as numbers, for membership tests: C{CR in value} finds a byte without the
C{TypeError} that CPython 3.11's C{bytes.__contains__} makes and clears for a C{bytes}
argument (C{b"\r" in value} takes nine times as long; 5 % of the reactor thread's
instructions a message, docs/benchmarks.md, twenty-first session on issue 10).
"""

_LEFT_TO_TWISTED = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
"""Headers that make twisted.web do more than store them."""


@frozen
class WholeRequest:
    """
    A C{POST} read whole: its target, its headers as twisted.web stores them (names as
    sent, values stripped of spaces and tabs), its body; and, found on the way, its
    first C{Content-Type} and whether its head is all ASCII.
    """

    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    content_type: bytes | None = None
    ascii: bool = False


def whole_post(data: bytes, max_line: int, max_head: int, max_headers: int
               ) -> WholeRequest | None:
    """
    C{data} as one whole HTTP/1.1 C{POST}, head and body and nothing after, if
    twisted.web would read it to the same request; else L{None}.

    @param max_line: the longest line the channel reads (C{MAX_LENGTH}).
    @param max_head: the most bytes of head lines it takes (C{totalHeadersSize}).
    @param max_headers: the most headers it takes (C{maxHeaders}).
    """
    if data[:5] != b"POST ":
        return None
    end = data.find(b"\r\n\r\n")
    # Every line, and the head as a whole, within the channel's limits.
    if end < 0 or end > max_head or end > max_line:
        return None
    head = data[:end]
    lines = head.split(b"\r\n")
    if len(lines) - 1 > max_headers:
        return None
    request_line = lines[0].split(b" ")
    if (len(request_line) != 3 or request_line[2] != b"HTTP/1.1"
            or _TARGET.match(request_line[1]) is None):
        return None
    headers = []
    length = None
    content_type = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or TOKEN.match(name) is None:
            return None
        lower = name.lower()
        value = value.strip(b" \t")
        if lower in _LEFT_TO_TWISTED or NUL in value or CR in value or LF in value:
            return None
        if lower == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif lower == b"content-type" and content_type is None:
            content_type = value
        headers.append((name, value))
    if length is None or len(data) != end + 4 + length:
        return None
    return WholeRequest(request_line[1], tuple(headers), data[end + 4:], content_type,
                        head.isascii())
