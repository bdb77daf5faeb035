"""
Tests for L{medichat.stomp.session}: the STOMP server state machine, driven frame by frame over
a L{StringTransport} with a L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from medichat.errors import StoreUnavailable
from medichat.interfaces import IConversations
from medichat.model import User
from medichat.pubsub.topics import HEARTBEAT_TOPIC, ONLINE_EMPLOYEES_TOPIC
from medichat.stomp.codec import Limits
from tests._stomp import Client, make_services, mint, realistic_clock

EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"  # the subject of mint()'s default token

# What real clients sent (shared/interop), byte for byte.
STOMPJS_CONNECT = b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\x00"
STOMPJS_SUBSCRIBE = (
    b"SUBSCRIBE\nreceipt:sub-0\nid:sub-0\ndestination:/v1/topic/online-employees\n\n\x00"
)
STOMPJS_DISCONNECT = b"DISCONNECT\nreceipt:close-1\n\n\x00"
STOMPJS_TYPING = (
    b"SEND\ndestination:/v1/app/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf"
    b"/typing/start\n\n\x00"
)
STOMPPY_CONNECT = (
    b"STOMP\nAuthorization:Bearer %s\naccept-version:1.2\nheart-beat:10000,10000\n"
    b"host:127.0.0.1\n\n\x00"
)
STOMPPY_SUBSCRIBE = (
    b"SUBSCRIBE\nack:auto\ndestination:/v1/topic/online-employees\nid:sub-0\n\n\x00"
)


class ConnectTests(SynchronousTestCase):
    """
    CONNECT: versions, credentials, CONNECTED headers.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock)

    def test_connected_headers(self) -> None:
        """CONNECTED names version, heart-beat, server, session and user-name."""
        client = Client(self.services)
        frame = client.connect()
        self.assertEqual(frame.get("version"), "1.2")
        self.assertEqual(frame.get("heart-beat"), "10000,10000")
        self.assertTrue((frame.get("server") or "").startswith("medichat/"))
        self.assertTrue(frame.get("session"))
        self.assertEqual(frame.get("user-name"), "0be8c544-9518-4bce-8519-0eee0356989f")

    def test_stomp_command(self) -> None:
        """stomp.py's STOMP frame, with its Authorization header and host, connects."""
        client = Client(self.services)
        client.raw(STOMPPY_CONNECT % mint().encode())
        self.assertEqual(client.next().command, "CONNECTED")

    def test_passcode(self) -> None:
        """A JWT as passcode (RabbitMQ's OAuth 2 style) connects."""
        client = Client(self.services)
        client.send("CONNECT", {"accept-version": "1.2", "login": "x", "passcode": mint()})
        self.assertEqual(client.next().command, "CONNECTED")

    def test_authorization_any_case(self) -> None:
        """The Authorization header name may come in any case."""
        client = Client(self.services)
        client.send("CONNECT", {"accept-version": "1.2", "AUTHORIZATION": f"Bearer {mint()}"})
        self.assertEqual(client.next().command, "CONNECTED")

    def test_handshake_credentials(self) -> None:
        """Credentials given by the carrier's handshake are used when CONNECT has none."""
        from medichat.auth.credentials import BearerToken
        from medichat.stomp.session import StompSession

        sent: list[bytes] = []

        class Carrier:
            def send(self, data: bytes) -> None:
                sent.append(data)

            def close(self, code: int, reason: str) -> None:
                pass

            def abort(self) -> None:
                pass

        session = StompSession(Carrier(), self.services, credentials=BearerToken(mint()))
        session.connection_made()
        session.data_received(STOMPJS_CONNECT)
        self.assertTrue(sent[0].startswith(b"CONNECTED\n"))

    def test_version_negotiation(self) -> None:
        """The highest common version wins; no accept-version means 1.0."""
        for offered, expected in [("1.0,1.1", "1.1"), ("1.2,1.1,1.0", "1.2"), (None, "1.0")]:
            client = Client(self.services)
            headers = {"Authorization": f"Bearer {mint()}"}
            if offered:
                headers["accept-version"] = offered
            client.send("CONNECT", headers)
            self.assertEqual(client.next().get("version"), expected, offered)

    def test_no_common_version(self) -> None:
        """No common version: ERROR naming the supported versions, then close."""
        client = Client(self.services)
        client.send("CONNECT", {"accept-version": "2.0", "Authorization": f"Bearer {mint()}"})
        frame = client.next()
        self.assertEqual(frame.command, "ERROR")
        self.assertEqual(frame.get("version"), "1.0,1.1,1.2")
        self.assertTrue(client.closed)

    def test_bad_credentials(self) -> None:
        """Missing, malformed, wrongly signed and expired tokens: ERROR saying why, close."""
        cases = [
            ({}, "missing credentials"),
            ({"Authorization": "Bearer not-a-jwt"}, "malformed token"),
            ({"Authorization": f"Bearer {mint(secret=b'x' * 32)}"}, "bad signature"),
            ({"Authorization": f"Bearer {mint(exp=self.clock.seconds() - 60)}"},
             "credential expired"),
        ]
        for headers, message in cases:
            client = Client(self.services)
            client.send("CONNECT", {"accept-version": "1.2", **headers})
            frame = client.next()
            self.assertEqual((frame.command, frame.get("message")), ("ERROR", message))
            self.assertTrue(client.closed, message)

    def test_frame_before_connect(self) -> None:
        """A frame other than CONNECT first is an ERROR."""
        client = Client(self.services)
        client.raw(STOMPJS_SUBSCRIBE)
        frame = client.next()
        self.assertEqual(frame.get("message"), "expected CONNECT")
        self.assertEqual(frame.get("receipt-id"), "sub-0")
        self.assertTrue(client.closed)

    def test_second_connect(self) -> None:
        """CONNECT on a connected session is an ERROR."""
        client = Client(self.services)
        client.connect()
        client.send("CONNECT", {"accept-version": "1.2"})
        self.assertEqual(client.next().get("message"), "already connected")

    def test_connect_timeout(self) -> None:
        """A connection that sends no CONNECT within the timeout gets ERROR and is closed."""
        client = Client(self.services)
        self.clock.advance(9)
        self.assertFalse(client.closed)
        self.clock.advance(2)
        self.assertEqual(client.next().get("message"), "CONNECT timeout")
        self.assertTrue(client.closed)

    def test_preauth_budget(self) -> None:
        """Before authentication a frame may be at most the smaller pre-auth size."""
        services = make_services(self.clock, preauth_limits=Limits(max_frame_bytes=512))
        client = Client(services)
        client.send("CONNECT", {"accept-version": "1.2", "x": "y" * 600})
        frame = client.next()
        self.assertEqual(frame.command, "ERROR")
        self.assertIn("larger than", frame.get("message") or "")

    def test_token_expires_during_session(self) -> None:
        """A session whose token expires ends with ERROR 'credential expired'."""
        client = Client(self.services)
        client.connect(mint(exp=self.clock.seconds() + 30))
        self.clock.advance(29)
        self.assertFalse(client.closed)
        self.clock.advance(2)
        self.assertEqual(client.next().get("message"), "credential expired")
        self.assertTrue(client.closed)

    def test_interop_stompjs_flow(self) -> None:
        """stompjs's bytes, with credentials from the handshake, get the expected answers."""
        client = Client(self.services)
        client.raw(STOMPJS_CONNECT.replace(b"\n\n", b"\nAuthorization:Bearer %s\n\n" % (
            mint().encode())))
        self.assertEqual(client.next().command, "CONNECTED")
        client.raw(STOMPJS_SUBSCRIBE)
        frames = client.frames()
        self.assertEqual([f.command for f in frames], ["MESSAGE", "RECEIPT"])
        self.assertEqual(frames[0].body, b'{"online":0}')
        self.assertEqual(frames[1].get("receipt-id"), "sub-0")
        client.raw(STOMPJS_DISCONNECT + STOMPJS_TYPING)
        self.assertEqual([(f.command, f.get("receipt-id")) for f in client.frames()],
                         [("RECEIPT", "close-1")])
        self.assertTrue(client.closed)


