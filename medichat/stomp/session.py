"""
The STOMP server session: one state machine per connection, carried by anything that can
send bytes (L{medichat.interfaces.ICarrier}): a WebSocket or a TCP stream.

STOMP (1.0, 1.1, 1.2) in one paragraph: the client opens with C{CONNECT} (or C{STOMP}),
naming the versions it accepts and its heart-beat wishes; the server answers C{CONNECTED}
with the chosen version and its own heart-beat settings.  The client then C{SUBSCRIBE}s to
destinations by a subscription C{id}, C{SEND}s to destinations, acknowledges messages
(C{ACK}/C{NACK}), groups sends into transactions (C{BEGIN}/C{COMMIT}/C{ABORT}) and ends
with C{DISCONNECT}.  Any frame with a C{receipt} header is answered with C{RECEIPT}.  The
server delivers C{MESSAGE} frames, and on any error sends C{ERROR} and closes.  Between
frames either side may send a bare end-of-line as a heart-beat.

Frames are handled strictly one at a time: when a frame needs the store (authentication, a
participant check) the frames after it wait, so receipts and errors keep their order.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import define, field, frozen
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from medichat import __version__
from medichat._ratelimit import TokenBuckets
from medichat._timers import Timer, TimerWheel
from medichat.auth.credentials import authenticate, credentials_from_stomp
from medichat.errors import AuthenticationFailed, DomainError, StoreUnavailable
from medichat.interfaces import ICarrier, IConversations, IHub, IPresence, ISubscriber
from medichat.model import User
from medichat.pubsub.hub import Publication, encode_event
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC, TOPIC_PREFIX
from medichat.stomp.codec import (
    Frame,
    FrameError,
    FrameParser,
    FrameTooLarge,
    Limits,
    encode_frame,
    escape_header,
)
from medichat.stomp.counters import StompCounters
from medichat.stomp.destinations import Route, route_send, route_subscription
from medichat.stomp.linger import Lingering
from medichat.stomp.registry import SessionRegistry

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")

# WebSocket close codes used when a session ends.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


def is_error_close(code: int) -> bool:
    """
    Whether a session closes its connection with C{code} because of an C{ERROR} (what the
    client sent, its credentials, a limit, or a failure): any code but normal (1000,
    after C{DISCONNECT}) and going away (1001, at shutdown).
    """
    return code not in (CLOSE_NORMAL, CLOSE_GOING_AWAY)
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


@define(frozen=True)
class StompConfig:
    """
    Tunables of STOMP sessions; defaults are those of SPEC section 6.

    @ivar heartbeat: the server's C{(cx, cy)} in milliseconds: the interval at which it can
        send heart-beats, and the one at which it wants to receive them.
    @ivar grace: a client is dropped after C{grace} times the negotiated receive interval
        without a byte (browsers throttle timers in background tabs, so be generous).
    @ivar preauth_limits: the smaller frame budget before the session is authenticated.
    @ivar max_transaction_bytes: bytes a session's open transactions may hold together
        (what COMMIT needs: the destinations of their SENDs).
    @ivar max_sessions_per_user: live sessions one user may hold in this process.
    @ivar send_rate: SEND frames a user may send per second on average, across all of
        their sessions.
    @ivar send_burst: and in one burst.
    @ivar ack_rate: ACK and NACK frames a user may send per second on average, across all
        of their sessions (a bucket of their own: clients acknowledge what they receive,
        which has nothing to do with what they send).
    @ivar ack_burst: and in one burst.
    @ivar subscribe_rate: SUBSCRIBE and UNSUBSCRIBE frames a user may send per second on
        average, across all of their sessions (each may publish presence to everyone
        watching a conversation).
    @ivar subscribe_burst: and in one burst (a dashboard subscribes to many conversations
        when it opens).
    @ivar max_pending_frames: frames queued behind one that awaits the store; more is a
        flood.
    @ivar revalidate_interval: seconds between re-checks of a cookie-authenticated
        session's login session, so that logout, a password change or disablement (from
        any process) ends it, and its sliding expiry follows.
    @ivar max_replay: the most stored events one C{x-stream-offset} SUBSCRIBE replays: a
        start further back moves up to the newest C{max_replay} (the client sees the
        jump in the offsets, as with a RabbitMQ stream's retention).
    @ivar replay_page: events read from the store at once while replaying.
    @ivar replay_page_bytes: bytes of C{MESSAGE} frames sent before the next read, so
        that a replay of large messages reaches the socket a page at a time.
    @ivar error_close_delay: seconds a carrier keeps a connection that an C{ERROR} ended
        open, reading nothing, before it closes it (L{medichat.stomp.linger}); 0 closes
        at once.
    """

    limits: Limits = Limits()
    preauth_limits: Limits = Limits(max_frame_bytes=16384, max_headers=32, max_header_line=8192)
    heartbeat: tuple[int, int] = (10000, 10000)
    grace: float = 3.0
    connect_timeout: float = 10.0
    max_subscriptions: int = 1000
    max_transactions: int = 10
    max_transaction_frames: int = 100
    max_transaction_bytes: int = 256 * 1024
    max_sessions_per_user: int = 20
    send_rate: float = 20.0
    send_burst: float = 40.0
    ack_rate: float = 100.0
    ack_burst: float = 200.0
    subscribe_rate: float = 10.0
    subscribe_burst: float = 200.0
    max_pending_frames: int = 100
    revalidate_interval: float = 30.0
    max_replay: int = 10000
    replay_page: int = 100
    replay_page_bytes: int = 256 * 1024
    server_name: str = f"medichat/{__version__}"
    error_close_delay: float = 0.0


@frozen
class UserRateLimits:
    """
    Per-user rate limits of STOMP frames, shared by every session of a user in this
    process (a user who opens more connections gets no more throughput): token buckets,
    each keyed by user id.

    @ivar send: C{SEND} frames.
    @ivar ack: C{ACK} and C{NACK} frames.
    @ivar subscribe: C{SUBSCRIBE} and C{UNSUBSCRIBE} frames (each may publish presence to
        everyone watching a conversation).
    """

    send: TokenBuckets
    ack: TokenBuckets
    subscribe: TokenBuckets


@define
class StompServices:
    """
    What sessions share: the hub, presence, authentication, the conversations, the
    registry of live sessions, time, and the per-user rate limits.

    @ivar wheel: the timers of every session; made on C{clock} when not given.
    @ivar counters: what the sessions have done, for metrics.
    @ivar lingering: the connections an C{ERROR} ended, held before their close
        (L{medichat.stomp.linger}); made on C{clock} with the config's delay when not given.
    """

    hub: IHub
    presence: IPresence
    portal: Portal
    clock: IReactorTime
    conversations: IConversations
    registry: SessionRegistry = field(factory=SessionRegistry)
    wheel: TimerWheel = field(default=None)
    config: StompConfig = StompConfig()
    rates: UserRateLimits = field(default=None)
    counters: StompCounters = field(factory=StompCounters)
    lingering: Lingering = field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.rates is None:
            config = self.config
            self.rates = UserRateLimits(
                send=TokenBuckets.per_second(config.send_rate, config.send_burst),
                ack=TokenBuckets.per_second(config.ack_rate, config.ack_burst),
                subscribe=TokenBuckets.per_second(config.subscribe_rate, config.subscribe_burst),
            )
        if self.wheel is None:
            self.wheel = TimerWheel(self.clock)
        if self.lingering is None:
            self.lingering = Lingering(self.clock, self.config.error_close_delay)


class StompError(Exception):
    """
    A protocol error: the session sends C{ERROR} with this message and closes.

    @ivar reason: what the error is counted as (L{StompCounters.errors}): a fixed name,
        the message unless that carries more than the kind of error.
    """

    def __init__(
        self,
        message: str,
        detail: str = "",
        code: int = CLOSE_PROTOCOL_ERROR,
        headers: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = message if reason is None else reason
        self.detail = detail
        self.code = code
        self.headers = headers


@implementer(ISubscriber)
class _Subscription:
    """
    One SUBSCRIBE of one session.
    """

    __slots__ = (
        "session", "id", "id_bytes", "key", "route", "ack", "held", "floor", "__weakref__"
    )

    def __init__(self, session: StompSession, sub_id: str, route: Route, ack: str) -> None:
        self.session = session
        self.id = sub_id
        self.id_bytes = escape_header(sub_id, session.version).encode("utf-8")
        # Which of a publication's MESSAGE frames this subscription gets (L{_Encoded}): the
        # frames differ by subscription id, and by the ack header that STOMP 1.2 clients
        # acknowledging by hand need.
        self.key: bytes | tuple[bytes] = (
            self.id_bytes if ack == "auto" or session.version != "1.2" else (self.id_bytes,)
        )
        self.route = route
        self.ack = ack
        # While stored events are replayed: the live publications that arrived meanwhile.
        self.held: list[Publication] | None = None
        # The last offset replayed: a live publication of it (or before) is a duplicate.
        self.floor = 0

    def deliver(self, publication: Publication) -> None:
        # The hub calls this once per subscriber of every publication (and the session
        # for what it held while replaying, or its own publications): hold it while
        # stored events are replayed, drop what the replay sent, else send it.
        held = self.held
        if held is not None:
            held.append(publication)
            return
        offset = publication.offset
        if offset is not None and offset <= self.floor:
            return  # replayed already (this process's feed was behind the store)
        self.session._send_publication(self, publication)


class _Transaction:
    """
    What an open transaction holds: the destinations of its C{SEND}s, in order, which is
    all C{COMMIT} needs (typing SENDs have empty bodies).  C{ACK}/C{NACK} frames change
    nothing here, so they are only counted.

    @ivar frames: how many frames the transaction has taken.
    @ivar held: the bytes it holds, as counted against C{max_transaction_bytes}.
    """

    __slots__ = ("sends", "frames", "held")

    def __init__(self) -> None:
        self.sends: list[str] = []
        self.frames = 0
        self.held = 0


# What holding one SEND in a transaction costs besides its destination's bytes: the list
# slot and the string object.
_HELD_SEND_OVERHEAD = 64


# A publication's frames kept for more subscription ids than this are built per delivery.
_MAX_KEPT_FRAMES = 32


class _Encoded(dict):  # type: ignore[type-arg]
    """
    What a publication's C{MESSAGE} frames share, kept on it (L{Publication.encoded}) by
    its first subscriber for the others: the bytes before the subscription id (from the
    command to C{subscription:}, with C{x-stream-offset} for a durable conversation event)
    and after it (the blank line, body and NUL); and, by L{_Subscription.key}, the whole
    frames already made, up to L{_MAX_KEPT_FRAMES} of them.  Subscribers that share an id
    (C{sub-0}, the first subscription of every @stomp/stompjs client) share one frame
    object, which their carriers may recognise (the WebSocket carrier frames it once).
    """

    __slots__ = ("head", "tail", "ack")

    def __init__(self, publication: Publication) -> None:
        super().__init__()
        body = publication.body
        # Destinations and message ids never contain characters that STOMP 1.1/1.2 escape
        # (the router only accepts fixed names and UUIDs), so these bytes serve all versions.
        head = (
            b"MESSAGE\ndestination:%s\nmessage-id:%s\ncontent-type:application/json\n"
            b"content-length:%d\n"
            % (
                publication.destination.encode("utf-8"),
                publication.message_id.encode("ascii"),
                len(body),
            )
        )
        if publication.offset is not None:
            # A durable conversation event: its place in the conversation's stream.
            head += b"x-stream-offset:%d\n" % publication.offset
        self.head = head + b"subscription:"
        self.tail = b"\n\n" + body + b"\x00"
        # STOMP 1.2 clients acknowledge by the MESSAGE's ack header.
        self.ack = b"\nack:" + publication.message_id.encode("ascii")

    def frame(self, subscription: _Subscription) -> bytes:
        """The frame for C{subscription}, made and kept if it was not yet."""
        key = subscription.key
        if isinstance(key, tuple):
            data = self.head + subscription.id_bytes + self.ack + self.tail
        else:
            data = self.head + key + self.tail
        if len(self) < _MAX_KEPT_FRAMES:
            self[key] = data
        return data


def _message_parts(publication: Publication) -> _Encoded:
    """
    Encode what a publication's C{MESSAGE} frames share and keep it on the publication
    (L{Publication.encoded}) for its other subscribers.
    """
    encoded = publication.encoded = _Encoded(publication)
    return encoded


_AWAITING_CONNECT = 0
_CONNECTING = 1
_CONNECTED = 2
_CLOSED = 3

_ACK_MODES = ("auto", "client", "client-individual")


class StompSession:
    """
    The server side of one STOMP connection.

    The carrier calls L{connection_made}, then L{data_received} with whatever bytes arrive
    (in any chunking), and L{connection_lost} at the end.

    @param credentials: from the carrier's handshake, used when C{CONNECT} brings none; an
        L{AuthenticationFailed} if the handshake's were malformed.
    @param peer: the client's address, for logs.
    @param address: the client's IP address for the access log: the connection's peer, or
        behind a trusted proxy the one it forwarded (the carrier decides); L{None} when
        unknown.  It is set on the session's L{User} (C{address}).

    @ivar user: the authenticated user, once C{CONNECT} has been accepted.
    @ivar version: the negotiated STOMP version (C{"1.2"} until negotiated).
    @ivar carrier_kind: what carries the session (the carrier's C{carrier_kind}:
        C{"websocket"}, C{"tcp"}), for metrics.
    """

    # What every delivery reads and writes (L{_send_publication}) lives in slots, at
    # fixed places in the object, the rest in its __dict__: a fan-out reaches thousands
    # of sessions, and there a look-up in each one's dict is a cache miss of its own
    # (docs/benchmarks.md, seventeenth session on issue 10).
    __slots__ = ("_state", "_clock", "_services", "_carrier_send", "_last_write",
                 "__dict__", "__weakref__")

    _log = Logger()

    # Derived rather than stored: an instance with 30 attributes or more no longer shares
    # its dictionary's keys with the other sessions, about 1.3 KiB more for each idle one.

    @property
    def carrier_kind(self) -> str:
        return getattr(self._carrier, "carrier_kind", "other")  # type: ignore[no-any-return]

    @property
    def _counters(self) -> StompCounters:
        return self._services.counters

    def __init__(
        self,
        carrier: ICarrier,
        services: StompServices,
        *,
        credentials: object | None = None,
        peer: str = "",
        address: str | None = None,
    ) -> None:
        self._carrier = carrier
        # Bound once: looking C{send} up on a carrier at each delivery is a probe of its
        # __dict__ (Autobahn's protocols have some 150 attributes).
        self._carrier_send = carrier.send
        self._services = services
        # Why the session ends (one of CLOSE_CAUSES), set by whatever ends it first; and
        # whether it is counted among the open ones.
        self._cause: str | None = None
        self._live = False
        self._config = services.config
        self._clock = services.clock
        self._handshake_credentials = credentials
        self._credentials: object | None = None
        self.peer = peer
        self.address = address
        self.session_id = os.urandom(8).hex()
        self.user: User | None = None
        self.version = "1.2"
        self._state = _AWAITING_CONNECT
        self._parser = FrameParser(self._config.preauth_limits)
        self._queue: deque[Frame] = deque()
        self._busy = False
        self._pumping = False
        self._subscriptions: dict[str, _Subscription] = {}
        self._transactions: dict[str, _Transaction] = {}
        self._transaction_bytes = 0
        self._timers: list[Timer] = []
        now = self._clock.seconds()
        self._last_read = now
        self._last_write = now
        self._send_every = 0.0
        self._expect_every = 0.0
        self._present = False
        self._own_messages = 0

    # ---------------------------------------------------------------- carrier interface

    def connection_made(self) -> None:
        """
        The connection is open: start the CONNECT timeout.
        """
        self._timers.append(
            self._services.wheel.call_later(self._config.connect_timeout, self._connect_timeout)
        )

    def data_received(self, data: bytes) -> None:
        """
        Bytes arrived (any inbound byte counts as life).
        """
        if self._state == _CLOSED:
            return
        self._last_read = self._clock.seconds()
        try:
            frames = self._parser.feed(data)
        except FrameError as e:
            if isinstance(e, FrameTooLarge):
                self._fail(StompError(e.message, code=CLOSE_TOO_BIG, reason="frame too large"),
                           None)
            else:
                self._fail(StompError(e.message, reason="malformed frame"), None)
            return
        if not frames:
            return
        self._queue.extend(frames)
        self._pump()
        # Only frames left waiting behind a store call are in flight; a burst that could be
        # handled at once has been.
        if self._busy and len(self._queue) > self._config.max_pending_frames:
            self._fail(StompError("too many frames in flight", code=CLOSE_POLICY), None)

    def between_frames(self) -> bool:
        """
        Whether the inbound stream is between frames, so that a lone EOL is a heart-beat
        (a carrier that recognises heart-beats itself must ask first).
        """
        return self._parser.between_frames

    def heartbeat_received(self) -> None:
        """
        The carrier saw a heart-beat and consumed it itself: note the sign of life.
        """
        self._last_read = self._clock.seconds()

    @property
    def heartbeats_expected(self) -> bool:
        """
        Whether the client promised heart-beats, so that its silence ends the session (a
        carrier probes the liveness of the other sessions itself).
        """
        return self._expect_every > 0

    def connection_lost(self, reason: str = "", cause: str = "disconnect") -> None:
        """
        The connection is gone: release subscriptions, presence and timers.

        @param cause: why, when the carrier knows better than "the client went"
            (C{"slow_consumer"}, C{"heartbeat_timeout"}): see L{CLOSE_CAUSES}.
        """
        if self._cause is None:
            self._cause = cause
        if self._state == _CLOSED:
            self._cleanup()
            return
        self._log.debug(
            "session {session} closed: {reason}", session=self.session_id, reason=reason
        )
        self._state = _CLOSED
        self._cleanup()

    def end(self, message: str, detail: str = "", cause: str = "revoked") -> None:
        """
        End the session from the server side with an C{ERROR} (credential expired, login
        session revoked, server shutting down).

        @param cause: why, as counted (see L{CLOSE_CAUSES}).
        """
        if self._state == _CLOSED:
            return
        self._fail(StompError(message, detail, code=CLOSE_POLICY), None, cause)

    def shutdown(self) -> None:
        """
        End the session because the server is stopping (WebSocket close code 1001).
        """
        if self._state == _CLOSED:
            return
        self._fail(StompError("server shutting down", code=CLOSE_GOING_AWAY), None, "shutdown")

    # ---------------------------------------------------------------- delivery

    def _send_publication(self, subscription: _Subscription, publication: Publication) -> None:
        # Once per subscriber of every publication: kept to a few lookups.
        if self._state != _CONNECTED:
            return
        encoded = publication.encoded
        if encoded is None:
            # The first subscriber encodes for all (hub-wide "encode once").
            encoded = _message_parts(publication)
        data = encoded.get(subscription.key)
        if data is None:
            data = encoded.frame(subscription)
        self._last_write = self._clock.seconds()
        self._services.counters.bytes_sent += len(data)
        self._carrier_send(data)

    # ---------------------------------------------------------------- frame pump

    def _pump(self) -> None:
        # Not re-entrant: a handler's Deferred that has already fired resumes the loop
        # below instead of recursing, however many frames are pipelined.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and not self._busy and self._state != _CLOSED:
                frame = self._queue.popleft()
                try:
                    result = self._dispatch(frame)
                except Exception:
                    self._handled_error(Failure(), frame)
                    continue
                if isinstance(result, Deferred):
                    self._busy = True
                    result.addCallbacks(self._resume, self._resume_after_error,
                                        callbackArgs=(frame,), errbackArgs=(frame,))
        finally:
            self._pumping = False

    def _resume(self, _: object, frame: Frame) -> None:
        self._busy = False
        self._receipt(frame)
        self._pump()

    def _resume_after_error(self, failure: Failure, frame: Frame) -> None:
        self._busy = False
        self._handled_error(failure, frame)
        self._pump()

    def _handled_error(self, failure: Failure, frame: Frame | None) -> None:
        error = failure.value
        if isinstance(error, StompError):
            self._fail(error, frame)
        elif isinstance(error, AuthenticationFailed):
            self._fail(
                StompError(error.reason, code=CLOSE_POLICY, reason="authentication failed"),
                frame,
            )
        elif isinstance(error, DomainError):
            self._fail(StompError(error.title.lower(), error.detail, CLOSE_POLICY), frame)
        elif isinstance(error, StoreUnavailable):
            # An outage, logged once by the store: no traceback per frame.
            self._fail(
                StompError(
                    "service unavailable",
                    "the store cannot serve now; reconnect shortly",
                    CLOSE_TRY_AGAIN_LATER,
                ),
                frame,
            )
        else:
            self._log.failure(
                "error handling {command} in session {session}",
                failure,
                command=frame.command if frame else "?",
                session=self.session_id,
            )
            self._fail(StompError("internal server error", code=CLOSE_SERVER_ERROR), frame)

    def _dispatch(self, frame: Frame) -> Deferred[Any] | None:
        command = frame.command
        # The parser accepts only STOMP's commands: a fixed set of keys.
        self._counters.frames_received[command] += 1
        if self._state == _AWAITING_CONNECT:
            if command in ("CONNECT", "STOMP"):
                return self._on_connect(frame)
            raise StompError("expected CONNECT", f"received {command} before CONNECT")
        if command in ("CONNECT", "STOMP"):
            raise StompError("already connected")
        handler = self._handlers.get(command)
        if handler is None:
            raise StompError(f"unexpected frame {command}")
        if frame.body and command != "SEND":
            # STOMP 1.2: only SEND, MESSAGE and ERROR frames may have a body.  Refusing it
            # here keeps a client from making the server read and hold bodies for nothing.
            raise StompError("frame must not have a body", f"{command} frames carry no body")
        result = handler(self, frame)
        if not isinstance(result, Deferred):
            self._receipt(frame)
        return result

    def _receipt(self, frame: Frame) -> None:
        if frame.command in ("CONNECT", "STOMP", "DISCONNECT") or self._state != _CONNECTED:
            return
        receipt = frame.get("receipt")
        if receipt is not None:
            self._send_frame("RECEIPT", [("receipt-id", receipt)])

    # ---------------------------------------------------------------- CONNECT

    def _on_connect(self, frame: Frame) -> Deferred[None]:
        accepted = frame.get("accept-version")
        offered = [v.strip() for v in accepted.split(",")] if accepted else ["1.0"]
        common = [v for v in SUPPORTED_VERSIONS if v in offered]
        if not common:
            supported = ",".join(SUPPORTED_VERSIONS)
            raise StompError(
                "unsupported STOMP version",
                f"Supported protocol versions are {supported}",
                headers=(("version", supported),),
            )
        version = common[-1]
        # Frames pipelined behind CONNECT are read with the chosen version's escaping.
        self._parser.version = version
        client_hb = (0, 0)
        if version != "1.0":
            client_hb = _parse_heartbeat(frame.get("heart-beat"))
        credentials = credentials_from_stomp(frame.get_ci) or self._handshake_credentials
        if credentials is None:
            raise StompError("missing credentials", code=CLOSE_POLICY)
        if isinstance(credentials, AuthenticationFailed):
            raise credentials
        self._state = _CONNECTING
        self._credentials = credentials
        d: Deferred[Any] = authenticate(self._services.portal, credentials)
        d.addCallback(self._connected, version, client_hb)
        return d

    def _connected(
        self, user: User, version: str, client_hb: tuple[int, int]
    ) -> Deferred[None] | None:
        if self._state == _CLOSED:
            return None
        now = self._clock.seconds()
        if user.expires_at is not None and user.expires_at <= now * 1_000_000:
            raise StompError("credential expired", code=CLOSE_POLICY)
        most = self._config.max_sessions_per_user
        if self._services.registry.session_count(user.user_id) >= most:
            raise StompError("too many sessions", f"at most {most} live sessions per user",
                             CLOSE_POLICY)
        self.user = user.at(self.address)
        self.version = version
        self._parser.limits = self._config.limits
        self._state = _CONNECTED
        self._cleanup_timers()  # the CONNECT timeout
        sx, sy = self._config.heartbeat
        cx, cy = client_hb
        self._send_every = 0.0 if (sx == 0 or cy == 0) else max(sx, cy) / 1000.0
        self._expect_every = 0.0 if (cx == 0 or sy == 0) else max(cx, sy) / 1000.0
        headers = [
            ("version", version),
            ("heart-beat", f"{sx},{sy}"),
            ("server", self._config.server_name),
            ("session", self.session_id),
            ("user-name", user.user_id),
        ]
        self._send_frame("CONNECTED", headers)
        wheel = self._services.wheel
        if self._send_every:
            self._timers.append(wheel.call_at(now + self._send_every, self._heartbeat_due))
        if self._expect_every:
            self._timers.append(
                wheel.call_at(now + self._expect_every * self._config.grace, self._read_due)
            )
        if user.expires_at is not None:
            self._timers.append(wheel.call_at(user.expires_at / 1_000_000, self._expired))
        if user.session_id is not None:
            self._timers.append(
                wheel.call_later(self._config.revalidate_interval, self._revalidate)
            )
        else:
            self._credentials = None
        self._services.registry.add(self)
        self._live = True
        self._counters.opened += 1
        self._log.info(
            "session {session} connected: user {user_id} ({role}) STOMP {version} from {peer}",
            session=self.session_id,
            user_id=user.user_id,
            role=user.user_role,
            version=version,
            peer=self.peer,
        )
        self._present = True
        return self._services.presence.session_opened(
            self.session_id, user.user_id, user.is_employee
        )

    # ---------------------------------------------------------------- commands

    def _on_subscribe(self, frame: Frame) -> Deferred[None] | None:
        self._take(self._services.rates.subscribe, "SUBSCRIBE/UNSUBSCRIBE")
        sub_id = _required(frame, "id")
        destination = _required(frame, "destination")
        if sub_id in self._subscriptions:
            raise StompError("duplicate subscription id", f"subscription {sub_id!r} exists")
        if len(self._subscriptions) >= self._config.max_subscriptions:
            raise StompError(
                "too many subscriptions",
                f"at most {self._config.max_subscriptions} per session",
                CLOSE_POLICY,
            )
        ack = frame.get("ack", "auto") or "auto"
        if ack not in _ACK_MODES:
            raise StompError("invalid ack mode", f"ack must be one of {', '.join(_ACK_MODES)}")
        route = route_subscription(destination)
        if route is None:
            raise StompError("unknown destination", destination)
        for existing in self._subscriptions.values():
            if existing.route.destination == route.destination:
                raise StompError(
                    "duplicate subscription",
                    f"{route.destination} is already subscribed as {existing.id!r}",
                    CLOSE_POLICY,
                )
        if route.kind == "conversations" and not (self.user and self.user.is_employee):
            raise StompError(
                "forbidden", f"only employees may subscribe to {route.destination}", CLOSE_POLICY
            )
        if route.kind == "conversation":
            assert self.user is not None and route.conversation_id is not None
            # Only conversations are streams; elsewhere the header means nothing.
            start = _parse_stream_offset(frame.get("x-stream-offset"))
            d = self._services.conversations.subscribe(self.user, route.conversation_id)
            d.addCallback(lambda _: self._subscribe(sub_id, route, ack, start))
            return d
        return self._subscribe(sub_id, route, ack, None)

    def _subscribe(
        self, sub_id: str, route: Route, ack: str, start: _StreamStart | None
    ) -> Deferred[None] | None:
        if self._state != _CONNECTED:
            return None
        subscription = _Subscription(self, sub_id, route, ack)
        self._subscriptions[sub_id] = subscription
        if start is not None:
            # Live first, held, so that nothing committed during the replay is missed.
            subscription.held = []
        self._services.hub.subscribe(route.destination, subscription)
        presence = self._services.presence
        if route.kind == "online-employees":
            # The new subscriber learns the current value at once; the others only changes.
            online = presence.online_employees()
            return online.addCallback(self._deliver_online, subscription)
        if route.kind == "conversation":
            assert route.conversation_id is not None
            joined = presence.joined(self.session_id, route.conversation_id)
            if start is None:
                return joined
            conversation_id = route.conversation_id
            return joined.addCallback(
                lambda _: Deferred.fromCoroutine(
                    self._replay(subscription, conversation_id, start)
                )
            )
        return None

    async def _replay(
        self, subscription: _Subscription, conversation_id: str, start: _StreamStart
    ) -> None:
        """
        Send the conversation's stored events from C{start} on, a page at a time, then the
        live ones held meanwhile that the replay did not cover, and go live.

        Live publications of a durable event carry its offset, and a conversation's events
        reach the hub in offset order, so whatever was committed after the replay's last
        read is held (or published later), and whatever the replay sent is recognised by
        its offset, now or later (L{_Subscription.floor}).
        """
        conversations = self._services.conversations
        config = self._config
        offset, since = start
        begin = await conversations.stream_start(
            conversation_id, offset, since, config.max_replay
        )
        last = begin - 1
        destination = subscription.route.destination
        while True:
            if self._subscriptions.get(subscription.id) is not subscription:
                return  # the session ended meanwhile
            page = await conversations.stream_events(conversation_id, last + 1, config.replay_page)
            sent = 0
            for event in page:
                if self._subscriptions.get(subscription.id) is not subscription:
                    return
                last = event.offset
                body = event.body.encode("utf-8")
                self._counters.frames_sent["MESSAGE"] += 1
                self._send_publication(
                    subscription,
                    Publication(
                        destination,
                        body,
                        self._own_message_id(),
                        event.offset,
                    ),
                )
                sent += len(body)
                if sent >= config.replay_page_bytes:
                    break
            else:
                if len(page) < config.replay_page:
                    break
        subscription.floor = last
        held, subscription.held = subscription.held or [], None
        for publication in held:
            subscription.deliver(publication)

    def _own_message_id(self) -> str:
        # The session's own publications (a replay, the current online count) are unique
        # by its id and a count; an int per idle session costs less than a counter object.
        self._own_messages += 1
        return f"{self.session_id}-{self._own_messages}"

    def _deliver_online(self, online: int, subscription: _Subscription) -> None:
        if self._subscriptions.get(subscription.id) is not subscription:
            return  # unsubscribed (or the session ended) meanwhile
        publication = Publication(
            ONLINE_EMPLOYEES_TOPIC,
            encode_event({"online": online}),
            self._own_message_id(),
        )
        self._counters.frames_sent["MESSAGE"] += 1
        subscription.deliver(publication)

    def _on_unsubscribe(self, frame: Frame) -> Deferred[None] | None:
        self._take(self._services.rates.subscribe, "SUBSCRIBE/UNSUBSCRIBE")
        sub_id = _required(frame, "id")
        subscription = self._subscriptions.pop(sub_id, None)
        if subscription is None:
            return None
        route = subscription.route
        self._services.hub.unsubscribe(route.destination, subscription)
        if route.kind == "conversation":
            assert route.conversation_id is not None
            return self._services.presence.left(self.session_id, route.conversation_id)
        return None

    def _on_send(self, frame: Frame) -> Deferred[None] | None:
        destination = _required(frame, "destination")
        self._take(self._services.rates.send, "SEND")
        transaction = frame.get("transaction")
        if transaction is not None:
            self._in_transaction(transaction, destination)
            return None
        return self._perform_send(destination)

    def _take(self, buckets: TokenBuckets, what: str) -> None:
        # One bucket per user, shared by all of their sessions.
        assert self.user is not None
        if buckets.take(self.user.user_id, self._clock.seconds()) is not None:
            raise StompError("rate limit exceeded", f"too many {what} frames", CLOSE_POLICY)

    def _perform_send(self, destination: str) -> Deferred[None] | None:
        if destination.startswith(TOPIC_PREFIX):
            raise StompError("cannot send to a topic", destination)
        route = route_send(destination)
        if route is None:
            raise StompError("unknown destination", destination)
        assert self.user is not None and route.conversation_id is not None
        return maybeDeferred(
            self._services.conversations.typing,
            self.user,
            route.conversation_id,
            bool(route.started),
        )

    def _on_ack(self, frame: Frame) -> None:
        if self.version == "1.2":
            _required(frame, "id")
        else:
            _required(frame, "message-id")
            if self.version == "1.1":
                _required(frame, "subscription")
        self._take(self._services.rates.ack, "ACK/NACK")
        transaction = frame.get("transaction")
        if transaction is not None:
            self._in_transaction(transaction, None)

    def _on_begin(self, frame: Frame) -> None:
        transaction = _required(frame, "transaction")
        if transaction in self._transactions:
            raise StompError("transaction already begun", transaction)
        if len(self._transactions) >= self._config.max_transactions:
            raise StompError("too many transactions", code=CLOSE_POLICY)
        self._transactions[transaction] = _Transaction()

    def _end_transaction(self, transaction: str) -> _Transaction:
        held = self._transactions.pop(transaction, None)
        if held is None:
            raise StompError("unknown transaction", transaction)
        self._transaction_bytes -= held.held
        return held

    def _on_commit(self, frame: Frame) -> Deferred[None] | None:
        transaction = _required(frame, "transaction")
        held = self._end_transaction(transaction)
        pending: list[Deferred[None]] = []
        for destination in held.sends:
            d = self._perform_send(destination)
            if d is not None:
                pending.append(d)
        if not pending:
            return None
        # The sends are independent events; wait for all so COMMIT's receipt means done.
        result: Deferred[Any] = gatherResults(pending, consumeErrors=True)
        result.addErrback(_first_failure)
        return result

    def _on_abort(self, frame: Frame) -> None:
        transaction = _required(frame, "transaction")
        self._end_transaction(transaction)

    def _on_disconnect(self, frame: Frame) -> None:
        receipt = frame.get("receipt")
        if receipt is not None:
            self._send_frame("RECEIPT", [("receipt-id", receipt)])
        self._queue.clear()
        if self._cause is None:
            self._cause = "disconnect"
        self._close(CLOSE_NORMAL, "client disconnected")

    def _in_transaction(self, transaction: str, destination: str | None) -> None:
        """
        Hold a frame in a transaction until COMMIT: a SEND's destination, or nothing but a
        count for an ACK/NACK (C{destination} L{None}).
        """
        held = self._transactions.get(transaction)
        if held is None:
            raise StompError("unknown transaction", transaction)
        if held.frames >= self._config.max_transaction_frames:
            raise StompError("transaction too large", code=CLOSE_POLICY)
        held.frames += 1
        if destination is None:
            return
        cost = _HELD_SEND_OVERHEAD + len(destination.encode("utf-8"))
        most = self._config.max_transaction_bytes
        if self._transaction_bytes + cost > most:
            raise StompError(
                "transactions too large",
                f"open transactions may hold at most {most} bytes",
                CLOSE_POLICY,
            )
        held.sends.append(destination)
        held.held += cost
        self._transaction_bytes += cost

    _handlers: dict[str, Callable[[StompSession, Frame], Any]] = {
        "SUBSCRIBE": _on_subscribe,
        "UNSUBSCRIBE": _on_unsubscribe,
        "SEND": _on_send,
        "ACK": _on_ack,
        "NACK": _on_ack,
        "BEGIN": _on_begin,
        "COMMIT": _on_commit,
        "ABORT": _on_abort,
        "DISCONNECT": _on_disconnect,
    }

    # ---------------------------------------------------------------- timers

    def _connect_timeout(self) -> None:
        if self._state in (_AWAITING_CONNECT, _CONNECTING):
            self._fail(StompError("CONNECT timeout", code=CLOSE_POLICY), None)

    def _heartbeat_due(self) -> None:
        if self._state != _CONNECTED:
            return
        now = self._clock.seconds()
        if now - self._last_write >= self._send_every - 0.5 * self._services.wheel.resolution:
            self._send_raw(b"\n")
        self._timers.append(
            self._services.wheel.call_at(self._last_write + self._send_every, self._heartbeat_due)
        )
        self._prune_timers()

    def _read_due(self) -> None:
        if self._state != _CONNECTED:
            return
        limit = self._expect_every * self._config.grace
        now = self._clock.seconds()
        if now - self._last_read >= limit:
            self._log.info(
                "session {session} silent for {seconds:.1f}s: dropped",
                session=self.session_id,
                seconds=now - self._last_read,
            )
            if self._cause is None:
                self._cause = "heartbeat_timeout"
            self._state = _CLOSED
            self._carrier.abort()
            self._cleanup()
            return
        self._timers.append(self._services.wheel.call_at(self._last_read + limit, self._read_due))
        self._prune_timers()

    def _expired(self) -> None:
        if self._state != _CONNECTED or self.user is None:
            return
        expires_at = self.user.expires_at
        if expires_at is not None and expires_at / 1_000_000 > self._clock.seconds():
            # A sliding login session moved its expiry on since this timer was set.
            self._timers.append(self._services.wheel.call_at(expires_at / 1e6, self._expired))
            return
        self.end("credential expired", cause="expired")

    def _revalidate(self) -> None:
        if self._state != _CONNECTED or self._credentials is None:
            return
        d = authenticate(self._services.portal, self._credentials)

        def valid(user: User) -> None:
            if self._state != _CONNECTED:
                return
            self.user = user.at(self.address)
            self._timers.append(
                self._services.wheel.call_later(self._config.revalidate_interval,
                                                self._revalidate)
            )
            self._prune_timers()

        def invalid(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, AuthenticationFailed):
                self.end(error.reason)
            else:
                # The store is unreachable: keep the session and try again later.
                self._log.failure("re-checking session {session} failed", failure,
                                  session=self.session_id)
                valid(self.user)  # type: ignore[arg-type]

        d.addCallbacks(valid, invalid)

    def _prune_timers(self) -> None:
        if len(self._timers) > 4:
            self._timers = [t for t in self._timers if t.active]

    # ---------------------------------------------------------------- output

    def _send_raw(self, data: bytes) -> None:
        self._last_write = self._clock.seconds()
        self._services.counters.bytes_sent += len(data)  # per send: no property call
        self._carrier.send(data)

    def _send_frame(self, command: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self._counters.frames_sent[command] += 1
        self._send_raw(_encode(command, headers, body, self.version))

    def _fail(self, error: StompError, frame: Frame | None, cause: str = "error") -> None:
        if self._state == _CLOSED:
            return
        counters = self._counters
        if self._state != _CONNECTED:
            counters.refused[error.reason] += 1
        elif self._cause is None:
            self._cause = cause
        counters.errors[error.reason] += 1
        counters.frames_sent["ERROR"] += 1
        headers = [("message", error.message), *error.headers, ("content-type", "text/plain")]
        if frame is not None:
            receipt = frame.get("receipt")
            if receipt is not None:
                headers.append(("receipt-id", receipt))
        body = (error.detail or error.message).encode("utf-8")
        self._log.info(
            "session {session} error: {error} ({detail})",
            session=self.session_id,
            # Not "message": legacy log observers take that key for their own.
            error=error.message,
            detail=error.detail,
        )
        self._send_raw(_encode("ERROR", headers, body, self.version))
        self._close(error.code, error.message)

    def _close(self, code: int, reason: str) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._queue.clear()
        self._cleanup()
        self._carrier.close(code, reason)

    def _cleanup_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    def _cleanup(self) -> None:
        self._cleanup_timers()
        if self._live:
            self._live = False
            self._counters.closed[self._cause or "disconnect"] += 1
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        self._transactions.clear()
        self._transaction_bytes = 0
        hub = self._services.hub
        for subscription in subscriptions:
            hub.unsubscribe(subscription.route.destination, subscription)
        self._services.registry.remove(self)
        if self._present:
            # Presence leaves the session's conversations and stops counting it online.
            self._present = False
            closed = self._services.presence.session_closed(self.session_id)
            closed.addErrback(
                lambda failure: self._log.failure(
                    "presence of session {session} not released", failure,
                    session=self.session_id,
                )
            )


def _first_failure(failure: Failure) -> Failure:
    # gatherResults wraps the first failure in FirstError; the edge wants the original.
    error = failure.value
    if isinstance(error, FirstError):
        sub: Failure = error.subFailure
        return sub
    return failure


def _encode(command: str, headers: list[tuple[str, str]], body: bytes, version: str) -> bytes:
    try:
        return encode_frame(command, headers, body, version=version)
    except ValueError:
        # A value echoed from the client (a receipt id, a destination in an error) that this
        # version cannot carry, such as a line break in STOMP 1.0: blank such characters.
        cleaned = [(name, _BLANK.sub(" ", value)) for name, value in headers]
        return encode_frame(command, cleaned, body, version=version)


_BLANK = re.compile(r"[\r\n\x00]")


def _required(frame: Frame, name: str) -> str:
    value = frame.get(name)
    if value is None or value == "":
        raise StompError(f"missing {name} header", f"{frame.command} needs a {name} header")
    return value


_StreamStart = tuple[int | None, int | None]
"""Where a replay starts: C{(offset, None)}, C{(None, since)} in microseconds, or
C{(None, None)} for the first stored event."""

_MAX_OFFSET = 2**63 - 1
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z
_DIGITS = re.compile(r"[0-9]{1,19}")


def _parse_stream_offset(value: str | None) -> _StreamStart | None:
    """
    Read a SUBSCRIBE's C{x-stream-offset} header (RabbitMQ's STOMP convention for
    streams): absent or C{next} (only new events: L{None}), C{first}, C{offset=N} (from
    offset N, inclusive) or C{timestamp=T} (from the first event at or after T, seconds
    since the epoch).

    @raise StompError: for anything else.
    """
    if value is None or value == "next":
        return None
    if value == "first":
        return (None, None)
    kind, equals, number = value.partition("=")
    if equals and _DIGITS.fullmatch(number):
        if kind == "offset" and int(number) <= _MAX_OFFSET:
            return (int(number), None)
        if kind == "timestamp" and int(number) <= _MAX_TIMESTAMP:
            return (None, int(number) * 1_000_000)
    raise StompError(
        "invalid x-stream-offset",
        "x-stream-offset must be next, first, offset=N or timestamp=T (seconds since the "
        "epoch)",
    )


_MAX_HEARTBEAT_MS = 2**31 - 1


def _parse_heartbeat(value: str | None) -> tuple[int, int]:
    if value is None or value == "":
        return (0, 0)
    parts = value.split(",")
    if len(parts) != 2:
        raise StompError("invalid heart-beat header", value)
    try:
        cx, cy = int(parts[0].strip()), int(parts[1].strip())
    except ValueError:
        raise StompError("invalid heart-beat header", value) from None
    # Bounded: the values become float seconds (past 308 digits, an OverflowError).
    if not (0 <= cx <= _MAX_HEARTBEAT_MS and 0 <= cy <= _MAX_HEARTBEAT_MS):
        raise StompError("invalid heart-beat header", value)
    return (cx, cy)
