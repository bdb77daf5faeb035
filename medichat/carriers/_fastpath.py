"""
Every use of Twisted's and Autobahn's private state, in one place.

Six shortcuts make fan-out, idle sessions, new connections and HTTP requests cheap; each
reads or writes state that the libraries do not promise to keep:

  - the eager send (L{send_now}): one C{send()} on the socket of a plain TCP transport
    with nothing queued, instead of Twisted's queue-and-wait-for-writability (for STOMP
    frames, and for HTTP answers through L{FastPaths.writer_for});
  - self-written RFC 6455 frame headers (L{frame_header}): each outbound STOMP frame goes
    to the transport as one unmasked text frame, past Autobahn's general send machinery;
  - the client heart-beat shortcut (L{is_client_heartbeat}): a 7-byte masked C{"\\n"}
    frame is recognised before Autobahn parses it, when Autobahn has no frame in progress;
  - the quiet open (L{copy_config}): Autobahn copies its factory's options onto each new
    connection by walking the class's C{CONFIG_ATTRS}, and pretty-prints the whole list for
    a debug line whether or not debug logging is on (about two thirds of the cost of
    opening a connection); the carrier copies the options itself and gives the connection
    an empty C{CONFIG_ATTRS}, so the list Autobahn formats is empty;
  - Autobahn's timers on our clock (L{timers_on_wheel}): Autobahn schedules its handshake
    timers through a private batched timer on txaio's global reactor; the carrier replaces
    it with the server's L{TimerWheel}, so they run on the injected clock and stop with it;
  - requests read whole (L{WholeRequestHandover}): an HTTP POST that arrives in one read is
    read in one pass (L{medichat.http._whole}) rather than a line at a time by twisted.web's
    channel, which is then told what it would have done itself once the request was in:
    whether it may take one (no bytes buffered, no request in progress), and that one is
    being handled (its idle timeout off, raw mode).

All but the fifth are what C{--no-fast-paths} turns off; the fifth only moves timers.
L{FastPaths.probe} runs when a carrier factory is made.  It checks that every attribute a
shortcut needs exists on the installed versions' classes (and, for the eager send, on a
real transport instance); a shortcut whose attributes are missing is switched off, with one
log line, and the carrier uses the public API instead (C{transport.write}, Autobahn's
C{sendMessage}, Autobahn's own parser).  Autobahn sets the frame-parser attributes only
once a connection is open, so those are checked by L{FastPaths.heartbeat_usable} when the
first connection opens.  An upgrade of either library may cost speed, never correctness.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import define
from autobahn.websocket.protocol import WebSocketProtocol, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from medichat._connections import raw_transport
from medichat._timers import Timer, TimerWheel

_log = Logger()

#: What L{send_now} reads on a C{twisted.internet.tcp.Connection}.
TCP_ATTRIBUTES = ("socket", "dataBuffer", "_tempDataLen", "connected", "disconnecting", "TLS")

#: What the outbound frame shortcut needs from Autobahn's protocol class.
FRAME_ATTRIBUTES = ("STATE_OPEN", "sendMessage")

#: What L{is_client_heartbeat} and L{is_pong} read on an open Autobahn protocol instance.
HEARTBEAT_ATTRIBUTES = ("state", "current_frame", "inside_message", "data")

#: The Autobahn protocol attribute that L{copy_config} empties.
CONFIG_ATTRIBUTE = "CONFIG_ATTRS"

#: The Autobahn factory attribute that L{timers_on_wheel} replaces.
TIMER_ATTRIBUTE = "_batched_timer"

#: What L{WholeRequestHandover} reads and writes on twisted.web's HTTPChannel.
CHANNEL_ATTRIBUTES = ("_buffer", "_handlingRequest", "_savedTimeOut", "line_mode")

_STATE_OPEN = getattr(WebSocketProtocol, "STATE_OPEN", None)

# One warning per missing shortcut per process, however many factories are made.
_warned: set[str] = set()


def _warn_once(name: str, missing: list[str], where: str) -> None:
    if name in _warned:
        return
    _warned.add(name)
    _log.warn(
        "fast path {name} off: {where} lacks {missing}; using the public API",
        name=name,
        where=where,
        missing=", ".join(missing),
    )


def _probe_tcp() -> list[str]:
    """
    The attributes of L{TCP_ATTRIBUTES} that a real C{tcp.Connection} lacks.
    """
    left, right = socket.socketpair()
    try:
        # A transport that is never connected to a reactor: only its attributes are read.
        no_reactor: Any = object()
        probe = tcp.Connection(left, Protocol(), reactor=no_reactor)
        return [name for name in TCP_ATTRIBUTES if not hasattr(probe, name)]
    finally:
        left.close()
        right.close()


@define
class FastPaths:
    """
    Which shortcuts a carrier factory may use.

    @ivar eager_send: L{send_now} may write to a plain TCP socket directly.
    @ivar own_frames: the WebSocket carrier writes its own frame headers.
    @ivar heartbeat_shortcut: the WebSocket carrier recognises client heart-beats, and
        the pongs that answer its liveness pings, itself.
    @ivar quiet_open: the WebSocket carrier copies Autobahn's options onto a new
        connection itself (L{copy_config}).
    @ivar whole_requests: HTTP channels may read a request that arrives whole themselves
        (L{WholeRequestHandover}).
    """

    eager_send: bool = False
    own_frames: bool = False
    heartbeat_shortcut: bool = False
    quiet_open: bool = False
    whole_requests: bool = False

    @classmethod
    def probe(cls, enabled: bool = True) -> FastPaths:
        """
        Check the installed Twisted and Autobahn for what each shortcut needs.

        @param enabled: C{False} (C{--no-fast-paths}) turns every shortcut off.
        @return: the shortcuts that may be used.
        """
        if not enabled:
            return cls()
        missing_tcp = _probe_tcp()
        if missing_tcp:
            _warn_once("eager send", missing_tcp, "twisted.internet.tcp.Connection")
        missing_frames = [n for n in FRAME_ATTRIBUTES if not hasattr(WebSocketProtocol, n)]
        if missing_frames:
            _warn_once("own frame headers", missing_frames, "Autobahn's WebSocketProtocol")
        config = getattr(WebSocketServerProtocol, CONFIG_ATTRIBUTE, None)
        quiet_open = isinstance(config, (list, tuple)) and all(
            isinstance(name, str) for name in config
        )
        if not quiet_open:
            _warn_once("quiet open", [CONFIG_ATTRIBUTE], "Autobahn's WebSocketServerProtocol")
        channel = HTTPChannel()
        missing_channel = [name for name in CHANNEL_ATTRIBUTES if not hasattr(channel, name)]
        if missing_channel:
            _warn_once("requests read whole", missing_channel, "twisted.web's HTTPChannel")
        return cls(
            eager_send=not missing_tcp,
            own_frames=not missing_frames,
            heartbeat_shortcut=_STATE_OPEN is not None,
            quiet_open=quiet_open,
            whole_requests=not missing_channel,
        )

    def whole_request_handover(self) -> WholeRequestHandover | None:
        """
        What lets HTTP channels read requests that arrive whole
        (L{medichat.http._channel}), or L{None} if they may not.
        """
        return WholeRequestHandover() if self.whole_requests else None

    def writer_for(self, transport: Any) -> Callable[[bytes], object] | None:
        """
        What writes to C{transport} with L{send_now}, or L{None} if the eager send cannot
        be used on it (L{socket_of}): for HTTP answers (L{medichat.http._channel}).
        """
        raw = raw_transport(transport)
        sock = socket_of(raw, self)
        return None if sock is None else partial(send_now, raw, sock)

    def heartbeat_usable(self, protocol: Any) -> bool:
        """
        Whether the heart-beat shortcut may be used on this open Autobahn protocol; if its
        frame-parser attributes are missing, switch the shortcut off for good.
        """
        if not self.heartbeat_shortcut:
            return False
        missing = [name for name in HEARTBEAT_ATTRIBUTES if not hasattr(protocol, name)]
        if missing:
            _warn_once("client heart-beat", missing, type(protocol).__name__)
            self.heartbeat_shortcut = False
            return False
        return True


class WholeRequestHandover:
    """
    What an HTTP channel that reads a request whole (L{medichat.http._whole}) asks of
    twisted.web's L{HTTPChannel} state, instead of its line-at-a-time reading.
    """

    def ready(self, channel: Any) -> bool:
        """
        Whether C{channel} may read a new request whole: it keeps its connection, no
        request is in progress, and its line reader holds no bytes and is reading lines.
        """
        return bool(
            channel.persistent and not channel.requests and channel.line_mode
            and not channel._buffer and not channel._handlingRequest
        )

    def begin(self, channel: Any) -> None:
        """
        What C{channel} does once a request's body is in, before the request runs
        (C{allContentReceived}): its idle timeout off until the answer is done, the
        request being handled, and raw mode, so that bytes arriving meanwhile wait for
        it (C{requestDone} turns all three back).
        """
        if channel.timeOut:
            channel._savedTimeOut = channel.setTimeout(None)
        channel._handlingRequest = True
        channel.setRawMode()


def socket_of(transport: Any, paths: FastPaths) -> Any:
    """
    The socket of a plain TCP transport (under the connection counter), for L{send_now};
    L{None} for any other (TLS, test doubles) or when the eager send is off.
    """
    transport = raw_transport(transport)
    if (
        paths.eager_send
        and isinstance(transport, tcp.Connection)
        and not ISSLTransport.providedBy(transport)
        and not transport.TLS
    ):
        return transport.socket
    return None


def send_now(transport: Any, sock: Any, data: bytes) -> bool:
    """
    Write C{data} to C{transport}, sending it at once when nothing is queued before it.

    Twisted's C{write} queues the bytes, asks epoll to watch the socket for writability,
    sends on the next turn of the loop and stops watching again: three system calls per
    write, which dominate the cost of fanning one event out to thousands of sockets.
    When the transport holds nothing unsent, one C{send} does the same work; whatever the
    kernel does not take (or an error, which Twisted then reports as it would have) goes
    through C{write}, after which everything queues behind it and order is kept.

    TLS may be started on a TCP connection at any time (C{startTLS}); from then on its
    C{write} encrypts, so the flag is checked on every call, not only at L{socket_of}.

    @param transport: the TCP connection itself (L{raw_transport} of the protocol's,
        resolved once per connection), so that a write never passes through the wrapper
        that counts connections.
    @param sock: L{socket_of} the transport, or L{None} to always use C{write}.
    @return: whether C{data} was sent whole at once.  Then the transport held nothing,
        so it has not paused its producer (it pauses one only while its buffer is over
        the high-water mark, and resumes it when the buffer empties): a carrier's
        L{medichat.carriers._budget.WriteBudget} is not counting.
    """
    if (
        sock is not None
        and not transport.TLS
        and not transport.dataBuffer
        and not transport._tempDataLen
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return True
        data = data[sent:]
    transport.write(data)
    return False


def frame_header(length: int) -> bytes:
    """
    The header of an unmasked, final text frame of C{length} payload bytes (RFC 6455
    section 5.2); valid because the carrier negotiates no extension (no compression).
    """
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def is_client_heartbeat(protocol: Any, data: bytes) -> bool:
    """
    Whether C{data}, just received by an open Autobahn server C{protocol}, is exactly one
    client heart-beat frame that Autobahn's own parser need not see.

    A client heart-beat is a one-byte masked frame holding C{"\\n"}: 7 bytes on the wire
    (flags and opcode, mask bit and length 1, a 4-byte mask, the masked byte).  It may be
    taken only when Autobahn has no frame, message or unparsed bytes in progress; the caller
    must also make sure the STOMP parser is between frames, since a lone C{"\\n"} message
    can be part of a frame split over several messages.
    """
    return (
        len(data) == 7
        and data[1] == 0x81
        and data[0] in (0x81, 0x82)
        and data[6] ^ data[2] == 0x0A
        and _between_frames(protocol)
    )


def is_pong(protocol: Any, data: bytes, payload: bytes) -> bool:
    """
    Whether C{data}, just received by an open Autobahn server C{protocol}, is exactly one
    masked pong frame carrying C{payload} (at most 125 bytes): the answer to the server's
    liveness ping, which Autobahn's own parser need not see either.  Taken on the same
    conditions as a heart-beat: Autobahn has no frame, message or unparsed bytes in
    progress.
    """
    size = len(payload)
    if len(data) != 6 + size or data[0] != 0x8A or data[1] != 0x80 | size:
        return False
    # Unmasked as one integer: the 4-byte mask repeats over the payload.
    mask = int.from_bytes((data[2:6] * (size // 4 + 1))[:size], "big")
    return (
        int.from_bytes(data[6:], "big") ^ mask == int.from_bytes(payload, "big")
        and _between_frames(protocol)
    )


def _between_frames(protocol: Any) -> bool:
    """Whether the open Autobahn C{protocol} has no frame, message or bytes in progress."""
    return bool(
        protocol.state == _STATE_OPEN
        and protocol.current_frame is None
        and not protocol.inside_message
        and not protocol.data
    )


def copy_config(protocol: Any, factory: Any) -> None:
    """
    Before Autobahn's C{connectionMade}: copy the factory's options onto a new server
    C{protocol} (those not already set on it, as Autobahn would) and give the protocol an
    empty C{CONFIG_ATTRS}, so that Autobahn finds nothing left to copy and formats an empty
    list for its debug line instead of all of the options.
    """
    names = getattr(WebSocketServerProtocol, CONFIG_ATTRIBUTE)
    for name in names:
        if not hasattr(protocol, name):
            setattr(protocol, name, getattr(factory, name))
    setattr(protocol, CONFIG_ATTRIBUTE, ())


class _WheelTimer:
    """
    Autobahn's batched-timer interface (C{txaio.IBatchedTimer}) on a L{TimerWheel}.
    """

    def __init__(self, wheel: TimerWheel) -> None:
        self._wheel = wheel

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any,
                   **kwargs: Any) -> Timer:
        """Call C{fn(*args, **kwargs)} after C{delay} seconds; the handle can C{cancel()}."""
        if args or kwargs:
            fn = partial(fn, *args, **kwargs)
        return self._wheel.call_later(delay, fn)


def timers_on_wheel(factory: Any, wheel: TimerWheel) -> bool:
    """
    Make Autobahn schedule the handshake timers of C{factory}'s connections on C{wheel}
    (the injected clock) rather than on txaio's global reactor.

    @return: C{False} (after one log line) if this Autobahn keeps its timers elsewhere;
        its own timers then stay on the global reactor, which only matters to tests.
    """
    if not hasattr(factory, TIMER_ATTRIBUTE):
        _warn_once("timers on the wheel", [TIMER_ATTRIBUTE], type(factory).__name__)
        return False
    setattr(factory, TIMER_ATTRIBUTE, _WheelTimer(wheel))
    return True
