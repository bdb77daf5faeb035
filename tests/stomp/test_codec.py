"""
Tests for L{medichat.stomp.codec}, the STOMP frame parser and encoder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from medichat.stomp.codec import (
    CLIENT_COMMANDS,
    HEARTBEAT,
    SERVER_COMMANDS,
    Frame,
    FrameError,
    FrameParser,
    FrameTooLarge,
    HeaderLineTooLong,
    Limits,
    MalformedFrame,
    TooManyHeaders,
    encode_frame,
    escape_header,
    unescape_header,
)

ALL_COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS
LITERAL_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})
ROOMY = Limits(max_frame_bytes=10**7, max_headers=10**4, max_header_line=10**6)
SMALL = Limits(max_frame_bytes=120, max_headers=3, max_header_line=40)


def make_parser(
    version: str = "1.2",
    limits: Limits = Limits(),
    commands: frozenset[str] = ALL_COMMANDS,
) -> FrameParser:
    """
    A parser for the given version that accepts both clients' and servers' commands.
    """
    parser = FrameParser(limits, commands=commands)
    parser.version = version
    return parser


def parse(data: bytes, version: str = "1.2", limits: Limits = Limits()) -> list[Frame]:
    """
    Parse C{data} in one piece with a fresh parser.
    """
    return make_parser(version, limits).feed(data)


def feed_pieces(parser: FrameParser, pieces: Iterable[bytes]) -> list[Frame]:
    """
    Feed C{pieces} in turn and collect every frame.
    """
    frames: list[Frame] = []
    for piece in pieces:
        frames.extend(parser.feed(piece))
    return frames


def split_at(data: bytes, offsets: Iterable[int]) -> list[bytes]:
    """
    Cut C{data} at the given offsets.
    """
    cuts = [0, *sorted(offsets), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def run_until_error(
    parser: FrameParser, pieces: Iterable[bytes]
) -> tuple[list[Frame], FrameError | None]:
    """
    Feed C{pieces} until one raises; return every frame completed and the error, if any.
    """
    frames: list[Frame] = []
    for piece in pieces:
        try:
            frames.extend(parser.feed(piece))
        except FrameError as e:
            frames.extend(e.frames)
            return frames, e
    return frames, None


# The example frames of the STOMP 1.2 specification, in its order, with "^@" written as NUL.
# Its DISCONNECT and RECEIPT examples have no blank line before the NUL; see
# test_spec_error_example_as_printed for its ERROR example.
SPEC_ERROR_BODY = (
    b"The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\n"
    b"Hello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\n"
    b"for message propagation.\n"
)
SPEC_EXAMPLES: list[tuple[bytes, Frame]] = [
    (
        b"MESSAGE\nfoo:World\nfoo:Hello\n\n\x00",
        Frame("MESSAGE", [("foo", "World"), ("foo", "Hello")]),
    ),
    (
        b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\x00",
        Frame("CONNECT", [("accept-version", "1.2"), ("host", "stomp.github.org")]),
    ),
    (b"CONNECTED\nversion:1.2\n\n\x00", Frame("CONNECTED", [("version", "1.2")])),
    (
        b"CONNECT\naccept-version:1.0,1.1,2.0\nhost:stomp.github.org\n\n\x00",
        Frame("CONNECT", [("accept-version", "1.0,1.1,2.0"), ("host", "stomp.github.org")]),
    ),
    (b"CONNECTED\nversion:1.1\n\n\x00", Frame("CONNECTED", [("version", "1.1")])),
    (
        b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\n"
        b"Supported protocol versions are 1.2 2.1\x00",
        Frame(
            "ERROR",
            [("version", "1.2,2.1"), ("content-type", "text/plain")],
            b"Supported protocol versions are 1.2 2.1",
        ),
    ),
    (
        b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\x00",
        Frame(
            "SEND",
            [("destination", "/queue/a"), ("content-type", "text/plain")],
            b"hello queue a\n",
        ),
    ),
    (
        b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\x00",
        Frame("SUBSCRIBE", [("id", "0"), ("destination", "/queue/foo"), ("ack", "client")]),
    ),
    (b"UNSUBSCRIBE\nid:0\n\n\x00", Frame("UNSUBSCRIBE", [("id", "0")])),
    (
        b"ACK\nid:12345\ntransaction:tx1\n\n\x00",
        Frame("ACK", [("id", "12345"), ("transaction", "tx1")]),
    ),
    (
        b"NACK\nid:12345\ntransaction:tx1\n\n\x00",
        Frame("NACK", [("id", "12345"), ("transaction", "tx1")]),
    ),
    (b"BEGIN\ntransaction:tx1\n\n\x00", Frame("BEGIN", [("transaction", "tx1")])),
    (b"COMMIT\ntransaction:tx1\n\n\x00", Frame("COMMIT", [("transaction", "tx1")])),
    (b"ABORT\ntransaction:tx1\n\n\x00", Frame("ABORT", [("transaction", "tx1")])),
    (b"DISCONNECT\nreceipt:77\n\x00", Frame("DISCONNECT", [("receipt", "77")])),
    (b"RECEIPT\nreceipt-id:77\n\x00", Frame("RECEIPT", [("receipt-id", "77")])),
    (
        b"SEND\ndestination:/queue/a\nreceipt:message-12345\n\nhello queue a\x00",
        Frame(
            "SEND",
            [("destination", "/queue/a"), ("receipt", "message-12345")],
            b"hello queue a",
        ),
    ),
    (
        b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\n"
        b"content-type:text/plain\n\nhello queue a\x00",
        Frame(
            "MESSAGE",
            [
                ("subscription", "0"),
                ("message-id", "007"),
                ("destination", "/queue/a"),
                ("content-type", "text/plain"),
            ],
            b"hello queue a",
        ),
    ),
    (
        b"RECEIPT\nreceipt-id:message-12345\n\n\x00",
        Frame("RECEIPT", [("receipt-id", "message-12345")]),
    ),
    (
        b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:170\n"
        b"message: malformed frame received\n\n" + SPEC_ERROR_BODY + b"\x00",
        Frame(
            "ERROR",
            [
                ("receipt-id", "message-12345"),
                ("content-type", "text/plain"),
                ("content-length", "170"),
                ("message", " malformed frame received"),
            ],
            SPEC_ERROR_BODY,
        ),
    ),
]

# What real clients sent, one WebSocket message each, copied from shared/interop/*.jsonl.
CONVERSATION_TOPIC = "/v1/app/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf/typing/start"
STOMPJS_MESSAGES: list[tuple[bytes, Frame]] = [
    (
        b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\x00",
        Frame("CONNECT", [("accept-version", "1.2,1.1,1.0"), ("heart-beat", "10000,10000")]),
    ),
    (
        b"SUBSCRIBE\nreceipt:sub-0\nid:sub-0\ndestination:/v1/topic/online-employees\n\n\x00",
        Frame(
            "SUBSCRIBE",
            [
                ("receipt", "sub-0"),
                ("id", "sub-0"),
                ("destination", "/v1/topic/online-employees"),
            ],
        ),
    ),
    (
        b"DISCONNECT\nreceipt:close-1\n\n\x00",
        Frame("DISCONNECT", [("receipt", "close-1")]),
    ),
    (
        b"SEND\ndestination:" + CONVERSATION_TOPIC.encode() + b"\n\n\x00",
        Frame("SEND", [("destination", CONVERSATION_TOPIC)]),
    ),
]
STOMPPY_MESSAGES: list[tuple[bytes, Frame]] = [
    (
        b"STOMP\nAuthorization:Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\naccept-version:1.2\n"
        b"heart-beat:10000,10000\nhost:127.0.0.1\n\n\x00",
        Frame(
            "STOMP",
            [
                ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
                ("accept-version", "1.2"),
                ("heart-beat", "10000,10000"),
                ("host", "127.0.0.1"),
            ],
        ),
    ),
    (
        b"SUBSCRIBE\nack:auto\ndestination:/v1/topic/online-employees\nid:sub-0\n\n\x00",
        Frame(
            "SUBSCRIBE",
            [("ack", "auto"), ("destination", "/v1/topic/online-employees"), ("id", "sub-0")],
        ),
    ),
    (
        b"SEND\ndestination:" + CONVERSATION_TOPIC.encode() + b"\n\n\x00",
        Frame("SEND", [("destination", CONVERSATION_TOPIC)]),
    ),
    (
        b"DISCONNECT\nreceipt:1b193dac-3b87-47a5-9b24-b9c33ca9c052\n\n\x00",
        Frame("DISCONNECT", [("receipt", "1b193dac-3b87-47a5-9b24-b9c33ca9c052")]),
    ),
]

# A stream with a bit of everything: heart-beats in both forms, CRLF lines, escapes, a
# body with NULs behind content-length, repeated headers, an empty content-length.
MIXED_STREAM = (
    b"\n\r\n"
    b"CONNECT\r\naccept-version:1.2\r\nhost:a:b\r\n\r\n\x00\n"
    b"SUBSCRIBE\nid:0\ndestination:/v1/topic/x\\cy\n\n\x00"
    b"\r\n\n"
    b"SEND\ndestination:/q\ncontent-length:5\n\na\x00b\x00c\x00\n\n"
    b"SEND\ndestination:/q\ncontent-length:0\n\n\x00"
    b"SEND\r\nk:v1\r\nk:v2\r\n\r\nline\r\n\x00"
    b"DISCONNECT\nreceipt:z\\\\\n\n\x00\n"
)
MIXED_FRAMES = [
    Frame("CONNECT", [("accept-version", "1.2"), ("host", "a:b")]),
    Frame("SUBSCRIBE", [("id", "0"), ("destination", "/v1/topic/x:y")]),
    Frame("SEND", [("destination", "/q"), ("content-length", "5")], b"a\x00b\x00c"),
    Frame("SEND", [("destination", "/q"), ("content-length", "0")]),
    Frame("SEND", [("k", "v1"), ("k", "v2")], b"line\r\n"),
    Frame("DISCONNECT", [("receipt", "z\\")]),
]


class SpecExampleTests(SynchronousTestCase):
    """
    The example frames of the STOMP 1.2 specification parse as it describes them.
    """

    def test_each_example(self) -> None:
        """Every example frame parses, on its own, to the frame it shows."""
        for wire, expected in SPEC_EXAMPLES:
            self.assertEqual(parse(wire), [expected], wire)

    def test_examples_as_one_stream(self) -> None:
        """All examples sent back to back in one feed give all their frames in order."""
        stream = b"".join(wire for wire, _ in SPEC_EXAMPLES)
        self.assertEqual(parse(stream), [frame for _, frame in SPEC_EXAMPLES])

    def test_examples_byte_by_byte(self) -> None:
        """All examples fed one byte at a time give the same frames."""
        stream = b"".join(wire for wire, _ in SPEC_EXAMPLES)
        frames = feed_pieces(make_parser(), (stream[i : i + 1] for i in range(len(stream))))
        self.assertEqual(frames, [frame for _, frame in SPEC_EXAMPLES])

    def test_repeated_header_first_wins(self) -> None:
        """Of a repeated header, the first value is the value; all are kept in order."""
        [frame] = parse(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\x00")
        self.assertEqual(frame.get("foo"), "World")
        self.assertEqual(frame.headers, [("foo", "World"), ("foo", "Hello")])

    def test_header_value_not_trimmed(self) -> None:
        """Spaces around a header value are kept, as STOMP 1.2 requires."""
        [frame] = parse(b"SEND\nmessage: padded \n\n\x00")
        self.assertEqual(frame.get("message"), " padded ")

    def test_spec_error_example_as_printed(self) -> None:
        """The spec's ERROR example announces 171 bytes for a 170-byte body: it is not whole."""
        wire = (
            b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:171\n"
            b"message: malformed frame received\n\n" + SPEC_ERROR_BODY + b"\x00"
        )
        parser = make_parser()
        self.assertEqual(parser.feed(wire), [])
        self.assertRaises(MalformedFrame, parser.feed, b"\n")


