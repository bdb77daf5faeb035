r"""
A sans-IO codec for STOMP 1.0, 1.1 and 1.2 frames: bytes in, L{Frame}s out, and back.

The wire format
===============

A STOMP frame is a command line, header lines, a blank line, a body and a NUL octet
(shown as C{^@})::

    SEND
    destination:/queue/a
    content-type:text/plain
    content-length:5

    hello^@

  - Lines end with C{\n} or C{\r\n}.  The command is one of a fixed set of upper-case words.
  - A header is C{name:value} in UTF-8, split at the first colon.  When a name repeats, all
    entries are kept in order and the first one is the value (STOMP 1.2).
  - From 1.1 on, header text is escaped: a backslash as C{\\}, a line feed as C{\n} and a
    colon as C{\c}; 1.2 adds a carriage return as C{\r}.  Any other escape is a fatal error.
    C{CONNECT}, C{STOMP} and C{CONNECTED} frames are never escaped, since they are sent
    before the version is agreed; in 1.0 header text is always literal.
  - The body runs to the first NUL, or, when the frame has a C{content-length} header, it
    is exactly that many octets (NULs included), and a NUL must follow them.
  - Between frames a peer may send bare end-of-lines as heart-beats.

L{FrameParser} turns a byte stream, cut anywhere, into whole frames and enforces L{Limits}
as early as it can, so that an oversized frame is refused before it is buffered.
L{encode_frame} writes a frame.  Nothing here does I/O or knows about Twisted: the STOMP
session feeds bytes in and sends the bytes that come out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import define, frozen

__all__ = [
    "CLIENT_COMMANDS",
    "HEARTBEAT",
    "SERVER_COMMANDS",
    "VERSIONS",
    "Frame",
    "FrameError",
    "FrameParser",
    "FrameTooLarge",
    "HeaderLineTooLong",
    "Limits",
    "MalformedFrame",
    "TooManyHeaders",
    "encode_frame",
    "escape_header",
    "unescape_header",
]

VERSIONS: tuple[str, ...] = ("1.0", "1.1", "1.2")
"""The STOMP versions this codec speaks, oldest first."""

CLIENT_COMMANDS: frozenset[str] = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
"""The commands a client may send; what a server's parser accepts."""

SERVER_COMMANDS: frozenset[str] = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
"""The commands a server may send; what a client's parser accepts."""

HEARTBEAT = b"\n"
"""A heart-beat: one bare end-of-line, sent where no frame is due."""

_ALL_COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS

# Sent before a version is agreed, so their headers keep 1.0's literal form (spec, "Value
# Encoding").  STOMP is CONNECT under another name.
_LITERAL_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})

_ESCAPE_11 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
_ESCAPE_12 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"})
_UNESCAPE_11 = {"\\": "\\", "n": "\n", "c": ":"}
_UNESCAPE_12 = {**_UNESCAPE_11, "r": "\r"}
# ".?" so that a lone backslash at the very end is seen, and refused, too.
_ESCAPE_SEQUENCE = re.compile(r"\\(.?)", re.DOTALL)

_EOLS = re.compile(rb"(?:\r?\n)+")
_CR = 13

# A content-length longer than this cannot be under any sensible limit; refusing it early
# also keeps int() away from CPython's limit on digits.
_MAX_LENGTH_DIGITS = 18

_IDLE, _COMMAND, _HEADERS, _BODY = range(4)


@frozen
class Limits:
    """
    How large a frame a L{FrameParser} accepts.

    @ivar max_frame_bytes: the largest frame, in octets, from the first octet of its
        command to its terminating NUL, both included (heart-beats around it excluded).
        L{encode_frame}'s output for a frame of exactly this size is accepted.
    @ivar max_headers: the most header lines in one frame, repeated names included.
    @ivar max_header_line: the longest header line, and the longest command line, in octets
        without the end-of-line.
    """

    max_frame_bytes: int = 65536
    max_headers: int = 32
    max_header_line: int = 8192