class SubscriptionTests(SynchronousTestCase):
    """
    SUBSCRIBE, UNSUBSCRIBE, MESSAGE delivery, receipts and ACK.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock)
        self.client = Client(self.services)
        self.client.connect()

    def test_heartbeat_topic(self) -> None:
        """A publication on the heartbeat topic reaches the subscriber as a MESSAGE."""
        self.client.send("SUBSCRIBE", {"id": "s1", "destination": HEARTBEAT_TOPIC,
                                       "receipt": "r1"})
        self.assertEqual(self.client.next().get("receipt-id"), "r1")
        self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "x"}})
        frame = self.client.next()
        self.assertEqual(frame.command, "MESSAGE")
        self.assertEqual(frame.get("destination"), HEARTBEAT_TOPIC)
        self.assertEqual(frame.get("subscription"), "s1")
        self.assertEqual(frame.get("content-type"), "application/json")
        self.assertEqual(frame.get("content-length"), str(len(frame.body)))
        self.assertEqual(frame.body, b'{"heartbeat":{"time":"x"}}')
        self.assertTrue(frame.get("message-id"))

    def test_unique_message_ids(self) -> None:
        """Each MESSAGE has its own message-id."""
        self.client.send("SUBSCRIBE", {"id": "s1", "destination": HEARTBEAT_TOPIC})
        for _ in range(3):
            self.services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {}})
        ids = {f.get("message-id") for f in self.client.frames()}
        self.assertEqual(len(ids), 3)

    def test_subscription_id_escaped(self) -> None:
        """A subscription id with special characters is escaped in MESSAGE (1.2)."""
        self.client.send("SUBSCRIBE", {"id": "a:b\nc", "destination": HEARTBEAT_TOPIC})
        self.services.hub.publish(HEARTBEAT_TOPIC, {})
        self.assertEqual(self.client.next().get("subscription"), "a:b\nc")

    def test_online_employees(self) -> None:
        """A new subscriber gets the current count; later subscribers only changes."""
        self.client.raw(STOMPPY_SUBSCRIBE)
        self.assertEqual(self.client.next().body, b'{"online":0}')
        employee = Client(self.services, 40001)
        employee.connect(mint(EMPLOYEE, "nurse", "employee"))
        self.assertEqual(self.client.next().body, b'{"online":1}')
        second = Client(self.services, 40002)
        second.connect(mint(EMPLOYEE, "nurse", "employee"))
        self.assertEqual(self.client.frames(), [], "same employee twice: no change")
        employee.send("DISCONNECT")
        self.assertEqual(self.client.frames(), [])
        second.protocol.connectionLost()
        self.assertEqual(self.client.next().body, b'{"online":0}')

    def test_unsubscribe(self) -> None:
        """After UNSUBSCRIBE nothing more is delivered on that subscription."""
        self.client.send("SUBSCRIBE", {"id": "s1", "destination": HEARTBEAT_TOPIC})
        self.client.send("UNSUBSCRIBE", {"id": "s1", "receipt": "u"})
        self.assertEqual(self.client.next().get("receipt-id"), "u")
        self.services.hub.publish(HEARTBEAT_TOPIC, {})
        self.assertEqual(self.client.frames(), [])
        self.assertEqual(self.services.hub.subscriber_count(HEARTBEAT_TOPIC), 0)

    def test_missing_headers(self) -> None:
        """SUBSCRIBE without id or destination and UNSUBSCRIBE without id are ERRORs."""
        for command, headers, message in [
            ("SUBSCRIBE", {"destination": HEARTBEAT_TOPIC}, "missing id header"),
            ("SUBSCRIBE", {"id": "1"}, "missing destination header"),
            ("UNSUBSCRIBE", {}, "missing id header"),
            ("SEND", {}, "missing destination header"),
            ("ACK", {}, "missing id header"),
            ("BEGIN", {}, "missing transaction header"),
        ]:
            client = Client(self.services)
            client.connect()
            client.send(command, {**headers, "receipt": "r"})
            frame = client.next()
            self.assertEqual((frame.command, frame.get("message")), ("ERROR", message))
            self.assertEqual(frame.get("receipt-id"), "r")
            self.assertTrue(client.closed)

    def test_unknown_destination(self) -> None:
        """SUBSCRIBE to a destination that does not exist is an ERROR."""
        self.client.send("SUBSCRIBE", {"id": "1", "destination": "/v1/topic/nope"})
        frame = self.client.next()
        self.assertEqual(frame.get("message"), "unknown destination")
        self.assertEqual(frame.body, b"/v1/topic/nope")
        self.assertTrue(self.client.closed)

    def test_send_to_topic(self) -> None:
        """SEND to a /v1/topic/ destination is an ERROR."""
        self.client.send("SEND", {"destination": HEARTBEAT_TOPIC})
        self.assertEqual(self.client.next().get("message"), "cannot send to a topic")

    def test_duplicate_subscription_id(self) -> None:
        """Two subscriptions with one id are an ERROR."""
        self.client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        self.client.send("SUBSCRIBE", {"id": "1", "destination": ONLINE_EMPLOYEES_TOPIC})
        self.assertEqual(self.client.frames()[-1].get("message"), "duplicate subscription id")

    def test_subscription_limit(self) -> None:
        """More subscriptions than allowed is an ERROR."""
        services = make_services(self.clock, max_subscriptions=2)
        client = Client(services)
        client.connect()
        destinations = [HEARTBEAT_TOPIC, ONLINE_EMPLOYEES_TOPIC,
                        "/v1/topic/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf"]
        for i, destination in enumerate(destinations):
            client.send("SUBSCRIBE", {"id": str(i), "destination": destination})
        self.assertEqual(client.frames()[-1].get("message"), "too many subscriptions")

    def test_client_ack(self) -> None:
        """ack:client MESSAGEs carry an ack header (1.2) that ACK and NACK accept."""
        self.client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC,
                                       "ack": "client-individual"})
        self.services.hub.publish(HEARTBEAT_TOPIC, {})
        ack = self.client.next().get("ack")
        self.assertTrue(ack)
        self.client.send("ACK", {"id": ack or "", "receipt": "a"})
        self.client.send("NACK", {"id": ack or "", "receipt": "n"})
        self.assertEqual([f.get("receipt-id") for f in self.client.frames()], ["a", "n"])

    def test_bad_ack_mode(self) -> None:
        """An unknown ack mode is an ERROR."""
        self.client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC, "ack": "x"})
        self.assertEqual(self.client.next().get("message"), "invalid ack mode")

    def test_connection_lost_unsubscribes(self) -> None:
        """A lost connection releases its subscriptions."""
        self.client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        self.client.protocol.connectionLost()
        self.assertEqual(self.services.hub.subscriber_count(HEARTBEAT_TOPIC), 0)

    def test_frames_after_disconnect_ignored(self) -> None:
        """Frames after DISCONNECT are ignored."""
        self.client.send("DISCONNECT", {"receipt": "bye"})
        self.client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        self.assertEqual([f.command for f in self.client.frames()], ["RECEIPT"])
        self.assertEqual(self.services.hub.subscriber_count(HEARTBEAT_TOPIC), 0)


class TransactionTests(SynchronousTestCase):
    """
    BEGIN, COMMIT and ABORT.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.calls: list[tuple[str, str, bool]] = []
        self.services = make_services(self.clock, conversations=_Recorder(self.calls))
        self.client = Client(self.services)
        self.client.connect()

    def _send(self, tx: str | None = None, what: str = "start") -> None:
        headers = {"destination":
                   f"/v1/app/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf/typing/{what}"}
        if tx:
            headers["transaction"] = tx
        self.client.send("SEND", headers)

    def test_commit(self) -> None:
        """SENDs inside a transaction take effect at COMMIT, in order."""
        calls = self.calls
        self.client.send("BEGIN", {"transaction": "t"})
        self._send("t", "start")
        self._send("t", "stop")
        self.assertEqual(calls, [])
        self.client.send("COMMIT", {"transaction": "t", "receipt": "c"})
        self.assertEqual([c[2] for c in calls], [True, False])
        self.assertEqual(self.client.next().get("receipt-id"), "c")

    def test_abort(self) -> None:
        """SENDs of an aborted transaction never take effect."""
        calls = self.calls
        self.client.send("BEGIN", {"transaction": "t"})
        self._send("t")
        self.client.send("ABORT", {"transaction": "t", "receipt": "a"})
        self.assertEqual(calls, [])
        self.assertEqual(self.client.next().get("receipt-id"), "a")

    def test_unknown_transaction(self) -> None:
        """COMMIT, ABORT or SEND naming no begun transaction is an ERROR."""
        for command in ("COMMIT", "ABORT"):
            client = Client(self.services)
            client.connect()
            client.send(command, {"transaction": "nope"})
            self.assertEqual(client.next().get("message"), "unknown transaction")

    def test_begin_twice(self) -> None:
        """BEGIN of a transaction already begun is an ERROR."""
        self.client.send("BEGIN", {"transaction": "t"})
        self.client.send("BEGIN", {"transaction": "t"})
        self.assertEqual(self.client.next().get("message"), "transaction already begun")


