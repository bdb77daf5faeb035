"""
Tests for L{medichat.stomp.counters}: what the STOMP sessions count, and why a session is
counted as ended, driven over a L{StringTransport} with a memory clock.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from medichat.pubsub.topics import HEARTBEAT_TOPIC, ONLINE_EMPLOYEES_TOPIC
from medichat.stomp.counters import CLOSE_CAUSES
from tests._stomp import Client, make_services, mint, realistic_clock

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"


class SessionCountTests(SynchronousTestCase):
    """
    Sessions opened and closed, by cause; handshakes refused, by reason.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock)
        self.counters = self.services.counters

    def test_opened_and_disconnected(self) -> None:
        """CONNECTED counts a session opened; DISCONNECT counts it closed by the client."""
        client = Client(self.services)
        client.connect()
        self.assertEqual((self.counters.opened, dict(self.counters.closed)), (1, {}))
        client.send("DISCONNECT", {"receipt": "bye"})
        self.assertEqual(dict(self.counters.closed), {"disconnect": 1})
        # The carrier's later connection loss does not count it again.
        client.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(dict(self.counters.closed), {"disconnect": 1})

    def test_connection_lost(self) -> None:
        """A client that just goes away counts as a disconnect."""
        client = Client(self.services)
        client.connect()
        client.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(dict(self.counters.closed), {"disconnect": 1})

    def test_heartbeat_timeout(self) -> None:
        """A client silent past its heart-beats counts as a heart-beat timeout."""
        client = Client(self.services)
        client.connect(heart_beat="10000,0")
        self.clock.advance(31)
        self.clock.advance(1)
        self.assertTrue(client.closed)
        self.assertEqual(dict(self.counters.closed), {"heartbeat_timeout": 1})

    def test_error(self) -> None:
        """A session ended by an ERROR counts as closed by an error, and the ERROR by reason."""
        client = Client(self.services)
        client.connect()
        client.send("SUBSCRIBE", {"id": "1", "destination": "/nowhere"})
        self.assertEqual(client.next().command, "ERROR")
        self.assertEqual(dict(self.counters.closed), {"error": 1})
        self.assertEqual(dict(self.counters.errors), {"unknown destination": 1})
        self.assertEqual(self.counters.frames_sent["ERROR"], 1)

    def test_revoked(self) -> None:
        """A session ended because its login was revoked counts as revoked."""
        client = Client(self.services)
        client.connect()
        self.services.registry.end_sessions(user_id=CUSTOMER)
        self.assertEqual(dict(self.counters.closed), {"revoked": 1})

    def test_expired(self) -> None:
        """A session whose credential expires counts as expired."""
        client = Client(self.services)
        client.connect(mint(exp=self.clock.seconds() + 60))
        self.clock.advance(61)
        self.assertTrue(client.closed)
        self.assertEqual(dict(self.counters.closed), {"expired": 1})

    def test_shutdown(self) -> None:
        """Sessions ended by a stop count as shutdown."""
        for port in (1, 2):
            Client(self.services, port).connect()
        self.services.registry.shutdown()
        self.assertEqual(dict(self.counters.closed), {"shutdown": 2})

    def test_slow_consumer(self) -> None:
        """A carrier that dropped a client for not reading says so: slow consumer."""
        client = Client(self.services)
        client.connect()
        # The carrier's own path: its write budget overflows while the transport is full.
        budget = client.protocol._budget
        assert budget is not None
        budget.pauseProducing()
        budget.written(10**9)
        self.assertTrue(budget.overflowed)
        client.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(dict(self.counters.closed), {"slow_consumer": 1})

    def test_causes_are_known(self) -> None:
        """Every cause counted is one of those documented."""
        self.assertEqual(len(set(CLOSE_CAUSES)), 7)
        for cause in ("disconnect", "heartbeat_timeout", "error", "slow_consumer", "revoked",
                      "expired", "shutdown"):
            self.assertIn(cause, CLOSE_CAUSES)

    def test_refused(self) -> None:
        """Sessions ended before CONNECTED count as refused, by a fixed reason, not opened."""
        for headers in ({}, {"Authorization": "Bearer not-a-jwt"},
                        {"Authorization": f"Bearer {mint(secret=b'x' * 32)}"}):
            client = Client(self.services)
            client.send("CONNECT", {"accept-version": "1.2", **headers})
            self.assertEqual(client.next().command, "ERROR")
        client = Client(self.services)
        client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        client = Client(self.services)
        self.clock.advance(11)
        self.assertTrue(client.closed)
        self.assertEqual(dict(self.counters.refused), {
            "missing credentials": 1,
            "authentication failed": 2,
            "expected CONNECT": 1,
            "CONNECT timeout": 1,
        })
        self.assertEqual(self.counters.opened, 0)
        self.assertEqual(dict(self.counters.closed), {})

    def test_too_many_sessions_refused(self) -> None:
        """The session over the per-user limit is refused as such."""
        services = make_services(self.clock, max_sessions_per_user=1)
        Client(services).connect()
        client = Client(services, 2)
        client.send("CONNECT", {"accept-version": "1.2", "Authorization": f"Bearer {mint()}"})
        self.assertEqual(client.next().get("message"), "too many sessions")
        self.assertEqual(dict(services.counters.refused), {"too many sessions": 1})

    def test_malformed_frame_reason(self) -> None:
        """A malformed frame is counted under one fixed reason, whatever the bytes were."""
        client = Client(self.services)
        client.connect()
        client.raw(b"NONSENSE\n\n\x00")
        self.assertEqual(dict(self.counters.errors), {"malformed frame": 1})