class FrameError(Exception):
    """
    Input that is not a STOMP frame this parser accepts; fatal for the connection.

    @ivar message: a short explanation in printable ASCII without line breaks, fit for the
        C{message} header of an C{ERROR} frame.
    @ivar frames: the whole frames that the failing L{FrameParser.feed} call completed
        before it found the error, so that a session may act on them before it answers
        with C{ERROR}; empty when the error is raised again by a later call.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.frames: list[Frame] = []


class FrameTooLarge(FrameError):
    """
    A frame, or its announced C{content-length}, is over L{Limits.max_frame_bytes}.
    """


class TooManyHeaders(FrameError):
    """
    A frame has more than L{Limits.max_headers} header lines.
    """


class HeaderLineTooLong(FrameError):
    """
    A header line or the command line is longer than L{Limits.max_header_line}.
    """


class MalformedFrame(FrameError):
    """
    Bytes that break the frame grammar: an unknown command, a header line without a colon
    or name, an undefined escape, header text that is not UTF-8, a bad C{content-length}
    or no NUL right after the C{content-length} octets.
    """


@define
class Frame:
    """
    One STOMP frame.

    @ivar command: the command, such as C{"SEND"}.
    @ivar headers: C{(name, value)} pairs, unescaped, in wire order; a repeated name is
        kept every time it occurs.
    @ivar body: the body octets.
    """

    command: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """
        The value of a header, the first one when the name repeats (STOMP 1.2).

        @param name: the header name, matched exactly (STOMP names are case sensitive).
        @param default: what to return when there is no such header.
        @return: the value, or C{default}.
        """
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_ci(self, name: str) -> str | None:
        """
        The value of a header whose name matches C{name} in any case, the first one when
        several do; for headers clients spell as they like, such as C{Authorization}.

        @param name: the header name, in any case.
        @return: the value, or L{None} if no header matches.
        """
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def _check_version(version: str) -> None:
    """
    Refuse a version this codec does not speak.

    @raise ValueError: if C{version} is not one of L{VERSIONS}.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown STOMP version {version!r}")


def _show(raw: bytes, limit: int = 24) -> str:
    """
    Quote some untrusted octets for an error message: printable ASCII, no line breaks.

    @param raw: the octets.
    @param limit: how many of them to show at most.
    @return: a quoted, shortened rendering.
    """
    shown = ascii(raw[:limit].decode("utf-8", "replace"))
    if len(shown) > 64:
        # Escapes (\x00, \ufffd) can make a few octets long; keep messages short.
        return shown[:60] + "'..."
    return shown + "..." if len(raw) > limit else shown


def escape_header(text: str, version: str) -> str:
    r"""
    Escape a header name or value for a frame of the given version.

    1.1 writes C{\} as C{\\}, a line feed as C{\n} and C{:} as C{\c}; 1.2 also writes a
    carriage return as C{\r}; 1.0 has no escapes and returns C{text} unchanged.

    @param text: the header name or value.
    @param version: C{"1.0"}, C{"1.1"} or C{"1.2"}.
    @return: the escaped text.
    @raise ValueError: for an unknown version.
    """
    if version == "1.2":
        return text.translate(_ESCAPE_12)
    if version == "1.1":
        return text.translate(_ESCAPE_11)
    _check_version(version)
    return text


def unescape_header(text: str, version: str) -> str:
    r"""
    Undo L{escape_header}.

    @param text: a header name or value as it was on the wire (decoded from UTF-8).
    @param version: C{"1.0"}, C{"1.1"} or C{"1.2"}; in 1.0 C{text} is taken literally.
    @return: the unescaped text.
    @raise MalformedFrame: for an escape the version does not define, such as C{\t}, C{\r}
        in 1.1, or a backslash at the end of C{text}.
    @raise ValueError: for an unknown version.
    """
    if version == "1.2":
        table = _UNESCAPE_12
    elif version == "1.1":
        table = _UNESCAPE_11
    else:
        _check_version(version)
        return text
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        try:
            return table[match.group(1)]
        except KeyError:
            raise MalformedFrame(
                f"undefined escape sequence {ascii(match.group(0))} in header"
            ) from None

    return _ESCAPE_SEQUENCE.sub(replace, text)