class InteropTests(SynchronousTestCase):
    """
    The bytes real clients send (shared/interop) parse to the frames they mean.
    """

    def assertConversation(self, messages: Sequence[tuple[bytes, Frame]]) -> None:
        """
        Feed each message to one server-side parser; each gives exactly its frame.
        """
        parser = FrameParser()
        for wire, expected in messages:
            self.assertEqual(parser.feed(wire), [expected])

    def test_stompjs(self) -> None:
        """Every message @stomp/stompjs 7.5 sent parses to its one frame."""
        self.assertConversation(STOMPJS_MESSAGES)

    def test_stomppy(self) -> None:
        """Every message stomp.py 9.0 sent parses to its one frame."""
        self.assertConversation(STOMPPY_MESSAGES)

    def test_stomppy_authorization_any_case(self) -> None:
        """stomp.py's C{Authorization} header is found by a lower-case name."""
        [frame] = FrameParser().feed(STOMPPY_MESSAGES[0][0])
        self.assertEqual(frame.get_ci("authorization"), "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")

    def test_all_messages_in_one_feed(self) -> None:
        """Both clients' messages concatenated into one feed give every frame."""
        messages = STOMPJS_MESSAGES + STOMPPY_MESSAGES
        stream = b"".join(wire for wire, _ in messages)
        self.assertEqual(FrameParser().feed(stream), [frame for _, frame in messages])

    def test_krossbow_empty_body(self) -> None:
        """Krossbow's C{content-length:0} and stompjs' missing header both mean no body."""
        with_length = parse(b"SEND\ndestination:/a\ncontent-length:0\n\n\x00")
        without = parse(b"SEND\ndestination:/a\n\n\x00")
        self.assertEqual(with_length[0].body, b"")
        self.assertEqual(without[0].body, b"")