class _Recorder:
    """Records typing calls the way the conversation service would receive them."""

    def __init__(self, calls: list[object]) -> None:
        self.calls = calls

    def typing(self, user: object, conversation_id: str, started: bool) -> None:
        self.calls.append((getattr(user, "user_id", ""), conversation_id, started))


class HeartBeatTests(SynchronousTestCase):
    """
    Heart-beat negotiation, sending, and dropping silent clients.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock, heartbeat=(10000, 10000), grace=3.0)

    def test_negotiation_header(self) -> None:
        """The server states its own heart-beat; 1.0 sessions have none."""
        client = Client(self.services)
        self.assertEqual(client.connect(heart_beat="5000,20000").get("heart-beat"),
                         "10000,10000")

    def test_server_sends_heartbeats(self) -> None:
        """With cy=20000 the server sends an EOL every max(10000, 20000) ms when idle."""
        client = Client(self.services)
        client.connect(heart_beat="0,20000")
        self.clock.advance(19)
        client.frames()
        self.assertEqual(client.heartbeats, 0)
        self.clock.advance(1.5)
        client.frames()
        self.assertEqual(client.heartbeats, 1)
        self.clock.advance(20)
        client.frames()
        self.assertEqual(client.heartbeats, 2)

    def test_no_heartbeats_when_disabled(self) -> None:
        """A client asking for none gets none, and is never dropped for silence."""
        client = Client(self.services)
        client.connect(heart_beat="0,0")
        self.clock.pump([10] * 20)
        client.frames()
        self.assertEqual(client.heartbeats, 0)
        self.assertFalse(client.closed)

    def test_silent_client_dropped(self) -> None:
        """A client silent for grace x the negotiated interval is dropped."""
        client = Client(self.services)
        client.connect(heart_beat="10000,0")
        self.clock.advance(29)
        self.assertFalse(client.closed)
        self.clock.advance(1.5)
        self.assertTrue(client.transport.disconnecting or client.closed)

    def test_any_byte_is_life(self) -> None:
        """Any inbound byte, a bare EOL included, resets the read timer."""
        client = Client(self.services)
        client.connect(heart_beat="10000,0")
        for _ in range(10):
            self.clock.advance(20)
            client.raw(b"\n")
        self.assertFalse(client.closed)
        client.raw(b"\r\n")
        self.assertFalse(client.closed)

    def test_invalid_heartbeat_header(self) -> None:
        """A malformed heart-beat header is an ERROR."""
        for value in ("10", "a,b", "-1,0", "1,2,3"):
            client = Client(self.services)
            client.send("CONNECT", {"accept-version": "1.2", "heart-beat": value,
                                    "Authorization": f"Bearer {mint()}"})
            self.assertEqual(client.next().get("message"), "invalid heart-beat header", value)


class RobustnessTests(SynchronousTestCase):
    """
    Bad input ends the offending session only.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock)

    def test_garbage_ends_only_that_session(self) -> None:
        """Garbage on one connection gets an ERROR; another session carries on."""
        good = Client(self.services, 1)
        good.connect()
        good.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        bad = Client(self.services, 2)
        bad.connect()
        bad.raw(b"\x00\xff\xfeNOT STOMP\n\n\x00")
        self.assertEqual(bad.next().command, "ERROR")
        self.assertTrue(bad.closed)
        self.services.hub.publish(HEARTBEAT_TOPIC, {})
        self.assertEqual(good.next().command, "MESSAGE")

    def test_body_only_on_send(self) -> None:
        """A body on any frame but SEND (STOMP 1.2 forbids it) is an ERROR, with the receipt."""
        for command, headers in (
            ("ACK", {"id": "m"}),
            ("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC}),
            ("BEGIN", {"transaction": "t"}),
        ):
            client = Client(self.services)
            client.connect()
            client.send(command, {**headers, "receipt": "r"}, b"x" * 100)
            frame = client.next()
            self.assertEqual(
                (frame.command, frame.get("message"), frame.get("receipt-id")),
                ("ERROR", "frame must not have a body", "r"),
            )
            self.assertTrue(client.closed)

    def test_empty_body_any_frame(self) -> None:
        """An empty body with content-length:0 (Krossbow) is no body."""
        client = Client(self.services)
        client.connect()
        client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC,
                                  "content-length": "0", "receipt": "r"})
        self.assertEqual(client.next().command, "RECEIPT")

    def test_oversized_frame(self) -> None:
        """A frame over the limit is refused by its content-length, before the body."""
        services = make_services(self.clock, limits=Limits(max_frame_bytes=1024))
        client = Client(services)
        client.connect()
        client.raw(b"SEND\ndestination:/x\ncontent-length:5000\n\n")
        frame = client.next()
        self.assertEqual(frame.command, "ERROR")
        self.assertIn("larger than", frame.get("message") or "")

    def test_too_many_headers(self) -> None:
        """More headers than allowed is an ERROR."""
        client = Client(self.services)
        client.connect()
        client.send("SUBSCRIBE", {f"h{i}": "v" for i in range(40)})
        self.assertEqual(client.next().command, "ERROR")

    def test_send_flood(self) -> None:
        """A SEND flood over the rate limit ends the session."""
        calls: list[object] = []
        services = make_services(self.clock, conversations=_Recorder(calls),
                                 send_rate=1.0, send_burst=5.0)
        client = Client(services)
        client.connect()
        for _ in range(10):
            client.send("SEND", {"destination":
                                 "/v1/app/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf"
                                 "/typing/start"})
        self.assertEqual(len(calls), 5)
        self.assertEqual(client.frames()[-1].get("message"), "rate limit exceeded")

    def test_pipelined_frames_do_not_recurse(self) -> None:
        """Many pipelined frames whose handlers answer at once are handled in order."""
        from twisted.internet.defer import succeed

        calls: list[bool] = []

        class Immediate:
            def typing(self, user: object, conversation_id: str, started: bool) -> object:
                calls.append(started)
                return succeed(None)

        services = make_services(self.clock, conversations=Immediate(), send_rate=1e6,
                                 send_burst=1e6, max_pending_frames=10_000)
        client = Client(services)
        client.connect()
        destination = "/v1/app/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf/typing/"
        frames = b"".join(
            b"SEND\ndestination:%s\nreceipt:%d\n\n\x00" % ((destination + "start").encode(), i)
            for i in range(3000)
        )
        client.raw(frames)
        receipts = [f.get("receipt-id") for f in client.frames()]
        self.assertEqual(receipts, [str(i) for i in range(3000)])
        self.assertEqual(len(calls), 3000)

    def test_unexpected_error_logged(self) -> None:
        """A failure inside a handler becomes ERROR 'internal server error' and is logged."""
        from twisted.internet.testing import EventLoggingObserver

        observer = EventLoggingObserver.createWithCleanup(self, _global_publisher())

        class Broken:
            def typing(self, *args: object) -> None:
                raise RuntimeError("boom")

        services = make_services(self.clock, conversations=Broken())
        client = Client(services)
        client.connect()
        client.send("SEND", {"destination":
                             "/v1/app/conversation/6b92c178-c22b-4bbb-8dec-8d497660b5bf"
                             "/typing/start"})
        self.assertEqual(client.next().get("message"), "internal server error")
        self.assertTrue(any(e["log_level"] == LogLevel.critical for e in observer))
        self.flushLoggedErrors(RuntimeError)