class FrameCountTests(SynchronousTestCase):
    """
    Frames in and out by command, bytes out, and live deliveries left to the hub.
    """

    def setUp(self) -> None:
        self.services = make_services()
        self.counters = self.services.counters

    def test_frames_and_bytes(self) -> None:
        """Frames are counted by command both ways; live deliveries are left to the hub."""
        client = Client(self.services)
        client.connect()
        client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC, "receipt": "r"})
        client.frames()
        self.assertEqual(dict(self.counters.frames_received), {"CONNECT": 1, "SUBSCRIBE": 1})
        self.assertEqual(dict(self.counters.frames_sent), {"CONNECTED": 1, "RECEIPT": 1})
        self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {}})
        self.assertEqual([f.command for f in client.frames()], ["MESSAGE"])
        self.assertEqual(self.counters.frames_sent["MESSAGE"], 0)
        self.assertEqual((self.services.hub.publications, self.services.hub.deliveries), (1, 1))

    def test_bytes_sent_exact(self) -> None:
        """The bytes counted are exactly the bytes the carrier was given."""
        client = Client(self.services)
        client.send("CONNECT", {"accept-version": "1.2", "heart-beat": "0,0",
                                "Authorization": f"Bearer {mint()}"})
        client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC, "receipt": "r"})
        self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {}})
        client.send("DISCONNECT", {"receipt": "bye"})
        self.assertEqual(self.counters.bytes_sent, len(client.transport.value()))

    def test_own_messages_counted(self) -> None:
        """MESSAGEs a session sends of its own (the online count) are counted by it."""
        client = Client(self.services)
        client.connect(mint(EMPLOYEE, "nurse", "employee"))
        client.send("SUBSCRIBE", {"id": "1", "destination": ONLINE_EMPLOYEES_TOPIC})
        (frame,) = client.frames()
        self.assertEqual(frame.command, "MESSAGE")
        self.assertEqual(self.counters.frames_sent["MESSAGE"], 1)

    def test_fanout_counted_once(self) -> None:
        """A publication to many subscriptions adds their number to the hub's deliveries."""
        clients = [Client(self.services, port) for port in range(1, 6)]
        for client in clients:
            client.connect()
            client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        for _ in range(3):
            self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {}})
        self.assertEqual((self.services.hub.publications, self.services.hub.deliveries), (3, 15))
        self.assertEqual(self.services.hub.subscription_count(), 5)

    def test_carrier_kind(self) -> None:
        """A session names its carrier."""
        client = Client(self.services)
        client.connect()
        (session,) = self.services.registry.sessions()
        self.assertEqual(session.carrier_kind, "tcp")  # type: ignore[attr-defined]