class EscapeFunctionTests(SynchronousTestCase):
    """
    L{escape_header} and L{unescape_header} follow each version's rules.
    """

    def test_escape_12(self) -> None:
        """1.2 escapes backslash, line feed, colon and carriage return."""
        self.assertEqual(escape_header("a\\b\nc:d\re", "1.2"), "a\\\\b\\nc\\cd\\re")

    def test_escape_11(self) -> None:
        """1.1 escapes backslash, line feed and colon, and leaves carriage return alone."""
        self.assertEqual(escape_header("a\\b\nc:d\re", "1.1"), "a\\\\b\\nc\\cd\re")

    def test_escape_10(self) -> None:
        """1.0 has no escapes."""
        self.assertEqual(escape_header("a\\b\nc:d\re", "1.0"), "a\\b\nc:d\re")

    def test_unescape_12(self) -> None:
        """1.2 unescapes C{\\\\}, C{\\n}, C{\\c} and C{\\r}."""
        self.assertEqual(unescape_header("a\\\\b\\nc\\cd\\re", "1.2"), "a\\b\nc:d\re")

    def test_unescape_11(self) -> None:
        """1.1 unescapes C{\\\\}, C{\\n} and C{\\c}."""
        self.assertEqual(unescape_header("a\\\\b\\nc\\cd", "1.1"), "a\\b\nc:d")

    def test_unescape_10(self) -> None:
        """1.0 takes backslashes literally, even ones no other version defines."""
        self.assertEqual(unescape_header("a\\tb\\nc\\", "1.0"), "a\\tb\\nc\\")

    def test_unescape_backslash_pairs(self) -> None:
        """An escaped backslash followed by C{n} is a backslash and an C{n}, not a newline."""
        self.assertEqual(unescape_header("\\\\n", "1.2"), "\\n")
        self.assertEqual(unescape_header("\\\\\\n", "1.2"), "\\\n")

    def test_undefined_escapes(self) -> None:
        """Undefined escapes, and a backslash at the end, are fatal in 1.1 and 1.2."""
        for version in ("1.1", "1.2"):
            for text in ("\\t", "a\\xb", "end\\", "\\", "\\C", "\\N", "\\\\\\"):
                self.assertRaises(MalformedFrame, unescape_header, text, version)

    def test_carriage_return_escape_undefined_in_11(self) -> None:
        """C{\\r} is an escape of 1.2 only."""
        self.assertRaises(MalformedFrame, unescape_header, "a\\rb", "1.1")

    def test_unknown_version(self) -> None:
        """Versions other than 1.0, 1.1 and 1.2 are refused."""
        self.assertRaises(ValueError, escape_header, "a", "2.0")
        self.assertRaises(ValueError, unescape_header, "a", "1.3")
        self.assertRaises(ValueError, encode_frame, "SEND", version="1")
        parser = FrameParser()
        with self.assertRaises(ValueError):
            parser.version = "1.3"
        self.assertEqual(parser.version, "1.2")

    @settings(max_examples=200, deadline=None)
    @given(text=st.text(), version=st.sampled_from(["1.0", "1.1", "1.2"]))
    def test_unescape_inverts_escape(self, text: str, version: str) -> None:
        """Unescaping escaped text gives the text back in every version."""
        self.assertEqual(unescape_header(escape_header(text, version), version), text)


class ParserEscapingTests(SynchronousTestCase):
    """
    The parser unescapes headers as the negotiated version says, except in CONNECT-type
    frames.
    """

    def test_default_version(self) -> None:
        """A new parser reads STOMP 1.2."""
        self.assertEqual(FrameParser().version, "1.2")

    def test_unescape_12(self) -> None:
        """In 1.2 names and values are unescaped, C{\\r} included."""
        [frame] = parse(b"SEND\nna\\cme:va\\nl\\\\ue\\r\n\n\x00", "1.2")
        self.assertEqual(frame.headers, [("na:me", "va\nl\\ue\r")])

    def test_unescape_11(self) -> None:
        """In 1.1 C{\\n}, C{\\c} and C{\\\\} are unescaped."""
        [frame] = parse(b"SEND\nna\\cme:va\\nl\\\\ue\n\n\x00", "1.1")
        self.assertEqual(frame.headers, [("na:me", "va\nl\\ue")])

    def test_carriage_return_escape_in_11(self) -> None:
        """In 1.1 C{\\r} is an undefined escape."""
        self.assertRaises(MalformedFrame, parse, b"SEND\nk:a\\rb\n\n\x00", "1.1")

    def test_undefined_escape(self) -> None:
        """An undefined escape in a name or a value is fatal in 1.1 and 1.2."""
        for version in ("1.1", "1.2"):
            self.assertRaises(MalformedFrame, parse, b"SEND\nk:a\\tb\n\n\x00", version)
            self.assertRaises(MalformedFrame, parse, b"SEND\nk\\t:v\n\n\x00", version)
            self.assertRaises(MalformedFrame, parse, b"SEND\nk:v\\\n\n\x00", version)

    def test_literal_in_10(self) -> None:
        """In 1.0 header text is taken literally."""
        [frame] = parse(b"SEND\nk\\n:a\\tb\\c\n\n\x00", "1.0")
        self.assertEqual(frame.headers, [("k\\n", "a\\tb\\c")])

    def test_connect_never_unescaped(self) -> None:
        """CONNECT and STOMP headers are taken literally in every version."""
        for command in (b"CONNECT", b"STOMP"):
            for version in ("1.0", "1.1", "1.2"):
                wire = command + b"\nlogin:a\\tb\\c\npasscode:x:y\n\n\x00"
                [frame] = parse(wire, version)
                self.assertEqual(frame.headers, [("login", "a\\tb\\c"), ("passcode", "x:y")])

    def test_connected_never_unescaped(self) -> None:
        """A client-side parser takes CONNECTED headers literally."""
        parser = FrameParser(commands=SERVER_COMMANDS)
        [frame] = parser.feed(b"CONNECTED\nserver:x\\y\n\n\x00")
        self.assertEqual(frame.get("server"), "x\\y")

    def test_colon_in_value(self) -> None:
        """Only the first colon splits a header; further colons belong to the value."""
        for version in ("1.0", "1.1", "1.2"):
            [frame] = parse(b"SEND\ndestination:/a:b::c\n\n\x00", version)
            self.assertEqual(frame.headers, [("destination", "/a:b::c")])

    def test_empty_value(self) -> None:
        """A header may have an empty value."""
        [frame] = parse(b"SEND\nk:\n\n\x00")
        self.assertEqual(frame.headers, [("k", "")])

    def test_utf8_headers(self) -> None:
        """Header text is UTF-8."""
        [frame] = parse("SEND\nnäme:välue ✓\n\n\x00".encode())
        self.assertEqual(frame.headers, [("näme", "välue ✓")])

    def test_version_change_applies_to_later_frames(self) -> None:
        """Setting the version changes how the following frames are read."""
        parser = make_parser("1.2")
        self.assertEqual(parser.feed(b"SEND\nk:a\\cb\n\n\x00")[0].get("k"), "a:b")
        parser.version = "1.0"
        self.assertEqual(parser.feed(b"SEND\nk:a\\cb\n\n\x00")[0].get("k"), "a\\cb")