def _global_publisher():  # type: ignore[no-untyped-def]
    from twisted.logger import globalLogPublisher

    return globalLogPublisher


class EncodingEdgeTests(SynchronousTestCase):
    """
    Values echoed from clients that a STOMP version cannot carry.
    """

    def test_receipt_with_carriage_return_in_1_1(self) -> None:
        """A 1.1 receipt id ending in CR (from a CRCRLF line) still gets a RECEIPT."""
        clock = realistic_clock()
        client = Client(make_services(clock))
        client.send("CONNECT", {"accept-version": "1.1", "Authorization": f"Bearer {mint()}"})
        client.frames()
        client.raw(b"SUBSCRIBE\nid:1\ndestination:/v1/topic/heartbeat\nreceipt:r\r\r\n\n\x00")
        frame = client.next()
        self.assertEqual(frame.command, "RECEIPT")
        self.assertEqual(frame.get("receipt-id"), "r ")


@implementer(IConversations)
class _EveryoneTakesPart:
    """Conversations that every user takes part in."""

    def check_participant(self, user: User, conversation_id: str) -> Deferred[Any]:
        return succeed(None)

    def subscribe(self, user: User, conversation_id: str) -> Deferred[Any]:
        return succeed(None)

    def typing(self, user: User, conversation_id: str, started: bool) -> Deferred[None]:
        return succeed(None)

    def stream_start(
        self, conversation_id: str, offset: int | None, since: int | None, most: int
    ) -> Deferred[int]:
        return succeed(1)

    def stream_events(self, conversation_id: str, offset: int, limit: int) -> Deferred[Any]:
        return succeed([])


