"""
Tests for L{medichat.http._whole}: which POSTs are read in one pass, and what they read as.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from medichat.http._whole import WholeRequest, whole_post

_LIMITS = {"max_line": 16384, "max_head": 16384, "max_headers": 100}


def _read(data: bytes, **limits: int) -> WholeRequest | None:
    return whole_post(data, **{**_LIMITS, **limits})


def _post(*headers: bytes, body: bytes = b'{"message": "hi"}', target: bytes = b"/api/x",
          version: bytes = b"HTTP/1.1", length: bool = True) -> bytes:
    lines = [b"POST " + target + b" " + version, *headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class WholePostTests(SynchronousTestCase):
    """
    A plain POST is read whole; whatever twisted.web would refuse or treat specially is
    left to it.
    """

    def test_read(self) -> None:
        """
        Target, headers (names as sent, values stripped of spaces and tabs), body; the
        first C{Content-Type}, and whether the head is ASCII.
        """
        data = _post(b"Host: h", b"Authorization:  Bearer x.y.z\t", b"X-Empty:",
                     b"content-type:  a/b ", b"Content-Type: c/d")
        self.assertEqual(
            _read(data),
            WholeRequest(b"/api/x", ((b"Host", b"h"), (b"Authorization", b"Bearer x.y.z"),
                                     (b"X-Empty", b""), (b"content-type", b"a/b"),
                                     (b"Content-Type", b"c/d"), (b"Content-Length", b"17")),
                         b'{"message": "hi"}', b"a/b", True),
        )
        read = _read(_post("X-Name: Zoë".encode()))
        assert read is not None
        self.assertEqual((read.content_type, read.ascii), (None, False))

    def test_empty_body(self) -> None:
        """A body of no bytes, said so."""
        request = _read(_post(body=b""))
        assert request is not None
        self.assertEqual(request.body, b"")

    def test_declined(self) -> None:
        """Each request twisted.web reads otherwise, or refuses, is declined."""
        body = b"{}"
        for data in [
            _post(body=body, version=b"HTTP/1.0"),  # not kept alive by default
            _post(body=body, target=b"/a b"),  # not one request line of three parts
            _post(body=body, target=b"/\xff"),  # outside twisted.web's target bytes
            _post(body=body, target=b""),
            _post(b"Transfer-Encoding: chunked", body=body),
            _post(b"Expect: 100-continue", body=body),
            _post(b"Upgrade: websocket", body=body),
            _post(b"Host: h", b" folded", body=body),  # a continuation line
            _post(b"Bad Name: x", body=body),  # not a token
            _post(b"NoColon", body=body),
            _post(b"X: a\rb", body=body),  # a CR alone in a value
            _post(b"X: a\x00b", body=body),
            _post(b"Content-Length: 2", body=body),  # two lengths
            _post(body=body, length=False),  # no length
            _post(b"Content-Length: +2", body=body, length=False),
            _post(body=body)[:-1],  # the body not all there
            _post(body=body) + b"P",  # something after it
            _post(body=body) + _post(body=body),  # two requests
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"post / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"\r\n" + _post(body=body),  # an empty line first
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n",  # the head not all there
        ]:
            self.assertIsNone(_read(data), data)

    def test_limits(self) -> None:
        """A head at or past the channel's limits is left to it (it answers 431 or 414)."""
        data = _post(b"A: 1", b"B: 2", body=b"")
        head = data.index(b"\r\n\r\n")
        self.assertIsNotNone(_read(data, max_head=head, max_line=head, max_headers=3))
        self.assertIsNone(_read(data, max_head=head - 1))
        self.assertIsNone(_read(data, max_line=head - 1))
        self.assertIsNone(_read(data, max_headers=2))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage(self, data: bytes) -> None:
        """Any bytes: a request or L{None}, never an exception."""
        result = _read(b"POST " + data)
        self.assertIn(type(result), (WholeRequest, type(None)))
        self.assertIsNone(_read(data) if not data.startswith(b"POST ") else None)