class EncodeTests(SynchronousTestCase):
    """
    L{encode_frame} writes frames byte for byte as STOMP wants them.
    """

    def test_no_headers(self) -> None:
        """A frame without headers or body is its command, a blank line and NUL."""
        self.assertEqual(encode_frame("DISCONNECT"), b"DISCONNECT\n\n\x00")

    def test_headers_in_order(self) -> None:
        """Headers are written in the order given, repeats included."""
        self.assertEqual(
            encode_frame("RECEIPT", [("receipt-id", "77"), ("x", "1"), ("x", "2")]),
            b"RECEIPT\nreceipt-id:77\nx:1\nx:2\n\n\x00",
        )

    def test_body_gets_content_length(self) -> None:
        """A body gets a C{content-length} header after the caller's headers."""
        self.assertEqual(
            encode_frame("MESSAGE", [("destination", "/a")], b'{"a":1}'),
            b'MESSAGE\ndestination:/a\ncontent-length:7\n\n{"a":1}\x00',
        )

    def test_content_length_counts_bytes(self) -> None:
        """C{content-length} counts UTF-8 bytes, not characters."""
        body = "héllo ✓".encode()
        self.assertIn(b"content-length:%d\n" % (len(body),), encode_frame("SEND", (), body))

    def test_content_length_not_duplicated(self) -> None:
        """A caller's own C{content-length} is kept and not added again."""
        self.assertEqual(
            encode_frame("SEND", [("content-length", "2"), ("destination", "/a")], b"hi"),
            b"SEND\ncontent-length:2\ndestination:/a\n\nhi\x00",
        )

    def test_content_length_mismatch(self) -> None:
        """A caller's C{content-length} that does not match the body is refused."""
        self.assertRaises(ValueError, encode_frame, "SEND", [("content-length", "3")], b"hi")
        self.assertRaises(ValueError, encode_frame, "SEND", [("content-length", "x")], b"hi")

    def test_empty_body_no_content_length(self) -> None:
        """An empty body gets no C{content-length}."""
        self.assertEqual(
            encode_frame("SEND", [("destination", "/a")]), b"SEND\ndestination:/a\n\n\x00"
        )

    def test_without_content_length(self) -> None:
        """C{content_length=False} leaves the header out."""
        self.assertEqual(encode_frame("SEND", (), b"hi", content_length=False), b"SEND\n\nhi\x00")

    def test_nul_body_needs_content_length(self) -> None:
        """A body with a NUL cannot be written without C{content-length}."""
        self.assertRaises(ValueError, encode_frame, "SEND", (), b"a\x00b", content_length=False)

    def test_nul_body_with_content_length(self) -> None:
        """A body with NULs round-trips behind its C{content-length}."""
        wire = encode_frame("MESSAGE", [("destination", "/a")], b"\x00a\x00")
        self.assertEqual(parse(wire)[0].body, b"\x00a\x00")

    def test_ends_with_nul_only(self) -> None:
        """A frame ends with its NUL and no end-of-line after it."""
        self.assertTrue(encode_frame("SEND", (), b"x").endswith(b"x\x00"))

    def test_escapes_12(self) -> None:
        """In 1.2 names and values are escaped, carriage returns included."""
        self.assertEqual(
            encode_frame("ERROR", [("a:b", "bad: x\ny\\z\r")]),
            b"ERROR\na\\cb:bad\\c x\\ny\\\\z\\r\n\n\x00",
        )

    def test_escapes_11(self) -> None:
        """In 1.1 carriage returns are written as they are."""
        self.assertEqual(
            encode_frame("ERROR", [("a:b", "x\ny\rz")], version="1.1"),
            b"ERROR\na\\cb:x\\ny\rz\n\n\x00",
        )

    def test_trailing_carriage_return_in_11(self) -> None:
        """A value ending with a carriage return cannot be written in 1.1."""
        self.assertRaises(ValueError, encode_frame, "SEND", [("k", "v\r")], version="1.1")

    def test_literal_in_10(self) -> None:
        """In 1.0 nothing is escaped, and a colon in a value is fine."""
        self.assertEqual(
            encode_frame("ERROR", [("message", "a:b\\c")], version="1.0"),
            b"ERROR\nmessage:a:b\\c\n\n\x00",
        )

    def test_unwritable_in_10(self) -> None:
        """In 1.0 a line feed in a header or a colon in a name is refused."""
        self.assertRaises(ValueError, encode_frame, "ERROR", [("message", "a\nb")], version="1.0")
        self.assertRaises(ValueError, encode_frame, "ERROR", [("a:b", "c")], version="1.0")

    def test_connected_never_escaped(self) -> None:
        """CONNECTED, CONNECT and STOMP headers are written literally in every version."""
        for command in ("CONNECTED", "CONNECT", "STOMP"):
            for version in ("1.0", "1.1", "1.2"):
                wire = encode_frame(command, [("server", "medichat/0.1 a:b\\c")], version=version)
                self.assertEqual(wire, command.encode() + b"\nserver:medichat/0.1 a:b\\c\n\n\x00")

    def test_connected_unwritable(self) -> None:
        """A CONNECTED header that would need escaping is refused."""
        self.assertRaises(ValueError, encode_frame, "CONNECTED", [("session", "a\nb")])
        self.assertRaises(ValueError, encode_frame, "CONNECTED", [("a:b", "c")])
        self.assertRaises(ValueError, encode_frame, "CONNECTED", [("session", "a\r")])

    def test_bad_headers(self) -> None:
        """Empty header names and NULs in header text are refused."""
        self.assertRaises(ValueError, encode_frame, "SEND", [("", "v")])
        self.assertRaises(ValueError, encode_frame, "SEND", [("k\x00", "v")])
        self.assertRaises(ValueError, encode_frame, "SEND", [("k", "v\x00")])

    def test_unknown_command(self) -> None:
        """Commands STOMP does not have are refused."""
        self.assertRaises(ValueError, encode_frame, "send")
        self.assertRaises(ValueError, encode_frame, "PUBLISH")

    def test_heartbeat(self) -> None:
        """A heart-beat is a bare line feed, and the parser skips it."""
        self.assertEqual(HEARTBEAT, b"\n")
        self.assertEqual(parse(HEARTBEAT * 3), [])


