"""
STOMP carried by WebSocket (Autobahn), at C{{base-path}/v1/chat}.

The handshake picks the highest STOMP sub-protocol the client offers (C{v12.stomp},
C{v11.stomp}, C{v10.stomp}; a client that offers none still gets STOMP), refuses foreign
C{Origin}s with 403, and collects credentials (a bearer header or the session cookie) for
the session to check at C{CONNECT}.  Inbound text and binary messages are fed to the
session as bytes, so several frames in one message and one frame over several both work;
each outbound frame is one text message.  The server sends the close frame; once the client
has answered it, the server closes TCP in order (RFC 6455 section 7.1.1).

What one connection may cost is bounded:

  - until C{CONNECT} is accepted a message may be no larger than a pre-auth STOMP frame
    (16 KiB), so Autobahn refuses a larger one (1009) from its header instead of
    buffering it; once C{CONNECTED}, the configured size applies;
  - each pong counts against the write budget like any frame, and pings beyond a rate end
    the session (C{ERROR} C{too many pings}, 1008);
  - a session whose client promised no heart-beats is sent a ping every
    C{ping_interval} seconds and dropped when one goes unanswered for an interval;
  - once the session has ended and the close frame is out, further data frames are
    discarded unread (no UTF-8 check, no buffering) until the client's close arrives; a
    client that sends more than L{DISCARD_LIMIT} bytes of them meanwhile is not closing
    and is dropped at once, rather than read until the close handshake times out.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.logger import Logger
from zope.interface import implementer

from medichat._connections import raw_transport
from medichat._ratelimit import TokenBucket
from medichat._timers import Timer
from medichat._writebatch import write_batch
from medichat.auth.credentials import handshake_credentials
from medichat.carriers._budget import DEFAULT_MAX_BUFFER, WriteBudget
from medichat.carriers._fastpath import (
    FastPaths,
    copy_config,
    frame_header,
    is_client_heartbeat,
    is_pong,
    send_now,
    socket_of,
    timers_on_wheel,
)
from medichat.http.forwarded import Network, forwarded_client
from medichat.http.origins import OriginPolicy
from medichat.interfaces import ICarrier
from medichat.stomp.session import StompServices, StompSession, is_error_close

SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")

#: The payload of the server's liveness pings.
PROBE = b"medichat"

#: The whole ping frame (final, opcode 9, unmasked), as the fast paths send it.
_PROBE_FRAME = bytes((0x89, len(PROBE))) + PROBE

#: Bytes of data frames a client may still send after the server's close frame (what it
#: had in flight) before it is dropped.
DISCARD_LIMIT = 64 * 1024

#: Bytes of a frame header of a control frame (payload up to 125 bytes, unmasked).
_CONTROL_HEADER = 2


def handshake_address(
    peer: Any, headers: dict[str, str], trusted: tuple[Network, ...]
) -> str | None:
    """
    The client's address of a WebSocket handshake, as for an HTTP request
    (L{medichat.http.forwarded}): the peer's IP, or behind a trusted proxy the one its
    C{Forwarded} / C{X-Forwarded-For} header names.  L{None} for a peer without an IP
    (a UNIX socket).
    """
    host = getattr(peer, "host", None)
    if host is None:
        return None
    if not trusted:
        return str(host)
    forwarded = headers.get("forwarded")
    x_forwarded_for = headers.get("x-forwarded-for")
    return forwarded_client(
        str(host),
        [forwarded] if forwarded is not None else [],
        [x_forwarded_for] if x_forwarded_for is not None else [],
        trusted,
    )


# The payload that the carrier framed last and its frame (see StompWebSocketProtocol.send).
# It keeps one frame alive between deliveries; the first slot starts as an object no
# payload can be.
_last_framed: list[Any] = [object(), b""]


@implementer(ICarrier)
class StompWebSocketProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection carrying one L{StompSession}.
    """

    factory: StompWebSocketFactory
    transport: Any
    carrier_kind = "websocket"
    # What every delivery reads (L{send}) lives in slots, at fixed places in the object,
    # rather than in its __dict__: Autobahn gives a protocol some 150 attributes, and a
    # look-up in a dict that large is a cache miss of its own on each of thousands of
    # connections a publication reaches.  Autobahn's own C{state} too (its writes land in
    # the slot).
    __slots__ = ("state", "_session", "_budget", "_socket", "_raw", "_own_frames",
                 "_authenticated")
    _credentials: object | None = None
    _heartbeats = False
    _pings: TokenBucket | None = None
    _probe: Timer | None = None
    _ping_unanswered = False
    _ping_timed_out = False
    _discarding = False
    _discarded = 0
    _address: str | None = None

    def __init__(self) -> None:
        # Autobahn sets it as the connection opens; until then, not open.
        self.state = WebSocketServerProtocol.STATE_CLOSED
        self._session: StompSession | None = None
        self._budget: WriteBudget | None = None
        self._socket: Any = None
        self._raw: Any = None
        self._own_frames = False
        self._authenticated = False
        super().__init__()

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.fast_paths.quiet_open:
            copy_config(self, factory)
        super().connectionMade()
        # Autobahn resolves is_closed with the protocol itself, so every closed connection
        # would be a reference cycle (protocol, its Deferred, the protocol) holding the
        # whole connection for the collector; nothing here uses that result.
        self.is_closed.addBoth(_forget)
        # Until CONNECT is accepted a message may be no larger than a pre-auth STOMP frame.
        self.maxMessagePayloadSize = factory.preauth_message
        self.maxFramePayloadSize = factory.preauth_message

    def onConnect(self, request: ConnectionRequest) -> str | None:
        factory = self.factory
        headers = request.headers
        secure = ISSLTransport.providedBy(self.transport)
        if not factory.origins.is_allowed(
            headers.get("origin"), scheme="https" if secure else "http",
            host_header=headers.get("host"),
        ):
            factory._log.info(
                "refused WebSocket from {peer}: origin {origin} not allowed",
                peer=request.peer,
                origin=headers.get("origin"),
            )
            factory.services.counters.refused["origin not allowed"] += 1
            raise ConnectionDeny(403, "origin not allowed")
        self._credentials = handshake_credentials(headers)
        self._address = handshake_address(
            self.transport.getPeer(), headers, factory.trusted_proxies
        )
        for protocol in SUBPROTOCOLS:
            if protocol in request.protocols:
                return protocol
        return None

    def onOpen(self) -> None:
        factory = self.factory
        factory.opened(self)
        self._budget = WriteBudget(self.transport, factory.max_buffer)
        # The TCP connection under the connection counter, resolved once: the eager send
        # writes to it directly on every delivery.
        self._raw = raw_transport(self.transport)
        self._socket = socket_of(self._raw, factory.fast_paths)
        self._own_frames = factory.fast_paths.own_frames
        self._heartbeats = factory.fast_paths.heartbeat_usable(self)
        credentials, self._credentials = self._credentials, None
        # Autobahn keeps the raw handshake; an idle session need not.
        self.http_request_data = b""
        self.http_headers = {}
        self._session = StompSession(
            self, factory.services, credentials=credentials, peer=self.peer or "",
            address=self._address,
        )
        self._session.connection_made()

    def dataReceived(self, data: bytes) -> None:
        # At thousands of idle sessions client heart-beats are most of what arrives, and
        # Autobahn's general frame machinery costs several times what one is worth.  A
        # lone "\n" is a heart-beat only between STOMP frames: inside a frame split over
        # several messages it is content, and Autobahn must deliver it.
        session = self._session
        if (
            self._heartbeats
            and session is not None
            and is_client_heartbeat(self, data)
            and session.between_frames()
        ):
            session.heartbeat_received()
            return
        if self._ping_unanswered and self._heartbeats and is_pong(self, data, PROBE):
            # The answer to the liveness ping (L{_probe_due}), on its own as it nearly
            # always arrives: what Autobahn would call, without its frame machinery.
            self.onPong(PROBE)
            return
        super().dataReceived(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._session is not None:
            try:
                self._session.data_received(payload)
            except Exception:
                self.factory._log.failure("STOMP session failed")
                self.dropConnection(abort=True)

    def onMessageFrameBegin(self, length: int) -> None:
        if self._discarding:
            self._discarded += length
            if self._discarded > DISCARD_LIMIT:
                self.factory._log.info(
                    "peer {peer} kept sending after the close frame: dropped", peer=self.peer
                )
                self.dropConnection(abort=True)
                return
        super().onMessageFrameBegin(length)

    def onMessageFrameData(self, payload: bytes) -> None:
        if not self._discarding:
            super().onMessageFrameData(payload)

    def onMessageEnd(self) -> None:
        if not self._discarding:
            super().onMessageEnd()

    def onPing(self, payload: bytes) -> None:
        """
        Answer a ping, counting the pong against the write budget; past the ping rate, end
        the session instead.
        """
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        budget = self._budget
        if budget is not None and budget.overflowed:
            return
        pings = self._pings
        now = self.factory.services.clock.seconds()
        if pings is None:
            # Made at the first ping: most clients never send one.
            pings = self._pings = TokenBucket(self.factory.ping_rate, self.factory.ping_burst, now)
        if pings.take(now) is not None:
            self.factory._log.info("peer {peer} sent too many pings: closed", peer=self.peer)
            session = self._session
            detail = f"at most {self.factory.ping_rate:g} pings a second"
            if session is not None:
                session.end("too many pings", detail, cause="error")
            else:
                self.close(1008, "too many pings")
            return
        self.sendPong(payload)
        if budget is not None:
            budget.written(len(payload) + _CONTROL_HEADER)

    def onPong(self, payload: bytes) -> None:
        self._ping_unanswered = False

    def _authenticated_now(self) -> None:
        """
        The session was accepted (its C{CONNECTED} is being sent): allow the configured
        message size and, when the client promised no heart-beats, start the pings.
        """
        session = self._session
        if session is None or session.user is None:
            return
        self._authenticated = True
        factory = self.factory
        self.maxMessagePayloadSize = factory.maxMessagePayloadSize
        self.maxFramePayloadSize = factory.maxFramePayloadSize
        if factory.ping_interval > 0 and not session.heartbeats_expected:
            self._probe = factory.services.wheel.call_later(factory.ping_interval,
                                                            self._probe_due)

    def _probe_due(self) -> None:
        self._probe = None
        if self.state != WebSocketServerProtocol.STATE_OPEN or self._session is None:
            return
        factory = self.factory
        if self._ping_unanswered:
            factory._log.info(
                "peer {peer} did not answer a ping within {interval}s: dropped",
                peer=self.peer,
                interval=factory.ping_interval,
            )
            self._ping_timed_out = True
            self.dropConnection(abort=True)
            return
        self._ping_unanswered = True
        if self._own_frames:
            # A prebuilt frame sent at once, as a delivery is (L{send}), rather than
            # through Autobahn's framing and Twisted's queued write.  A control frame may
            # go between any two data frames, so it never waits for a write batch.
            send_now(self._raw, self._socket, _PROBE_FRAME)
        else:
            self.sendPing(PROBE)
        budget = self._budget
        if budget is not None:
            budget.written(len(PROBE) + _CONTROL_HEADER)
        self._probe = factory.services.wheel.call_later(factory.ping_interval,
                                                        self._probe_due)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        """
        Send a close frame (the session's, Autobahn's for a protocol violation, or the reply
        to the client's); from then on whatever data frames still arrive are discarded, not
        UTF-8 checked or buffered: nobody will read them.
        """
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if self.state == WebSocketServerProtocol.STATE_CLOSING and not self._discarding:
            self._stop_reading_messages()

    def _stop_reading_messages(self) -> None:
        self._discarding = True
        self.utf8validateIncoming = False
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
        self.factory.services.lingering.forget(self)
        session, self._session = self._session, None
        if session is not None:
            if self._budget is not None and self._budget.overflowed:
                cause = "slow_consumer"
            elif self._ping_timed_out:
                cause = "heartbeat_timeout"
            else:
                cause = "disconnect"
            session.connection_lost(reason or f"WebSocket closed ({code})", cause)

    def dropConnection(self, abort: bool = False) -> None:
        """
        Close the TCP connection; after a completed close handshake, without abort.

        Autobahn aborts the TCP connection as soon as the client answers the server's close
        frame, and an abort resets the connection (RST), which browsers report as
        C{wasClean=false} even though both close frames were exchanged.  RFC 6455 section
        7.1.1 has the server close TCP first once the handshake is done: an orderly close
        (FIN) does that, and still sends whatever is queued.  Every other drop (timeouts,
        protocol violations, a session that failed) keeps Autobahn's choice.
        """
        if abort and self.wasClean and self.state == WebSocketServerProtocol.STATE_CLOSING:
            abort = False
        super().dropConnection(abort=abort)

    # ICarrier

    def send(self, data: bytes) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if not self._authenticated:
            self._authenticated_now()
        size = len(data)
        if self._own_frames:
            # No extension is negotiated, so a text frame is a header and the payload,
            # and this is the hot path of every delivery.  The subscribers of a publication
            # that share a subscription id are handed one bytes object, one after another:
            # it is framed once (identity, not equality, so the check costs nothing).
            last = _last_framed
            if data is last[0]:
                framed = last[1]
            else:
                framed = frame_header(size) + data
                last[0] = data
                last[1] = framed
            if write_batch.active:
                write_batch.hold(self, framed)
            elif send_now(self._raw, self._socket, framed):
                return
        else:
            self.sendMessage(data, isBinary=False)
        budget = self._budget
        if budget is not None and budget.paused:
            budget.written(size)

    def write_held(self, frames: list[bytes]) -> None:
        """
        Write the frames held in the feed's L{write_batch}, in one call (see
        L{medichat._writebatch}).
        """
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            send_now(self._raw, self._socket, b"".join(frames))

    def close(self, code: int, reason: str) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        lingering = self.factory.services.lingering
        if is_error_close(code) and lingering.hold(self, lambda: self._close_now(code, reason)):
            # The session ended on an ERROR: read nothing more until the close.
            self._raw.pauseProducing()
            return
        lingering.forget(self)
        self._close_now(code, reason)

    def _close_now(self, code: int, reason: str) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        held = write_batch.take(self)
        if held:
            # Frames held in the feed's batch go before the close frame.
            self.write_held(held)
        if self._raw is not None and not self._raw.disconnecting:
            self._raw.resumeProducing()
        # sendClose() only lets applications use 1000 and 3000-4999; the protocol codes
        # (1001 going away, 1002, 1008, 1009, 1011) say more, so frame it directly.
        self.sendCloseFrame(code, reason.encode("utf-8")[:120], isReply=False)

    def abort(self) -> None:
        write_batch.take(self)  # dropped, as a write buffer is when the connection aborts
        self.dropConnection(abort=True)


class StompWebSocketFactory(WebSocketServerFactory):
    """
    Makes L{StompWebSocketProtocol}s that share one set of L{StompServices}.

    @param max_message: largest WebSocket message accepted once the session is
        authenticated (the STOMP parser enforces the frame limits; a message may hold
        several frames); before, the pre-auth STOMP frame budget is the limit.
    @param ping_interval: seconds between liveness pings to a session whose client
        promised no heart-beats, and how long it has to answer one; 0 sends none.
    @param ping_rate: pings a client may send per second, after a burst of C{ping_burst}.
    @param reactor: the reactor the connections run on (its clock also drives Autobahn's
        handshake timers, through the services' timer wheel).
    @param fast_paths: C{False} to use only the public Twisted and Autobahn API.
    @param trusted_proxies: networks of the reverse proxies whose C{Forwarded} /
        C{X-Forwarded-For} handshake headers name the client's address (for the access
        log), as for HTTP requests (C{--trusted-proxy}).

    @ivar fast_paths: the L{FastPaths} in use.
    """

    protocol = StompWebSocketProtocol  # type: ignore[assignment]
    _log = Logger()

    #: Seconds Autobahn waits for the client's answer to a close frame.
    close_handshake_timeout = 2.0

    def __init__(
        self,
        services: StompServices,
        origins: OriginPolicy,
        *,
        max_message: int = 1024 * 1024,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        server: str = "medichat",
        reactor: IReactorTime | None = None,
        fast_paths: bool = True,
        ping_interval: float = 30.0,
        ping_rate: float = 1.0,
        ping_burst: float = 10.0,
        trusted_proxies: tuple[Network, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(server=server, reactor=reactor or services.clock, **kwargs)
        self.services = services
        self.trusted_proxies = trusted_proxies
        self.origins = origins
        self.max_buffer = max_buffer
        self.ping_interval = ping_interval
        self.ping_rate = ping_rate
        self.ping_burst = ping_burst
        self.preauth_message = min(max_message, services.config.preauth_limits.max_frame_bytes)
        self.fast_paths = FastPaths.probe(fast_paths)
        self._open: set[StompWebSocketProtocol] = set()
        timers_on_wheel(self, services.wheel)
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            # Compression costs CPU per delivery and lets every frame be re-framed; decline.
            perMessageCompressionAccept=lambda offers: None,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=self.close_handshake_timeout,
            # A violation (a message too large, invalid UTF-8) gets a close frame with its
            # code, so the client learns why, rather than a reset.
            failByDrop=False,
        )

    def opened(self, protocol: StompWebSocketProtocol) -> None:
        """
        A connection finished its opening handshake: L{drain} waits for it until closed.
        """
        self._open.add(protocol)
        protocol.is_closed.addBoth(self._closed, protocol)

    def _closed(self, result: object, protocol: StompWebSocketProtocol) -> object:
        self._open.discard(protocol)
        return result

    def drain(self, timeout: float | None = None) -> Deferred[None]:
        """
        Wait until every open WebSocket connection has finished closing (Autobahn's
        C{is_closed}), as after the server sent each a close frame; connections still open
        after C{timeout} seconds are aborted.

        @param timeout: seconds to wait; by default a little more than the close
            handshake timeout, after which Autobahn drops the connection itself.
        @return: a L{Deferred} that fires when no connection is left.
        """
        if timeout is None:
            timeout = self.close_handshake_timeout + 1.0
        done: Deferred[None] = Deferred()
        waits: list[Deferred[None]] = []
        for protocol in list(self._open):
            closed: Deferred[None] = Deferred()
            protocol.is_closed.addBoth(_fire, closed)
            waits.append(closed)
        if not waits:
            done.callback(None)
            return done
        late = self.reactor.callLater(timeout, self._abort_remaining)

        def finished(_: object) -> None:
            if late.active():
                late.cancel()
            done.callback(None)

        DeferredList(waits).addCallback(finished)
        return done

    def _abort_remaining(self) -> None:
        remaining = list(self._open)
        self._log.warn(
            "{count} WebSocket connections did not close in time: aborted",
            count=len(remaining),
        )
        for protocol in remaining:
            # Autobahn resolves is_closed as it drops, which ends the drain.
            protocol.dropConnection(abort=True)


def _forget(result: object) -> None:
    return None


def _fire(result: object, closed: Deferred[None]) -> object:
    if not closed.called:
        closed.callback(None)
    return result