@implementer(IConversations)
class _StoreDown:
    """Conversations whose store cannot serve now."""

    def check_participant(self, user: User, conversation_id: str) -> Deferred[Any]:
        return fail(StoreUnavailable("database unreachable"))

    def subscribe(self, user: User, conversation_id: str) -> Deferred[Any]:
        return fail(StoreUnavailable("database unreachable"))

    def typing(self, user: User, conversation_id: str, started: bool) -> Deferred[None]:
        return fail(StoreUnavailable("database unreachable"))

    def stream_start(
        self, conversation_id: str, offset: int | None, since: int | None, most: int
    ) -> Deferred[int]:
        return fail(StoreUnavailable("database unreachable"))

    def stream_events(self, conversation_id: str, offset: int, limit: int) -> Deferred[Any]:
        return fail(StoreUnavailable("database unreachable"))


class StoreOutageTests(SynchronousTestCase):
    """
    A store outage ends the session that needed the store with a clear ERROR, and logs
    no traceback per frame (the store logs the outage once).
    """

    def test_subscribe_during_outage(self) -> None:
        """SUBSCRIBE to a conversation while the store is down: ERROR service unavailable."""
        client = Client(make_services(realistic_clock(), conversations=_StoreDown()))
        client.connect()
        client.send("SUBSCRIBE", {"id": "1", "destination": CHAT_TOPIC, "receipt": "r"})
        frame = client.next()
        self.assertEqual(frame.command, "ERROR")
        self.assertEqual(frame.get("message"), "service unavailable")
        self.assertEqual(frame.get("receipt-id"), "r")
        self.assertTrue(client.closed)
        self.assertEqual(self.flushLoggedErrors(), [])