class FrameTests(SynchronousTestCase):
    """
    L{Frame} header look-ups.
    """

    def test_get(self) -> None:
        """L{Frame.get} gives the first value of a name, or the default."""
        frame = Frame("SEND", [("a", "1"), ("b", "2"), ("a", "3")])
        self.assertEqual(frame.get("a"), "1")
        self.assertEqual(frame.get("b"), "2")
        self.assertIsNone(frame.get("c"))
        self.assertEqual(frame.get("c", "x"), "x")

    def test_get_is_case_sensitive(self) -> None:
        """L{Frame.get} matches names exactly."""
        self.assertIsNone(Frame("SEND", [("Destination", "/a")]).get("destination"))

    def test_get_ci(self) -> None:
        """L{Frame.get_ci} matches names in any case, the first match winning."""
        frame = Frame("CONNECT", [("AUTHORIZATION", "one"), ("Authorization", "two")])
        self.assertEqual(frame.get_ci("authorization"), "one")
        self.assertEqual(frame.get_ci("Authorization"), "one")
        self.assertIsNone(frame.get_ci("passcode"))

    def test_default_body(self) -> None:
        """A frame has an empty body unless given one."""
        self.assertEqual(Frame("SEND", []).body, b"")


class LineEndingTests(SynchronousTestCase):
    """
    Lines end with LF or CRLF; bare EOLs between frames are heart-beats.
    """

    def test_crlf(self) -> None:
        """CRLF ends the command, header and blank lines."""
        [frame] = parse(b"SEND\r\ndestination:/q\r\n\r\nhi\x00")
        self.assertEqual(frame, Frame("SEND", [("destination", "/q")], b"hi"))

    def test_mixed_line_ends(self) -> None:
        """LF and CRLF may be mixed within a frame."""
        [frame] = parse(b"SEND\r\na:1\nb:2\r\n\n\x00")
        self.assertEqual(frame.headers, [("a", "1"), ("b", "2")])

    def test_only_one_carriage_return_stripped(self) -> None:
        """Only the carriage return right before the line feed belongs to the EOL."""
        [frame] = parse(b"SEND\nk:v\r\r\n\n\x00", "1.1")
        self.assertEqual(frame.get("k"), "v\r")

    def test_heartbeats_between_frames(self) -> None:
        """LF and CRLF heart-beats before, between and after frames are skipped."""
        frames = parse(
            b"\n\r\n\nBEGIN\ntransaction:t\n\n\x00\r\n\n\r\nABORT\ntransaction:t\n\n\x00\n"
        )
        self.assertEqual([f.command for f in frames], ["BEGIN", "ABORT"])

    def test_heartbeats_only(self) -> None:
        """Heart-beats alone give no frames, whichever way they are cut."""
        parser = make_parser()
        self.assertEqual(feed_pieces(parser, [b"\n", b"\r", b"\n\r", b"\n\n", b"\r"]), [])
        self.assertEqual(parser.feed(b"\n"), [])

    def test_heartbeat_split_before_frame(self) -> None:
        """A CRLF heart-beat cut in two before a frame does not disturb the frame."""
        parser = make_parser()
        self.assertEqual(parser.feed(b"\r"), [])
        self.assertEqual(parser.feed(b"\nSEND\n\n\x00"), [Frame("SEND", [])])

    def test_carriage_return_not_heartbeat(self) -> None:
        """A carriage return without its line feed starts a command, which is unknown."""
        self.assertRaises(MalformedFrame, parse, b"\rSEND\n\n\x00")

    def test_several_frames_one_feed(self) -> None:
        """One feed can complete several frames, returned in order."""
        self.assertEqual(parse(MIXED_STREAM), MIXED_FRAMES)

    def test_frame_split_over_feeds(self) -> None:
        """A frame completes only when its NUL arrives."""
        parser = make_parser()
        self.assertEqual(parser.feed(b"SEND\ndest"), [])
        self.assertEqual(parser.feed(b"ination:/a\n\nbo"), [])
        self.assertEqual(parser.feed(b"dy"), [])
        self.assertEqual(
            parser.feed(b"\x00SEND"), [Frame("SEND", [("destination", "/a")], b"body")]
        )

    def test_nul_instead_of_blank_line(self) -> None:
        """A NUL where the blank line belongs ends the frame with an empty body."""
        self.assertEqual(
            parse(b"SEND\n\x00DISCONNECT\ncontent-length:0\n\x00"),
            [Frame("SEND", []), Frame("DISCONNECT", [("content-length", "0")])],
        )

    def test_nul_instead_of_blank_line_with_length(self) -> None:
        """A NUL where the blank line belongs is fatal if a body was announced."""
        self.assertRaises(MalformedFrame, parse, b"SEND\ncontent-length:1\n\x00x\x00")

    def test_bytes_seen(self) -> None:
        """L{FrameParser.bytes_seen} counts every byte fed, heart-beats included."""
        parser = make_parser()
        parser.feed(b"\n\n")
        parser.feed(b"SEND\n\n")
        self.assertEqual(parser.bytes_seen, 8)