def _parse_content_length(value: str) -> int:
    """
    Read a C{content-length} value: a non-negative decimal count of octets.

    @raise MalformedFrame: if C{value} is not ASCII digits only.
    @raise FrameTooLarge: if it has more digits than any limit could allow.
    """
    if not (value.isascii() and value.isdigit()):
        raise MalformedFrame(f"bad content-length {_show(value.encode('utf-8'))}")
    if len(value) > _MAX_LENGTH_DIGITS:
        raise FrameTooLarge(f"content-length {value[:_MAX_LENGTH_DIGITS]}... is too large")
    return int(value)


def encode_frame(
    command: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "1.2",
    content_length: bool = True,
) -> bytes:
    r"""
    Write one frame.

    Header names and values are escaped as C{version} says, except in C{CONNECT},
    C{STOMP} and C{CONNECTED} frames, which are never escaped.  Lines end with C{\n}; the
    frame ends with its NUL and nothing after it.

    @param command: one of L{CLIENT_COMMANDS} or L{SERVER_COMMANDS}.
    @param headers: C{(name, value)} pairs, unescaped, written in this order.
    @param body: the body octets.
    @param version: the session's STOMP version.
    @param content_length: add a C{content-length} header for a non-empty body unless
        C{headers} has one already.  Without it, the body must not contain a NUL.
    @return: the frame's octets.
    @raise ValueError: for an unknown command or version; for an empty header name or a
        NUL in header text; for header text that the frame cannot carry unescaped (a line
        feed, a colon in a name, a carriage return ending a value); for a C{content-length}
        header that does not match C{body}; or for a NUL in a body without
        C{content-length}.
    """
    _check_version(version)
    if command not in _ALL_COMMANDS:
        raise ValueError(f"unknown STOMP command {command!r}")
    literal = version == "1.0" or command in _LITERAL_COMMANDS
    table = _ESCAPE_12 if version == "1.2" else _ESCAPE_11
    lines = [command]
    declared: str | None = None
    for name, value in headers:
        if not name:
            raise ValueError("empty header name")
        if "\x00" in name or "\x00" in value:
            raise ValueError(f"NUL in header {name!r}")
        if name == "content-length" and declared is None:
            declared = value
        if literal:
            if ":" in name or "\n" in name or "\n" in value:
                raise ValueError(f"header {name!r} cannot be sent unescaped in {command}")
        else:
            name = name.translate(table)
            value = value.translate(table)
        # The parser strips one carriage return before each line feed.
        if value.endswith("\r"):
            raise ValueError(f"header {name!r} ends with a carriage return")
        lines.append(f"{name}:{value}")
    if declared is not None:
        if not (
            declared.isascii()
            and declared.isdigit()
            and len(declared) <= _MAX_LENGTH_DIGITS
            and int(declared) == len(body)
        ):
            raise ValueError(f"content-length {declared!r} but the body has {len(body)} bytes")
    elif body and content_length:
        lines.append(f"content-length:{len(body)}")
    elif 0 in body:  # NUL, as a number (a bytes argument is slower: see http._whole.CR)
        raise ValueError("a body containing NUL needs a content-length header")
    lines.append("\n")
    return "\n".join(lines).encode("utf-8") + body + b"\x00"