CHAT = "6b92c178-c22b-4bbb-8dec-8d497660b5bf"
CHAT_TOPIC = f"/v1/topic/conversation/{CHAT}"


class PresenceReportTests(SynchronousTestCase):
    """
    Sessions report to presence, which publishes conversation presence and answers who is
    subscribed; the session itself reads nothing of the hub.
    """

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.services = make_services(self.clock, conversations=_EveryoneTakesPart())
        self.watcher = Client(self.services, 40000)
        self.watcher.connect(mint(EMPLOYEE, "nurse", "employee"))
        self.watcher.send("SUBSCRIBE", {"id": "w", "destination": CHAT_TOPIC})
        self.watcher.frames()

    def events(self, client: Client) -> list[Any]:
        return [json.loads(f.body) for f in client.frames() if f.command == "MESSAGE"]

    def test_first_and_last_over_sessions(self) -> None:
        """userConnected once for a user's first subscription, userDisconnected at the last."""
        tab1, tab2 = Client(self.services, 40001), Client(self.services, 40002)
        tab1.connect()
        tab2.connect()
        tab1.send("SUBSCRIBE", {"id": "a", "destination": CHAT_TOPIC})
        tab2.send("SUBSCRIBE", {"id": "a", "destination": CHAT_TOPIC})
        connected = {"userConnected": {"userId": CUSTOMER}}
        self.assertEqual(self.events(self.watcher), [connected])
        tab1.send("UNSUBSCRIBE", {"id": "a"})
        tab1.send("DISCONNECT")
        self.assertEqual(self.events(self.watcher), [])
        tab2.protocol.connectionLost()
        self.assertEqual(
            self.events(self.watcher),
            [{"userDisconnected": {"userId": CUSTOMER}}],
        )

    def test_receipt_after_user_connected(self) -> None:
        """The subscriber sees its own userConnected before the SUBSCRIBE's RECEIPT."""
        client = Client(self.services, 40001)
        client.connect()
        client.send("SUBSCRIBE", {"id": "a", "destination": CHAT_TOPIC, "receipt": "r"})
        self.assertEqual([f.command for f in client.frames()], ["MESSAGE", "RECEIPT"])

    def test_subscribed_users(self) -> None:
        """Presence knows who is subscribed, until the connection is lost."""
        client = Client(self.services, 40001)
        client.connect()
        client.send("SUBSCRIBE", {"id": "a", "destination": CHAT_TOPIC})
        users = self.services.presence.subscribed_users(CHAT)
        self.assertEqual(
            self.successResultOf(users), {EMPLOYEE, CUSTOMER}
        )
        client.protocol.connectionLost()
        self.assertEqual(self.successResultOf(self.services.presence.subscribed_users(CHAT)),
                         {EMPLOYEE})

    def test_online_value_after_unsubscribe(self) -> None:
        """A current online value answered after the subscription ended is not delivered."""
        pending: Deferred[int] = Deferred()
        presence = self.services.presence
        self.patch(presence, "online_employees", lambda: pending)
        client = Client(self.services, 40001)
        client.connect()
        client.send("SUBSCRIBE", {"id": "o", "destination": ONLINE_EMPLOYEES_TOPIC,
                                  "receipt": "r"})
        self.assertEqual(client.frames(), [], "the RECEIPT waits for the current value")
        client.protocol.connectionLost()
        pending.callback(1)
        self.assertEqual(client.frames(), [])