class ChunkingTests(SynchronousTestCase):
    """
    However the stream is cut, the same frames come out.
    """

    def test_every_split_point(self) -> None:
        """Cut in two at any offset, the mixed stream gives the same frames."""
        for offset in range(len(MIXED_STREAM) + 1):
            frames = feed_pieces(make_parser(), split_at(MIXED_STREAM, [offset]))
            self.assertEqual(frames, MIXED_FRAMES, offset)

    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, the mixed stream gives the same frames."""
        parser = make_parser()
        pieces = (MIXED_STREAM[i : i + 1] for i in range(len(MIXED_STREAM)))
        self.assertEqual(feed_pieces(parser, pieces), MIXED_FRAMES)
        self.assertEqual(parser.bytes_seen, len(MIXED_STREAM))

    def test_empty_feeds(self) -> None:
        """Empty feeds between pieces change nothing."""
        pieces = [b"", MIXED_STREAM[:50], b"", b"", MIXED_STREAM[50:], b""]
        self.assertEqual(feed_pieces(make_parser(), pieces), MIXED_FRAMES)

    def test_large_body_in_small_pieces(self) -> None:
        """A 60 KiB body, with and without content-length, arrives in 100-byte pieces."""
        body = bytes(range(1, 256)) * 240
        for content_length in (True, False):
            wire = encode_frame(
                "SEND", [("destination", "/a")], body, content_length=content_length
            )
            pieces = [wire[i : i + 100] for i in range(0, len(wire), 100)]
            [frame] = feed_pieces(make_parser(), pieces)
            self.assertEqual(frame.body, body)

    def test_large_frame_byte_by_byte(self) -> None:
        """A 16 KiB frame fed byte by byte arrives whole."""
        body = b"x" * 16384
        wire = encode_frame("SEND", [("destination", "/a")], body, content_length=False)
        parser = make_parser()
        frames = feed_pieces(parser, (wire[i : i + 1] for i in range(len(wire))))
        self.assertEqual(frames, [Frame("SEND", [("destination", "/a")], body)])


class ContentLengthTests(SynchronousTestCase):
    """
    C{content-length} is a count of body bytes, trusted over NUL.
    """

    def test_body_with_nul(self) -> None:
        """With C{content-length}, NULs inside the body are body bytes."""
        [frame] = parse(b"SEND\ncontent-length:4\n\n\x00\x00ab\x00")
        self.assertEqual(frame.body, b"\x00\x00ab")

    def test_zero_and_absent(self) -> None:
        """C{content-length:0} and no C{content-length} both give an empty body."""
        self.assertEqual(parse(b"SEND\ncontent-length:0\n\n\x00")[0].body, b"")
        self.assertEqual(parse(b"SEND\n\n\x00")[0].body, b"")

    def test_counts_bytes(self) -> None:
        """C{content-length} counts bytes of a multi-byte UTF-8 body."""
        body = "✓✓".encode()
        [frame] = parse(b"SEND\ncontent-length:6\n\n" + body + b"\x00")
        self.assertEqual(frame.body, body)

    def test_too_short(self) -> None:
        """A C{content-length} shorter than the body leaves no NUL where one must be."""
        self.assertRaises(MalformedFrame, parse, b"SEND\ncontent-length:2\n\nabc\x00")

    def test_too_long(self) -> None:
        """A C{content-length} longer than the body is trusted: the NUL becomes body."""
        parser = make_parser()
        self.assertEqual(parser.feed(b"SEND\ncontent-length:5\n\nab\x00"), [])
        self.assertEqual(parser.feed(b"cd\x00")[0].body, b"ab\x00cd")

    def test_missing_nul_detected_without_more_data(self) -> None:
        """The missing NUL is noticed as soon as the byte after the body is there."""
        parser = make_parser()
        self.assertEqual(parser.feed(b"SEND\ncontent-length:2\n\nab"), [])
        self.assertRaises(MalformedFrame, parser.feed, b"c")

    def test_first_wins(self) -> None:
        """Of repeated C{content-length} headers, the first counts."""
        [frame] = parse(b"SEND\ncontent-length:3\ncontent-length:1\n\nabc\x00")
        self.assertEqual(frame.body, b"abc")

    def test_kept_in_headers(self) -> None:
        """C{content-length} stays among the frame's headers."""
        [frame] = parse(b"SEND\ncontent-length:1\n\na\x00")
        self.assertEqual(frame.headers, [("content-length", "1")])

    def test_bad_values(self) -> None:
        """A C{content-length} that is not a plain decimal count is malformed."""
        for value in ("", "abc", "-1", "+5", " 5", "5 ", "1.5", "0x10", "٣", "²"):
            wire = f"SEND\ncontent-length:{value}\n\n\x00".encode()
            self.assertRaises(MalformedFrame, parse, wire)

    def test_huge_value(self) -> None:
        """A C{content-length} of thousands of digits is too large, not a crash."""
        wire = b"SEND\ncontent-length:" + b"9" * 5000 + b"\n\n\x00"
        self.assertRaises(FrameTooLarge, parse, wire)

    def test_escaped_value_in_12(self) -> None:
        """C{content-length} is read after unescaping, so an escape in it is no number."""
        self.assertRaises(MalformedFrame, parse, b"SEND\ncontent-length:1\\c\n\na\x00")


class MalformedTests(SynchronousTestCase):
    """
    Input that breaks the frame grammar raises L{MalformedFrame}.
    """

    def test_unknown_command(self) -> None:
        """A command STOMP does not have is refused, and named in the message."""
        error = self.assertRaises(MalformedFrame, parse, b"PUBLISH\n\n\x00")
        self.assertEqual(error.message, "unknown command 'PUBLISH'")

    def test_command_case_sensitive(self) -> None:
        """Commands are case sensitive."""
        self.assertRaises(MalformedFrame, parse, b"send\n\n\x00")

    def test_command_with_space(self) -> None:
        """A command line with trailing space is no command."""
        self.assertRaises(MalformedFrame, parse, b"SEND \n\n\x00")

    def test_http_request(self) -> None:
        """An HTTP request line is refused at once, before its headers are read."""
        self.assertRaises(MalformedFrame, parse, b"GET / HTTP/1.1\r\n")

    def test_server_commands_refused_by_server(self) -> None:
        """A server-side parser refuses the commands only servers send."""
        for command in SERVER_COMMANDS:
            self.assertRaises(MalformedFrame, FrameParser().feed, command.encode() + b"\n\n\x00")

    def test_client_commands_refused_by_client(self) -> None:
        """A client-side parser refuses the commands only clients send."""
        parser = FrameParser(commands=SERVER_COMMANDS)
        self.assertEqual(parser.feed(b"MESSAGE\n\n\x00"), [Frame("MESSAGE", [])])
        self.assertRaises(MalformedFrame, parser.feed, b"SEND\n\n\x00")

    def test_header_without_colon(self) -> None:
        """A header line without a colon is refused."""
        self.assertRaises(MalformedFrame, parse, b"SEND\ndestination\n\n\x00")

    def test_empty_header_name(self) -> None:
        """A header line starting with its colon is refused."""
        self.assertRaises(MalformedFrame, parse, b"SEND\n:value\n\n\x00")

    def test_not_utf8(self) -> None:
        """Header names and values that are not UTF-8 are refused."""
        self.assertRaises(MalformedFrame, parse, b"SEND\nk:\xff\n\n\x00")
        self.assertRaises(MalformedFrame, parse, b"SEND\n\xc3:v\n\n\x00")
        self.assertRaises(MalformedFrame, parse, b"CONNECT\nlogin:\xed\xa0\x80\n\n\x00", "1.0")

    def test_body_need_not_be_utf8(self) -> None:
        """A body is bytes, UTF-8 or not."""
        self.assertEqual(parse(b"SEND\n\n\xff\xfe\x00")[0].body, b"\xff\xfe")

    def test_nul_in_command_position(self) -> None:
        """A stray NUL where a command belongs is refused."""
        self.assertRaises(MalformedFrame, parse, b"SEND\n\n\x00\x00\n")


