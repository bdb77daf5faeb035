"""
HTTP connections: a deadline for each request head, and draining at shutdown.

twisted.web's L{HTTPChannel} only has an idle timeout, which every byte resets: a client
that sends one byte of its headers every few seconds holds a connection for as long as it
likes.  L{MedichatChannel} gives the request line and headers together a deadline
(C{--request-head-timeout}).  It runs from the moment the connection opens for the first
request, and from the first byte of each later request on a kept-alive connection (the
idle wait between requests stays governed by the idle timeout).  A head still incomplete at
the deadline is answered 408 (problem+json) and the connection closed; a connection that
sent nothing is just closed.  The body and the answer are not covered.  The WebSocket
handshake is such a head; once upgraded, Autobahn's own opening-handshake timeout applies.

A request answered 429 (a rate limit: its answer says C{Retry-After}) holds its
connection: the next request on it is read no sooner than C{rate_limit_hold} seconds
later (C{--rate-limit-hold}, 1 s by default, the least C{Retry-After} medichat sends).
A client that honours C{Retry-After} never notices; one that floods a kept-alive
connection is slowed to the pace the server chooses instead of costing it a request's
work for each refusal (issue 8: under a flood of C{POST /v1/conversation}, other users'
latency).  L{medichat.http.problems.write_problem} marks such a request.

At shutdown, L{HTTPConnections.drain} closes idle connections, lets each request being
received or answered finish (its answer says C{Connection: close}, and its connection
closes after it), and fires when no HTTP connection is left, or after a bound.

twisted.web hands the connection an answer's head, in pieces (some thirty for an API
answer, each checked by the transport), and then its body.  The channel joins the head and
keeps it until the body (or the request's end) comes, and writes both at once.  Given a
writer for the eager send of L{medichat.carriers._fastpath} (as the SQLite server is,
unless C{--no-fast-paths}), it sends them then and there in one C{send()} when nothing is
queued before them, instead of through Twisted's transport, which queues them, asks epoll
to watch the socket, sends on the next turn of the loop, and stops watching.

Given what hands a request over to twisted.web's channel state (L{WholeRequests}, from
L{medichat.carriers._fastpath}, unless C{--no-fast-paths}), a POST that arrives whole in
one read, head and body, is read in one pass (L{medichat.http._whole}) rather than a line
at a time; any other request, and any POST that pass declines, is read by twisted.web as
before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory

from medichat._connections import CappedFactory, ConnectionCap, CountedConnection
from medichat.http._direct import DirectRoute
from medichat.http._whole import WholeRequest, whole_post
from medichat.http.problems import HOLD_ATTRIBUTE, Problem

__all__ = ["EagerWriter", "HTTPConnections", "MedichatChannel", "WholeRequests"]

EagerWriter = Callable[[Any], "Callable[[bytes], object] | None"]
"""Given a connection's transport, what writes bytes to it at once, in order with what the
transport holds (L{medichat.carriers._fastpath.FastPaths.writer_for}), or L{None} if it
cannot."""


class WholeRequests(Protocol):
    """
    What a channel that reads a request whole needs of twisted.web's channel state
    (L{medichat.carriers._fastpath.WholeRequestHandover}).
    """

    def ready(self, channel: Any) -> bool:
        """Whether C{channel} may read a new request whole now."""

    def begin(self, channel: Any) -> None:
        """Put C{channel} in the state of one whose request is in and being handled."""


def _timeout_answer(head_timeout: float) -> bytes:
    detail = f"the request line and headers did not arrive within {head_timeout:g} s"
    return Problem.of(408, detail).raw_response()


def _describe(address: object) -> str:
    host = getattr(address, "host", None)
    return str(address) if host is None else f"{host}:{getattr(address, 'port', '?')}"


class MedichatChannel(HTTPChannel):
    """
    An L{HTTPChannel} with a deadline for each request head, that can be drained.

    Timers use C{callLater}, which L{twisted.web.server.Site} sets to its reactor's.
    """

    _log = Logger()

    def __init__(self, head_timeout: float = 10.0, rate_limit_hold: float = 1.0,
                 eager_writer: EagerWriter | None = None,
                 whole_requests: WholeRequests | None = None,
                 direct: DirectRoute | None = None) -> None:
        """
        @param head_timeout: seconds the request line and headers may take.
        @param rate_limit_hold: seconds the connection reads nothing after a request
            that asked for it (L{medichat.http.problems.hold_connection}); 0 for
            never.
        @param eager_writer: gives the connection's eager writer (see the module), if it
            has one; answers go through the transport when L{None}.
        @param whole_requests: lets the channel read a POST that arrives whole itself
            (see the module); twisted.web reads every request when L{None}.
        @param direct: answers the chat message POSTs that the channel reads whole
            (L{medichat.http._direct}); twisted.web's request answers them when L{None}.
        """
        super().__init__()
        self.head_timeout = head_timeout
        self.rate_limit_hold = rate_limit_hold
        self._eager_writer = eager_writer
        self._whole_requests = whole_requests
        self._direct = direct
        # What writes at once (None: write through the transport), and an answer's head
        # kept until its body.
        self._send: Callable[[bytes], object] | None = None
        self._head: bytes | None = None
        self._hold_call: IDelayedCall | None = None
        self._head_call: IDelayedCall | None = None
        # The idle timeout's timer (setTimeout).
        self._idle_call: IDelayedCall | None = None
        # The head awaited has a deadline (its timer may outlive it: _end_deadline).
        self._deadline_set = False
        # Between requests: no request line has been completed, or, if one has, its
        # headers have not.
        self._awaiting_head = True
        # Some byte of the awaited head has arrived.
        self._head_started = False
        self._draining = False

    # The idle timeout

    def setTimeout(self, period: int | None) -> int | None:
        """
        As L{TimeoutMixin.setTimeout}, with one timer kept.  twisted.web turns the idle
        timeout off while it handles a request and on again once it is answered, which
        made a timer and cancelled it for every request: off, the timer now stays and
        does nothing should it come due; on again, it is pushed back.  It is cancelled
        when the connection is lost or taken over (L{_cancel_idle}).
        """
        previous, self.timeOut = self.timeOut, period
        if period is None:
            return previous
        call = self._idle_call
        if call is not None and call.active():
            call.reset(period)
        else:
            self._idle_call = self.callLater(period, self._idle_expired)
        return previous

    def resetTimeout(self) -> None:
        """As L{TimeoutMixin.resetTimeout}: the idle timeout, if on, starts again."""
        call = self._idle_call
        if call is not None and self.timeOut is not None and call.active():
            call.reset(self.timeOut)

    def _idle_expired(self) -> None:
        self._idle_call = None
        if self.timeOut is not None:
            self.timeoutConnection()

    def _cancel_idle(self) -> None:
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()

    # The deadline

    def _start_deadline(self) -> None:
        self._deadline_set = True
        call = self._head_call
        if call is not None and call.active():
            # The timer of an earlier head, pushed back: cheaper than a new one for each
            # request of a kept-alive connection (and the cancelled one it replaced).
            call.reset(self.head_timeout)
        else:
            self._head_call = self.callLater(self.head_timeout, self._head_expired)

    def _end_deadline(self) -> None:
        """The head is in: its timer stays, for the next head, and does nothing meanwhile."""
        self._deadline_set = False

    def _cancel_deadline(self) -> None:
        self._deadline_set = False
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_expired(self) -> None:
        self._head_call = None
        transport = self.transport
        if not self._deadline_set or not self._awaiting_head or transport is None:
            self._deadline_set = False
            return
        if self._head_started and not getattr(transport, "disconnecting", False):
            self._log.info(
                "request head from {peer} not complete within {timeout} s: answered 408",
                peer=_describe(transport.getPeer()),
                timeout=self.head_timeout,
            )
            transport.write(_timeout_answer(self.head_timeout))
        # Closes, and aborts if the client does not read what is left to send.
        self.timeoutConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._eager_writer is not None:
            self._send = self._eager_writer(self.transport)
        self._start_deadline()

    # Sending an answer

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if not isinstance(headers, Headers):
            # Pairs (twisted.web's old form, which it sanitises first): written at once.
            super().writeHeaders(version, code, reason, headers)
            return
        # Written as twisted.web writes it, kept until the body comes.
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        self._head = b"".join(head)

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        if not data:
            return
        send = self._send
        if send is None:
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            send(data)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def dataReceived(self, data: bytes) -> None:
        whole = self._whole_requests
        if (whole is not None and self._awaiting_head and not self._head_started
                and data[:5] == b"POST " and whole.ready(self)):
            request = whole_post(data, self.MAX_LENGTH, self.totalHeadersSize, self.maxHeaders)
            if request is not None:
                self._read_whole(request, whole)
                return
        if self._awaiting_head and data:
            self._head_started = True
            if not self._deadline_set:
                self._start_deadline()
        super().dataReceived(data)

    def _read_whole(self, whole_request: WholeRequest, whole: WholeRequests) -> None:
        """
        What twisted.web's channel does with a POST it reads a line at a time, done at
        once: the idle timeout pushed back, the request made with its headers, its cookies
        and its persistence, its body, then the channel handling it, and the request run.
        """
        self.resetTimeout()
        # The head is in: its deadline has nothing left to wait for.
        self._awaiting_head = False
        self._end_deadline()
        direct = self._direct
        if direct is not None:
            postpath = direct.match(whole_request)
            if postpath is not None:
                request = direct.make(self, whole_request)
                self.requests.append(request)
                self.persistent = self.checkPersistence(request, b"HTTP/1.1")
                whole.begin(self)
                direct.run(request, postpath)
                return
        factory: Any = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        headers = request.requestHeaders
        for name, value in whole_request.headers:
            headers.addRawHeader(name, value)
        request.parseCookies()
        self.persistent = self.checkPersistence(request, b"HTTP/1.1")
        request.gotLength(len(whole_request.body))
        request.handleContentChunk(whole_request.body)
        whole.begin(self)
        request.requestReceived(b"POST", whole_request.target, b"HTTP/1.1")

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        if self.requests and self.requests[-1].requestHeaders.hasHeader(b"upgrade"):
            # A WebSocket handshake: the connection leaves twisted.web with it, and its
            # channel should not be kept by a timer until it comes due (an idle timer is
            # made again should the handshake fail and the connection stay HTTP).
            self._cancel_deadline()
            self._cancel_idle()
        else:
            self._end_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        # Set before the base class replays data buffered meanwhile (a pipelined request)
        # through dataReceived, which then starts the next deadline.
        self._awaiting_head = True
        self._head_started = False
        if self._head is not None:
            # An answer without a body (HEAD, 204, 304, or an empty one).
            self.write(b"")
        super().requestDone(request)
        if getattr(request, HOLD_ATTRIBUTE, False):
            self._hold()

    # Holding after a rate limit

    def _hold(self) -> None:
        transport = self.transport
        if (self.rate_limit_hold <= 0 or transport is None or not self.persistent
                or self._draining or getattr(transport, "disconnecting", False)):
            return
        if self._hold_call is not None and self._hold_call.active():
            self._hold_call.cancel()
        self._networkProducer.pauseProducing()
        self._hold_call = self.callLater(self.rate_limit_hold, self._release)

    def _release(self) -> None:
        self._hold_call = None
        # Whatever else paused the connection (a request being answered, a full send
        # buffer) resumes it when it is done.
        if not self._handlingRequest and not self._waitingForTransport:
            self._networkProducer.resumeProducing()

    def _cancel_hold(self) -> None:
        if self._hold_call is not None:
            if self._hold_call.active():
                self._hold_call.cancel()
            self._hold_call = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._head = None
        self._cancel_idle()
        self._cancel_deadline()
        self._cancel_hold()
        super().connectionLost(reason)

    # Draining

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self._draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def drain(self) -> None:
        """
        Close now if idle; otherwise finish the request being received or answered, say
        C{Connection: close} in its answer, and close after it.
        """
        self._draining = True
        if self._awaiting_head and not self._head_started:
            self.loseConnection()
            return
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        if not self._awaiting_head:
            # Its headers are in: checkPersistence has been asked already.
            self.persistent = False


class HTTPConnections(CappedFactory):
    """
    Wraps the L{twisted.web.server.Site}: counts its connections against the cap, and
    drains them at shutdown.
    """

    _log = Logger()

    def __init__(self, site: Any, cap: ConnectionCap, clock: IReactorTime) -> None:
        super().__init__(site, cap)
        self._clock = clock
        self._drained: Deferred[None] | None = None
        self._deadline: IDelayedCall | None = None

    def _busy(self) -> list[CountedConnection]:
        return [c for c in self.protocols if isinstance(c.wrappedProtocol, MedichatChannel)]

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Close idle HTTP connections and let requests in flight finish (see the module).

        @param timeout: seconds to wait; connections still busy then are aborted.
        @return: fires when no HTTP connection is left, or at the timeout.
        """
        drained: Deferred[None] = Deferred()
        self._drained = drained
        busy = self._busy()
        if busy:
            self._log.info("finishing {count} HTTP connection(s)", count=len(busy))
        for connection in busy:
            channel = connection.wrappedProtocol
            assert isinstance(channel, MedichatChannel)
            channel.drain()
        if self._drained is not None:
            self._deadline = self._clock.callLater(timeout, self._give_up, timeout)
            self._check()
        return drained

    def _check(self) -> None:
        if self._drained is None or self._busy():
            return
        drained, self._drained = self._drained, None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        drained.callback(None)

    def _give_up(self, timeout: float) -> None:
        self._deadline = None
        busy = self._busy()
        self._log.warn(
            "{count} HTTP connection(s) still busy after {timeout} s: closed",
            count=len(busy),
            timeout=timeout,
        )
        for connection in busy:
            connection.abortConnection()
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.callback(None)

    def protocol_replaced(self, connection: CountedConnection) -> None:
        self._check()

    def connection_closed(self, connection: CountedConnection) -> None:
        self._check()