class EncodeOnceTests(SynchronousTestCase):
    """
    A publication's MESSAGE frame is encoded once, however many sessions it reaches.
    """

    def test_fan_out_encodes_once(self) -> None:
        """Three subscribers (two sessions, one with two subscriptions) cost one encoding."""
        from medichat.stomp import session as session_module

        calls: list[object] = []
        original = session_module._message_parts

        def counting(publication: Any) -> Any:
            calls.append(publication)
            return original(publication)

        self.patch(session_module, "_message_parts", counting)
        services = make_services(realistic_clock())
        first, second, third = Client(services, 1), Client(services, 2), Client(services, 3)
        for client in (first, second):
            client.connect()
            client.send("SUBSCRIBE", {"id": "1", "destination": HEARTBEAT_TOPIC})
        third.connect()
        third.send("SUBSCRIBE", {"id": "2", "destination": HEARTBEAT_TOPIC, "ack": "client"})
        services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "x"}})
        self.assertEqual(len(calls), 1)
        one = first.next()
        two = second.next()
        three = third.next()
        self.assertEqual({one.body, two.body, three.body}, {b'{"heartbeat":{"time":"x"}}'})
        self.assertEqual([two.get("subscription"), three.get("subscription")], ["1", "2"])
        self.assertIsNone(two.get("ack"))
        self.assertEqual(three.get("ack"), three.get("message-id"))

    def subscribed(self, services: Any, ids: list[str], ack: str = "auto",
                   version: str = "1.2") -> list[tuple[Client, list[bytes]]]:
        """One session per id, subscribed to the heart-beat topic; what each carrier sent."""
        clients = []
        for port, sub_id in enumerate(ids, 1):
            client = Client(services, port)
            # One user per session: a user may have only so many.
            client.connect(mint(str(uuid.UUID(int=port))), **{"accept-version": version})
            client.send("SUBSCRIBE", {"id": sub_id, "destination": HEARTBEAT_TOPIC,
                                      "ack": ack})
            sent: list[bytes] = []
            original = client.protocol.send

            def recording(data: bytes, sent: list[bytes] = sent,
                          original: Any = original) -> None:
                sent.append(data)
                original(data)

            # The session binds its carrier's send once, when it is made.
            session = client.protocol._session
            assert session is not None
            session._carrier_send = recording
            clients.append((client, sent))
        return clients

    def test_shared_id_shares_frame(self) -> None:
        """
        Subscribers with the same subscription id are handed one bytes object (which a
        carrier may frame once); another id, or the ack header of a STOMP 1.2 client that
        acknowledges by hand, gets its own.
        """
        services = make_services(realistic_clock())
        auto = self.subscribed(services, ["sub-0", "sub-0", "sub-1"])
        (by_hand, by_hand_sent), = self.subscribed(services, ["sub-0"], ack="client")
        (old, old_sent), = self.subscribed(services, ["sub-0"], ack="client", version="1.1")
        services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "x"}})
        (first,), (second,), (other,) = (sent for _, sent in auto)
        self.assertIs(first, second)
        self.assertIsNot(first, other)
        self.assertEqual(old_sent, [first], "STOMP 1.1 sends no ack header")
        frames = [client.next() for client, _ in auto] + [by_hand.next(), old.next()]
        self.assertEqual([f.get("subscription") for f in frames],
                         ["sub-0", "sub-0", "sub-1", "sub-0", "sub-0"])
        self.assertEqual([f.get("ack") for f in frames],
                         [None, None, None, frames[3].get("message-id"), None])
        self.assertEqual({f.body for f in frames}, {b'{"heartbeat":{"time":"x"}}'})

    def test_many_ids(self) -> None:
        """
        A publication keeps the frames of a bounded number of subscription ids; subscribers
        beyond those get theirs made for them, the same bytes.
        """
        from medichat.stomp.session import _MAX_KEPT_FRAMES

        services = make_services(realistic_clock())
        ids = [f"id-{n}" for n in range(_MAX_KEPT_FRAMES + 5)]
        clients = self.subscribed(services, ids + ids)
        services.hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": "x"}})
        frames = [client.next() for client, _ in clients]
        self.assertEqual([f.get("subscription") for f in frames], ids + ids)
        self.assertEqual({f.body for f in frames}, {b'{"heartbeat":{"time":"x"}}'})
        sent = [data for _, (data,) in clients]
        kept = sum(1 for a, b in zip(sent[:len(ids)], sent[len(ids):], strict=True) if a is b)
        self.assertEqual(kept, _MAX_KEPT_FRAMES)


class FootprintTests(SynchronousTestCase):
    """
    An idle session's memory: every one of 10,000 idle sessions pays for its attributes.
    """

    def test_attributes_share_their_keys(self) -> None:
        """
        A connected session, subscribed and in a transaction, has fewer instance attributes
        than CPython keeps in a dictionary whose keys are shared between the instances of a
        class (30 in 3.11 and 3.12): past that, each session gets a whole dictionary of its
        own, about 1.3 KiB more per session (what ``benchmarks/idle.py`` showed). Further
        state belongs on an object the session already holds, or in a property.
        """
        client = Client(make_services())
        client.connect()
        client.send("SUBSCRIBE", {"id": "s", "destination": HEARTBEAT_TOPIC})
        client.send("BEGIN", {"transaction": "t"})
        sessions = [v for v in vars(client.protocol).values() if type(v).__name__ == "StompSession"]
        self.assertEqual(len(sessions), 1)
        self.assertLess(len(vars(sessions[0])), 30, sorted(vars(sessions[0])))