class LimitTests(SynchronousTestCase):
    """
    Each limit raises its own error, as early as it can be known.
    """

    def test_defaults(self) -> None:
        """The default limits are those of the product spec."""
        self.assertEqual(
            Limits(), Limits(max_frame_bytes=65536, max_headers=32, max_header_line=8192)
        )

    def test_frame_at_limit(self) -> None:
        """A frame exactly as long as the limit, NUL included, is accepted."""
        wire = encode_frame("SEND", [("destination", "/a")], b"x" * 100)
        frames = parse(b"\n\n" + wire + b"\n", limits=Limits(max_frame_bytes=len(wire)))
        self.assertEqual(frames[0].body, b"x" * 100)

    def test_frame_over_limit(self) -> None:
        """A frame one byte over the limit is refused, with or without content-length."""
        for content_length in (True, False):
            wire = encode_frame("SEND", (), b"x" * 100, content_length=content_length)
            limits = Limits(max_frame_bytes=len(wire) - 1)
            error = self.assertRaises(FrameTooLarge, parse, wire, limits=limits)
            self.assertEqual(error.message, f"frame larger than {len(wire) - 1} bytes")

    def test_content_length_over_limit_before_body(self) -> None:
        """A C{content-length} over the limit is refused as soon as the headers end."""
        parser = make_parser()
        self.assertEqual(parser.feed(b"SEND\ndestination:/a\ncontent-length:70000\n"), [])
        self.assertRaises(FrameTooLarge, parser.feed, b"\n")

    def test_body_without_nul_over_limit(self) -> None:
        """A body without content-length is refused once buffered bytes pass the limit."""
        parser = make_parser(limits=Limits(max_frame_bytes=1000))
        parser.feed(b"SEND\n\n")
        for _ in range(992):
            parser.feed(b"x")
        # Six header bytes and 993 body bytes leave room for the NUL only.
        self.assertEqual(parser.feed(b"x"), [])
        self.assertRaises(FrameTooLarge, parser.feed, b"x")

    def test_headers_over_frame_limit(self) -> None:
        """Header lines that pass the frame limit are refused before the blank line."""
        parser = make_parser(limits=Limits(max_frame_bytes=100, max_header_line=1000))
        self.assertRaises(FrameTooLarge, parser.feed, b"SEND\nk:" + b"v" * 100)

    def test_heartbeats_not_counted(self) -> None:
        """Heart-beats around a frame do not count towards its size."""
        wire = b"SEND\n\n\x00"
        limits = Limits(max_frame_bytes=len(wire))
        self.assertEqual(len(parse(b"\n" * 1000 + wire + b"\r\n" * 1000, limits=limits)), 1)

    def test_max_headers(self) -> None:
        """As many headers as allowed are fine; one more, repeats counted, is refused."""
        limits = Limits(max_headers=3)
        self.assertEqual(len(parse(b"SEND\na:1\na:2\na:3\n\n\x00", limits=limits)[0].headers), 3)
        error = self.assertRaises(
            TooManyHeaders, parse, b"SEND\na:1\na:2\na:3\na:4\n\n\x00", limits=limits
        )
        self.assertEqual(error.message, "more than 3 headers")

    def test_header_line_at_limit(self) -> None:
        """A header line exactly as long as the limit is fine, whatever its EOL."""
        limits = Limits(max_header_line=10)
        line = b"k:" + b"v" * 8
        self.assertEqual(len(parse(b"SEND\n" + line + b"\n\n\x00", limits=limits)), 1)
        self.assertEqual(len(parse(b"SEND\n" + line + b"\r\n\n\x00", limits=limits)), 1)

    def test_header_line_over_limit(self) -> None:
        """A header line one byte over the limit is refused."""
        limits = Limits(max_header_line=10)
        line = b"k:" + b"v" * 9
        error = self.assertRaises(
            HeaderLineTooLong, parse, b"SEND\n" + line + b"\n\n\x00", limits=limits
        )
        self.assertEqual(error.message, "header line longer than 10 bytes")

    def test_header_line_over_limit_before_eol(self) -> None:
        """A header line is refused as soon as it is too long, before its EOL arrives."""
        parser = make_parser(limits=Limits(max_header_line=10))
        self.assertEqual(parser.feed(b"SEND\nk:" + b"v" * 8), [])
        # A carriage return may yet turn out to be the start of the EOL.
        self.assertEqual(parser.feed(b"\r"), [])
        self.assertRaises(HeaderLineTooLong, parser.feed, b"v")

    def test_command_line_over_limit(self) -> None:
        """The command line counts against the header line limit too."""
        limits = Limits(max_header_line=8)
        self.assertRaises(HeaderLineTooLong, parse, b"UNSUBSCRIBE\nid:0\n\n\x00", limits=limits)
        self.assertRaises(HeaderLineTooLong, parse, b"x" * 9, limits=limits)

    def test_limits_can_grow(self) -> None:
        """Raising the limits between frames lets larger frames through."""
        parser = make_parser(limits=Limits(max_frame_bytes=32))
        self.assertEqual(len(parser.feed(b"CONNECT\n\n\x00")), 1)
        parser.limits = Limits()
        self.assertEqual(len(parser.feed(encode_frame("SEND", (), b"x" * 1000))), 1)

    def test_limits_can_shrink(self) -> None:
        """Lowering the limits applies to the frame being received."""
        parser = make_parser()
        self.assertEqual(parser.feed(b"SEND\n\n" + b"x" * 100), [])
        parser.limits = Limits(max_frame_bytes=50)
        self.assertRaises(FrameTooLarge, parser.feed, b"x")


class BrokenParserTests(SynchronousTestCase):
    """
    After an error, the parser stays broken and says so.
    """

    def test_same_error_again(self) -> None:
        """Every feed after an error raises that error again."""
        parser = make_parser()
        error = self.assertRaises(MalformedFrame, parser.feed, b"NOPE\n")
        self.assertIs(self.assertRaises(MalformedFrame, parser.feed, b"SEND\n\n\x00"), error)
        self.assertIs(self.assertRaises(MalformedFrame, parser.feed, b""), error)

    def test_frames_before_error(self) -> None:
        """Frames completed before an error in the same feed are on the error."""
        parser = make_parser()
        error = self.assertRaises(MalformedFrame, parser.feed, b"SEND\n\na\x00BEGIN\n\n\x00NOPE\n")
        self.assertEqual(error.frames, [Frame("SEND", [], b"a"), Frame("BEGIN", [])])
        self.assertEqual(self.assertRaises(MalformedFrame, parser.feed, b"x").frames, [])

    def test_error_base_class(self) -> None:
        """Every codec error is a L{FrameError} with a message."""
        for cls in (FrameTooLarge, TooManyHeaders, HeaderLineTooLong, MalformedFrame):
            error = cls("why")
            self.assertIsInstance(error, FrameError)
            self.assertEqual((error.message, str(error)), ("why", "why"))

    def test_messages_safe_for_error_header(self) -> None:
        """Error messages quoting client bytes are one line of printable ASCII."""
        for wire in (b"\xff\xfeX\r\r\n", b"SEND\nno colon \xe2\x9c\x93\r\n", b"A\\B:C\n"):
            error = self.assertRaises(FrameError, parse, wire)
            self.assertTrue(error.message.isascii() and error.message.isprintable(), error.message)