class FrameParser:
    r"""
    Turns a byte stream into L{Frame}s, whatever way the stream is cut.

    Bytes are buffered until a frame is whole.  Parsing is incremental: searches resume
    where the previous call stopped, so a large frame arriving in many small pieces costs
    time linear in its size.  Limits are checked as soon as they can be: a
    C{content-length} over the frame limit is refused right after the headers, and a
    header line or a body without NUL as soon as the buffered part is too long.

    Beyond the grammar, a NUL in place of the blank line that ends the headers is taken as
    the end of a frame with an empty body (the specification's own C{DISCONNECT} and
    C{RECEIPT} examples are written so), and every version accepts C{\r\n} line ends.

    @ivar limits: the L{Limits} in force; may be replaced at any time, for instance with a
        smaller budget before the client has authenticated.  Frames still being received
        are checked against the new limits from then on.
    @ivar bytes_seen: how many bytes have been fed in total.
    """

    def __init__(
        self, limits: Limits = Limits(), *, commands: frozenset[str] = CLIENT_COMMANDS
    ) -> None:
        """
        @param limits: the initial L{Limits}.
        @param commands: the commands to accept; any other is L{MalformedFrame}.  A server
            takes L{CLIENT_COMMANDS} (the default), a client L{SERVER_COMMANDS}.
        """
        self.limits = limits
        self.bytes_seen = 0
        self._version = "1.2"
        self._commands = {command.encode("ascii"): command for command in commands}
        self._buffer = bytearray()
        self._error: FrameError | None = None
        self._state = _IDLE
        # Offsets into _buffer: where the current frame (or the heart-beats before it)
        # starts, where its current line starts, where the next search for a line end or
        # a NUL resumes, and where its body starts.
        self._frame_start = 0
        self._line_start = 0
        self._scan = 0
        self._body_start = 0
        self._command = ""
        self._headers: list[tuple[str, str]] = []
        self._content_length: int | None = None

    @property
    def between_frames(self) -> bool:
        """
        C{True} when no part of a frame (nor half of a C{"\\r\\n"} heart-beat) is
        buffered and the stream is not broken: the next byte would start something new.
        """
        return self._state == _IDLE and not self._buffer and self._error is None

    @property
    def version(self) -> str:
        """
        The STOMP version, C{"1.0"}, C{"1.1"} or C{"1.2"} (the default), that decides how
        header text is unescaped.  The session sets it once the version is agreed; it
        applies to every frame whose headers are read after that.

        @raise ValueError: when set to any other value.
        """
        return self._version

    @version.setter
    def version(self, version: str) -> None:
        _check_version(version)
        self._version = version

    def feed(self, data: bytes) -> list[Frame]:
        """
        Take more bytes of the stream.

        @param data: the next bytes, in any amount.
        @return: the frames that C{data} completed, in order; often none, possibly several.
        @raise FrameError: if the stream is not acceptable STOMP.  The parser is then
            broken: it drops its buffer and every later call raises the same error.  The
            frames completed by this call before the error are on the error's
            C{frames}.
        """
        error = self._error
        if error is not None:
            error.frames = []
            raise error
        self.bytes_seen += len(data)
        self._buffer += data
        frames: list[Frame] = []
        try:
            self._parse(frames)
        except FrameError as e:
            e.frames = frames
            self._error = e
            self._buffer = bytearray()
            raise
        self._compact()
        return frames

    def _compact(self) -> None:
        """
        Drop the bytes of the frames already returned, keeping offsets right.
        """
        drop = self._frame_start
        if drop:
            # Deleting from the front of a bytearray only moves its start: cheap.
            del self._buffer[:drop]
            self._frame_start = 0
            self._line_start -= drop
            self._scan -= drop
            self._body_start -= drop

    def _parse(self, frames: list[Frame]) -> None:
        """
        Read as far as the buffer allows, appending finished frames to C{frames}.
        """
        buf = self._buffer
        while True:
            end = len(buf)
            state = self._state
            if state == _IDLE:
                start = self._frame_start
                eols = _EOLS.match(buf, start)
                if eols is not None:
                    start = self._frame_start = eols.end()
                # A carriage return at the very end may be half of a "\r\n" heart-beat.
                if start == end or (start + 1 == end and buf[start] == _CR):
                    return
                self._line_start = self._scan = start
                self._state = _COMMAND
            elif state == _BODY:
                if not self._read_body(buf, end, frames):
                    return
            else:
                if not self._read_line(buf, end, state, frames):
                    return

    def _read_line(self, buf: bytearray, end: int, state: int, frames: list[Frame]) -> bool:
        """
        Read the command line or one header line.

        @return: C{True} if a line (or a frame) was finished, C{False} if more bytes are
            needed.
        """
        limits = self.limits
        line_start = self._line_start
        if state == _HEADERS and line_start < end and buf[line_start] == 0:
            # NUL where the blank line belongs: an empty body, leniently.
            if self._content_length:
                raise MalformedFrame("no blank line after the headers")
            self._body_start = line_start
            self._finish(buf, line_start, frames)
            return True
        newline = buf.find(b"\n", self._scan)
        if newline < 0:
            self._scan = end
            pending = end - line_start
            if pending and buf[end - 1] == _CR:
                pending -= 1
            if pending > limits.max_header_line:
                raise HeaderLineTooLong(f"header line longer than {limits.max_header_line} bytes")
            self._check_frame_size(end + 1)
            return False
        line_end = newline
        if line_end > line_start and buf[line_end - 1] == _CR:
            line_end -= 1
        if line_end - line_start > limits.max_header_line:
            raise HeaderLineTooLong(f"header line longer than {limits.max_header_line} bytes")
        # The frame still needs at least its NUL.
        self._check_frame_size(newline + 2)
        self._line_start = self._scan = newline + 1
        line = bytes(buf[line_start:line_end])
        if state == _COMMAND:
            command = self._commands.get(line)
            if command is None:
                raise MalformedFrame(f"unknown command {_show(line)}")
            self._command = command
            self._state = _HEADERS
        elif line:
            self._add_header(line)
        else:
            self._body_start = newline + 1
            self._state = _BODY
            if self._content_length is not None:
                self._check_frame_size(newline + 2 + self._content_length)
        return True

    def _add_header(self, line: bytes) -> None:
        """
        Parse one header line and add it to the frame being read.
        """
        if len(self._headers) >= self.limits.max_headers:
            raise TooManyHeaders(f"more than {self.limits.max_headers} headers")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame("header is not UTF-8") from None
        name, colon, value = text.partition(":")
        if not colon:
            raise MalformedFrame(f"header line without ':' {_show(line)}")
        if not name:
            raise MalformedFrame("empty header name")
        if self._version != "1.0" and self._command not in _LITERAL_COMMANDS:
            name = unescape_header(name, self._version)
            value = unescape_header(value, self._version)
        if name == "content-length" and self._content_length is None:
            self._content_length = _parse_content_length(value)
        self._headers.append((name, value))

    def _read_body(self, buf: bytearray, end: int, frames: list[Frame]) -> bool:
        """
        Read the body and its NUL.

        @return: C{True} if the frame was finished, C{False} if more bytes are needed.
        """
        length = self._content_length
        if length is not None:
            nul = self._body_start + length
            if nul >= end:
                return False
            if buf[nul] != 0:
                raise MalformedFrame("no NUL after content-length bytes")
        else:
            nul = buf.find(b"\x00", self._scan)
            if nul < 0:
                self._scan = end
                self._check_frame_size(end + 1)
                return False
        self._finish(buf, nul, frames)
        return True

    def _finish(self, buf: bytearray, nul: int, frames: list[Frame]) -> None:
        """
        Complete the frame whose NUL is at C{nul} and get ready for the next one.
        """
        self._check_frame_size(nul + 1)
        body = bytes(buf[self._body_start : nul]) if nul > self._body_start else b""
        frames.append(Frame(self._command, self._headers, body))
        self._state = _IDLE
        self._frame_start = nul + 1
        self._headers = []
        self._content_length = None

    def _check_frame_size(self, frame_end: int) -> None:
        """
        Refuse the current frame if it reaches at least to C{frame_end} and that is over the
        limit.

        @param frame_end: the buffer offset just past the last octet the frame will have
            at least.
        """
        maximum = self.limits.max_frame_bytes
        if frame_end - self._frame_start > maximum:
            raise FrameTooLarge(f"frame larger than {maximum} bytes")
