"""
Tests for L{medichat.http.site}: the base path, and bounded request bodies.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from medichat.http.site import BoundedRequest, normalise_base_path


class BasePathTests(SynchronousTestCase):
    """
    --base-path normalisation.
    """

    def test_forms(self) -> None:
        """Leading and trailing slashes do not matter; / and empty mean the root."""
        for given, expected in [("/api", "/api"), ("api/", "/api"), ("/a/b/", "/a/b"),
                                ("/", ""), ("", "")]:
            self.assertEqual(normalise_base_path(given), expected)

    def test_refused(self) -> None:
        """Empty segments, dot segments, queries and escapes are refused."""
        for bad in ("/a//b", "/a/../b", "/a?x", "/a%20b", "/./a"):
            self.assertRaises(ValueError, normalise_base_path, bad)


class BoundedRequestTests(SynchronousTestCase):
    """
    A body over the limit is not kept in memory.
    """

    def test_declared_length(self) -> None:
        """A huge Content-Length keeps only max_body + 1 bytes."""
        request = BoundedRequest(DummyChannel(), max_body=100)
        request.gotLength(10**9)
        for _ in range(50):
            request.handleContentChunk(b"x" * 1000)
        self.assertEqual(len(request.content.getvalue()), 101)

    def test_chunked(self) -> None:
        """A chunked body (no length) is cut the same way."""
        request = BoundedRequest(DummyChannel(), max_body=10)
        request.gotLength(None)
        request.handleContentChunk(b"a" * 7)
        request.handleContentChunk(b"b" * 7)
        self.assertEqual(request.content.getvalue(), b"aaaaaaabbbb")

    def test_within_limit(self) -> None:
        """A body within the limit is kept whole."""
        request = BoundedRequest(DummyChannel(), max_body=10)
        request.gotLength(5)
        request.handleContentChunk(b"hello")
        self.assertEqual(request.content.getvalue(), b"hello")