def header_text(min_size: int) -> st.SearchStrategy[str]:
    """
    Header names or values: any text without NUL, rich in the characters escaping handles.
    """
    special = st.sampled_from([":", "\n", "\r", "\\", "c", "n", "r", " "])
    other = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(st.one_of(special, other), min_size=min_size, max_size=12)


def literal_text(min_size: int, *, colon: bool) -> st.SearchStrategy[str]:
    """
    Header text that 1.0 and CONNECT-type frames can carry: no NUL or line feed, no colon
    unless C{colon}, and no trailing carriage return.
    """
    excluded = "\x00\n" + ("" if colon else ":")
    chars = st.one_of(
        st.sampled_from(["\r", "\\", " "] + ([":"] if colon else [])),
        st.characters(codec="utf-8", exclude_characters=excluded),
    )
    return (
        st.text(chars, min_size=min_size, max_size=12)
        .map(lambda t: t.rstrip("\r"))
        .filter(lambda t: len(t) >= min_size)
    )


def frame_specs(version: str) -> st.SearchStrategy[tuple[str, list[tuple[str, str]], bytes, bool]]:
    """
    Commands, headers, bodies and the C{content_length} flag for frames of C{version}.
    """
    escaped = sorted(ALL_COMMANDS - LITERAL_COMMANDS) if version != "1.0" else []
    plain = st.lists(
        st.tuples(literal_text(1, colon=False), literal_text(0, colon=True)), max_size=5
    )
    options = [st.tuples(st.sampled_from(sorted(LITERAL_COMMANDS)), plain)]
    if escaped:
        value = header_text(0)
        if version == "1.1":
            value = value.map(lambda t: t.rstrip("\r"))
        rich = st.lists(st.tuples(header_text(1), value), max_size=5)
        options.append(st.tuples(st.sampled_from(escaped), rich))
    else:
        options.append(st.tuples(st.sampled_from(sorted(ALL_COMMANDS)), plain))
    return st.tuples(st.one_of(options), st.binary(max_size=300), st.booleans()).map(
        lambda t: (
            t[0][0],
            [(n if n != "content-length" else "x-" + n, v) for n, v in t[0][1]],
            t[1] if t[2] else t[1].replace(b"\x00", b""),
            t[2],
        )
    )


def expected_frame(command: str, headers: list[tuple[str, str]], body: bytes, cl: bool) -> Frame:
    """
    The frame that L{encode_frame} with these arguments must parse back to.
    """
    extra = [("content-length", str(len(body)))] if body and cl else []
    return Frame(command, headers + extra, body)


GARBAGE_TOKENS = [
    b"SEND",
    b"CONNECT",
    b"MESSAGE",
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b":",
    b"content-length:",
    b"0",
    b"3",
    b"-1",
    b"99999",
    b"\\",
    b"\\c",
    b"\\n",
    b"\\r",
    b"\\t",
    b"\xff",
    b"\xc3\xa9",
    b"abc",
    b"destination:/a",
    b"x" * 30,
]


class PropertyTests(SynchronousTestCase):
    """
    Properties over generated frames and garbage.
    """

    @settings(max_examples=250, deadline=None)
    @given(data=st.data(), version=st.sampled_from(["1.0", "1.1", "1.2"]))
    def test_round_trip(self, data: st.DataObject, version: str) -> None:
        """An encoded frame, cut anywhere, parses back to the same frame."""
        command, headers, body, cl = data.draw(frame_specs(version))
        wire = encode_frame(command, headers, body, version=version, content_length=cl)
        offsets = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
        parser = make_parser(version, ROOMY)
        frames = feed_pieces(parser, split_at(wire, offsets))
        self.assertEqual(frames, [expected_frame(command, headers, body, cl)])

    @settings(max_examples=150, deadline=None)
    @given(data=st.data(), version=st.sampled_from(["1.1", "1.2"]))
    def test_stream_round_trip(self, data: st.DataObject, version: str) -> None:
        """Several encoded frames with heart-beats between them, cut anywhere, parse back."""
        specs = data.draw(st.lists(frame_specs(version), min_size=1, max_size=4))
        eols = st.sampled_from([b"", b"\n", b"\r\n", b"\n\r\n\n"])
        wire = b""
        for command, headers, body, cl in specs:
            wire += data.draw(eols)
            wire += encode_frame(command, headers, body, version=version, content_length=cl)
        wire += data.draw(eols)
        offsets = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
        frames = feed_pieces(make_parser(version, ROOMY), split_at(wire, offsets))
        self.assertEqual(frames, [expected_frame(*spec) for spec in specs])

    def assertOnlyFrameErrors(self, pieces: list[bytes], version: str, limits: Limits) -> None:
        """
        Feeding C{pieces} returns frames or raises a L{FrameError} with a safe message, and
        gives the same frames and outcome as feeding them all at once.
        """
        parser = make_parser(version, limits)
        frames, error = run_until_error(parser, pieces)
        for frame in frames:
            self.assertIsInstance(frame, Frame)
        whole_frames, whole_error = run_until_error(
            make_parser(version, limits), [b"".join(pieces)]
        )
        self.assertEqual(frames, whole_frames)
        self.assertEqual(error is None, whole_error is None)
        if error is not None:
            self.assertTrue(error.message.isascii() and error.message.isprintable())
            self.assertLessEqual(len(error.message), 120, error.message)
            self.assertIs(self.assertRaises(FrameError, parser.feed, b"SEND\n\n\x00"), error)

    @settings(max_examples=200, deadline=None)
    @given(
        pieces=st.lists(st.binary(max_size=64), max_size=10),
        version=st.sampled_from(["1.0", "1.1", "1.2"]),
    )
    def test_garbage_bytes(self, pieces: list[bytes], version: str) -> None:
        """Arbitrary bytes in arbitrary pieces give frames or a L{FrameError}, nothing else."""
        self.assertOnlyFrameErrors(pieces, version, SMALL)

    @settings(max_examples=300, deadline=None)
    @given(
        data=st.data(),
        tokens=st.lists(st.sampled_from(GARBAGE_TOKENS), max_size=40),
        version=st.sampled_from(["1.0", "1.1", "1.2"]),
        small=st.booleans(),
    )
    def test_garbage_tokens(
        self, data: st.DataObject, tokens: list[bytes], version: str, small: bool
    ) -> None:
        """Near-STOMP garbage, cut anywhere, gives frames or a L{FrameError}, nothing else."""
        wire = b"".join(tokens)
        offsets = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
        self.assertOnlyFrameErrors(split_at(wire, offsets), version, SMALL if small else Limits())
