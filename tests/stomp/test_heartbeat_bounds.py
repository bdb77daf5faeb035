"""
Tests for the bounds of the STOMP C{heart-beat} header (L{medichat.stomp.session}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests._stomp import Client, make_services, mint, realistic_clock


class HeartBeatBoundsTests(SynchronousTestCase):
    """
    A heart-beat too large to be a time is refused as invalid, not an internal error.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock, heartbeat=(10000, 10000), grace=3.0)

    def connect(self, value: str) -> Client:
        client = Client(self.services)
        client.send("CONNECT", {"accept-version": "1.2", "heart-beat": value,
                                "Authorization": f"Bearer {mint()}"})
        return client

    def test_huge(self) -> None:
        """309 or more digits (beyond a float), and anything over 2**31 - 1 ms: ERROR."""
        for value in ("1" * 309 + ",0", "0," + "9" * 400, "2147483648,0", "0,2147483648"):
            frame = self.connect(value).next()
            self.assertEqual(frame.command, "ERROR", value)
            self.assertEqual(frame.get("message"), "invalid heart-beat header", value)

    def test_largest(self) -> None:
        """2**31 - 1 ms, the largest accepted, negotiates as usual."""
        frame = self.connect("2147483647,2147483647").next()
        self.assertEqual(frame.command, "CONNECTED")
        self.assertEqual(frame.get("heart-beat"), "10000,10000")
