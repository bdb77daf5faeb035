"""
L{IBroadcast} between the processes that share one PostgreSQL database: C{LISTEN} and
C{NOTIFY} on one channel.

The wire: each C{NOTIFY} payload is compact UTF-8 JSON,
C{{"node":"<sender>","seq":N,"messages":[m1,m2,...]}}, with the messages one process sent
in one reactor turn, in order, and C{seq} counting that process's payloads (so that no two
are identical, which PostgreSQL would fold into one within a transaction).  A payload must
stay under PostgreSQL's limit (L{MAX_PAYLOAD} bytes): the messages of a turn are split over
as many payloads as needed, all sent in one transaction, and that in one query (C{BEGIN},
the C{pg_notify} calls, C{COMMIT}), so one round trip and one commit (and one take of
the cluster-wide lock that C{NOTIFY} holds at commit) per turn at most, and never while
the previous one is still under way.  A single message too big for any payload is refused.

Each process holds two dedicated connections, neither from the store's pool:

  - the listening one, with TCP keepalives, which runs C{LISTEN} and then only a cheap
    C{SELECT 1} every few seconds (with a timeout) to find a half-open socket; when it is
    lost it is opened again at once, then with growing, jittered delays, and L{set_reconnected}'s
    callback learns that notifications may have been missed meanwhile;
  - the sending one, so that the payloads of successive turns leave in order over one
    session (a pool would let two turns overtake each other) and a write transaction of
    the store never waits for, or holds, the C{NOTIFY} lock.  It is opened again when next
    used after a loss; a turn that fails, or gets no answer within L{DEFAULT_SEND_TIMEOUT}
    seconds, is logged and dropped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from random import random
from typing import Any

import psycopg2
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres
from zope.interface import implementer

from medichat.errors import StoreUnavailable
from medichat.interfaces import IBroadcast
from medichat.store.postgres import (
    DEFAULT_CONNECT_TIMEOUT,
    _Connection,
    _reason,
    _Slot,
    redact,
)
from medichat.store.scripts import Script, Statement

_log = Logger()

MAX_PAYLOAD = 7999
"""The most bytes of one C{NOTIFY} payload (PostgreSQL's limit: shorter than 8000)."""

DEFAULT_CHANNEL = "medichat"
"""The channel every process listens on and notifies (one per database)."""

DEFAULT_KEEPALIVE = 10.0
"""Seconds of silence before TCP keepalive probes, and between C{SELECT 1} probes."""

DEFAULT_PROBE_TIMEOUT = 5.0
"""Seconds a C{SELECT 1} on the listening connection may take before it counts as lost."""

DEFAULT_SEND_TIMEOUT = 10.0
"""Seconds one turn's C{NOTIFY} transaction may take before its connection is dropped."""

MAX_BACKOFF = 5.0
"""The longest wait, in seconds, between two attempts to listen again."""

FIRST_BACKOFF = 0.1
"""The wait before the first attempt to listen again (at most; jittered down to half)."""

_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")

_SEQ_ROOM = 20
"""Digits reserved for C{seq} when measuring a payload."""


def encode_message(message: Any) -> bytes:
    """
    One message as compact UTF-8 JSON.

    @raise TypeError: if it is not JSON-serialisable.
    @raise ValueError: likewise (a float that JSON cannot hold, a circular value).
    """
    return json.dumps(
        message, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _prefix(node_id: str, seq: int) -> bytes:
    return b'{"node":%s,"seq":%d,"messages":[' % (encode_message(node_id), seq)


def message_room(node_id: str) -> int:
    """
    The most bytes one encoded message may have to fit in a payload of C{node_id}.
    """
    return MAX_PAYLOAD - len(_prefix(node_id, 10**_SEQ_ROOM - 1)) - len(b"]}")


def pack(node_id: str, first_seq: int, messages: Sequence[bytes]) -> list[str]:
    """
    Pack encoded messages, in order, into as few payloads as fit under L{MAX_PAYLOAD}.

    @param first_seq: the C{seq} of the first payload; the next ones count up from it.
    @param messages: each at most L{message_room} bytes.
    @return: the payloads, as text.
    """
    room = message_room(node_id)
    groups: list[list[bytes]] = []
    size = 0
    for message in messages:
        assert len(message) <= room, len(message)
        if not groups or size + 1 + len(message) > room + 1:
            groups.append([])
            size = -1
        groups[-1].append(message)
        size += 1 + len(message)
    return [
        (_prefix(node_id, first_seq + i) + b",".join(group) + b"]}").decode("utf-8")
        for i, group in enumerate(groups)
    ]


def unpack(payload: str) -> tuple[str, list[Any]] | None:
    """
    The sender and the messages of a payload, or L{None} if it is not one of ours.
    """
    try:
        envelope = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(envelope, dict):
        return None
    node, messages = envelope.get("node"), envelope.get("messages")
    if not isinstance(node, str) or not isinstance(messages, list):
        return None
    return node, messages


def _why(failure: Failure) -> str:
    """
    The gist of a failure, on one line.
    """
    return _reason(failure.value) if failure.value is not None else failure.getErrorMessage()


class _Inline:
    """
    A stand-in for txpostgres's cooperator that dispatches each batch of notifications at
    once: the global cooperator would interleave batches read at different times, and so
    could reorder them.
    """

    @staticmethod
    def cooperate(iterator: Any) -> None:
        for _ in iterator:
            pass


class _ListenConnection(_Connection):
    """
    The listening connection: once L{on_lost} is set, it is called (once) when PostgreSQL
    closes the connection or an error shows that it is gone.

    @ivar on_lost: called with this connection; L{None} while opening and after the loss.
    """

    on_lost: Callable[[_ListenConnection], None] | None = None

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, _Inline())

    def doRead(self) -> None:
        """Read, and dispatch notifications; note a connection found gone."""
        try:
            txpostgres.Connection.doRead(self)
        except psycopg2.Error as e:
            _log.warn("PostgreSQL LISTEN connection failed: {reason}", reason=_reason(e))
            self._lost()
            return
        if not self.is_open:
            self._lost()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the socket close."""
        super().connectionLost(reason)
        self._lost()

    def _lost(self) -> None:
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(self)

    def dispose(self) -> None:
        """Close without reporting a loss."""
        self.on_lost = None
        self.close()


def _notify_all(channel: str, payloads: Sequence[str]) -> Script[None]:
    """
    The transaction of one turn: each payload in order, committed together, in one round
    trip (C{BEGIN}, the C{pg_notify} calls and C{COMMIT} in one query: see L{_drive}).
    """
    for payload in payloads:
        yield Statement("SELECT pg_notify(%s, %s)", (channel, payload), later=True)


@implementer(IBroadcast)
class PostgreSQLBroadcast:
    """
    L{IBroadcast} over PostgreSQL's C{LISTEN}/C{NOTIFY} (see the module).

    @ivar url: the libpq URL connected to (the store's).
    @ivar connected: C{True} while the C{LISTEN} is in place.
    @ivar reconnects: how many times the C{LISTEN} was in place again after it had been
        lost (for metrics).
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        node_id: str,
        channel: str = DEFAULT_CHANNEL,
        keepalive: float = DEFAULT_KEEPALIVE,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_backoff: float = MAX_BACKOFF,
        jitter: Callable[[], float] = random,
    ) -> None:
        """
        @param url: a libpq URL, C{postgresql://user@host:port/dbname}.
        @param reactor: provides C{IReactorTime} and C{IReactorFDSet}.
        @param node_id: this process's id, sent with every payload.
        @param channel: the channel name (lower-case letters, digits and C{_}).
        @param keepalive: seconds of idleness before TCP keepalive probes start (then 3
            probes, a third of that apart), and between two C{SELECT 1} probes.
        @param probe_timeout: seconds a C{SELECT 1} may take.
        @param connect_timeout: seconds an attempt to connect and C{LISTEN} may take.
        @param send_timeout: seconds one turn's C{NOTIFY} transaction may take.
        @param max_backoff: the longest wait between two attempts to listen again.
        @param jitter: returns a number in [0, 1); spreads the waits between attempts.
        @raise ValueError: for a channel name that is not a plain identifier.
        """
        if not _CHANNEL.match(channel):
            raise ValueError(f"not a plain PostgreSQL channel name: {channel!r}")
        self.url = url
        self.node_id = node_id
        self.connected = False
        self.reconnects = 0
        self._listened = False
        self._reactor = reactor
        self._channel = channel
        self._keepalive = keepalive
        self._probe_timeout = probe_timeout
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._max_backoff = max_backoff
        self._jitter = jitter
        self._room = message_room(node_id)
        self._connect_kwargs: dict[str, Any] = {
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(keepalive)),
            "keepalives_interval": max(1, math.ceil(keepalive / 3)),
            "keepalives_count": 3,
        }
        self._receiver: Callable[[str, Any], None] | None = None
        self._reconnected: Callable[[], None] | None = None
        self._state = "new"
        # listening
        self._listener: _ListenConnection | None = None
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._probe: IDelayedCall | None = None
        self._first: Deferred[None] | None = None
        # sending
        self._sender = _Slot(reactor, timeout=connect_timeout)
        self._sender_opening: Deferred[None] | None = None
        self._pending: list[bytes] = []
        self._flush_call: IDelayedCall | None = None
        self._in_flight: Deferred[None] | None = None
        self._seq = 0
        self._send_failing = False

    # -- IBroadcast ------------------------------------------------------------------------

    def set_receiver(self, receiver: Callable[[str, Any], None]) -> None:
        """See L{IBroadcast.set_receiver}."""
        self._receiver = receiver

    def set_reconnected(self, callback: Callable[[], None]) -> None:
        """See L{IBroadcast.set_reconnected}."""
        self._reconnected = callback

    def ready(self) -> Deferred[None]:
        """
        A readiness check (see L{medichat._readiness.Readiness}): fails while the C{LISTEN}
        is not in place, since events from other processes would then be late.
        """
        if self.connected:
            return succeed(None)
        return fail(StoreUnavailable("the LISTEN connection to PostgreSQL is down"))

    def start(self) -> Deferred[None]:
        """See L{IBroadcast.start}."""
        if self._state != "new":
            return succeed(None)
        self._state = "running"
        opening = self._sender_opening = self._sender.connect(self.url, **self._connect_kwargs)

        def opened(_: object) -> None:
            # A sender that could not open is opened again when next used.
            self._sender_opening = None

        opening.addBoth(opened)
        first = self._first = Deferred()
        self._connect()
        self._schedule_flush()
        return first

    def stop(self) -> Deferred[None]:
        """See L{IBroadcast.stop}."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._state == "stopped":
            return
        was_running = self._state == "running"
        self._state = "stopping"
        for call in (self._retry, self._probe):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._probe = None
        self._settle_first()
        if was_running:
            if self._flush_call is not None:
                self._flush_call.cancel()
                self._flush_call = None
            if self._pending and self._in_flight is None:
                self._flush()
            while self._in_flight is not None:
                await self._in_flight
        self._state = "stopped"
        self._pending.clear()
        self.connected = False
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.dispose()
        self._sender.close()

    def send(self, message: Any) -> bool:
        """See L{IBroadcast.send}."""
        try:
            data = encode_message(message)
        except (TypeError, ValueError) as e:
            _log.error("cannot broadcast a message that is not JSON: {reason}", reason=e)
            return False
        if len(data) > self._room:
            _log.error(
                "cannot broadcast a message of {size} bytes: a NOTIFY payload holds at "
                "most {limit}",
                size=len(data),
                limit=MAX_PAYLOAD,
            )
            return False
        if self._state in ("stopping", "stopped") and self._in_flight is None:
            return False
        self._pending.append(data)
        self._schedule_flush()
        return True

    # -- sending ---------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if (
            self._state == "running"
            and self._pending
            and self._flush_call is None
            and self._in_flight is None
        ):
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """
        Send everything queued, in one transaction.
        """
        self._flush_call = None
        messages, self._pending = self._pending, []
        payloads = pack(self.node_id, self._seq, messages)
        self._seq += len(payloads)
        # The slot would run a query on a connection still opening.
        opening = self._sender_opening
        if opening is None:
            sending = self._run_notify(payloads)
        else:
            sending = opening.addCallback(lambda _: self._run_notify(payloads))
        # A half-open socket would hold the transaction for ever: past the timeout the
        # turn counts as failed and the connection is dropped, so the next one opens anew.
        outcome: Deferred[None] = Deferred()
        timer = self._reactor.callLater(
            self._send_timeout,
            self._send_timed_out,
            outcome,
        )

        def settle(result: object) -> None:
            if not outcome.called:
                if timer.active():
                    timer.cancel()
                if isinstance(result, Failure):
                    outcome.errback(result)
                else:
                    outcome.callback(None)

        sending.addBoth(settle)
        self._in_flight = outcome

        def done(result: object) -> None:
            self._in_flight = None
            if isinstance(result, Failure):
                if not self._send_failing:
                    _log.warn(
                        "cannot NOTIFY on PostgreSQL at {url}, messages to other "
                        "processes are lost: {reason}",
                        url=redact(self.url),
                        reason=_why(result),
                    )
                self._send_failing = True
            elif self._send_failing:
                _log.info("NOTIFY on PostgreSQL works again")
                self._send_failing = False
            if self._state == "stopping" and self._pending:
                self._flush()
            else:
                self._schedule_flush()

        outcome.addBoth(done)

    def _run_notify(self, payloads: Sequence[str]) -> Deferred[None]:
        return self._sender.run_script(_notify_all(self._channel, payloads))

    def _send_timed_out(self, outcome: Deferred[None]) -> None:
        self._sender.close()
        if not outcome.called:
            outcome.errback(
                TimeoutError(f"no answer within {self._send_timeout:g} seconds")
            )

    # -- listening -------------------------------------------------------------------------

    def _settle_first(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            first.callback(None)

    def _connect(self) -> None:
        """
        One attempt to connect and C{LISTEN}, given up after the connection timeout.
        """
        self._retry = None
        if self._state != "running":
            return
        connection = self._listener = _ListenConnection(self._reactor)
        timer = self._reactor.callLater(self._connect_timeout, connection.dispose)
        attempt: Deferred[Any] = connection.connect(self.url, **self._connect_kwargs)
        attempt.addCallback(lambda _: connection.runOperation(f"LISTEN {self._channel}"))
        attempt.addCallbacks(
            self._listening,
            self._failed,
            callbackArgs=(connection, timer),
            errbackArgs=(connection, timer),
        )

    def _listening(self, _: object, connection: _ListenConnection, timer: Any) -> None:
        if timer.active():
            timer.cancel()
        if self._state != "running" or connection is not self._listener:
            connection.dispose()
            return
        connection.addNotifyObserver(self._notified)
        connection.on_lost = self._lost
        self.connected = True
        if self._listened:
            self.reconnects += 1
        self._listened = True
        if self._failures:
            _log.info("listening on PostgreSQL again")
        else:
            _log.info("listening on PostgreSQL channel {channel}", channel=self._channel)
        self._failures = 0
        self._probe = self._reactor.callLater(self._keepalive, self._send_probe, connection)
        if self._reconnected is not None:
            try:
                self._reconnected()
            except Exception:
                _log.failure("the reconnected callback failed")
        self._settle_first()

    def _failed(self, failure: Failure, connection: _ListenConnection, timer: Any) -> None:
        if timer.active():
            timer.cancel()
        else:
            failure = Failure(
                TimeoutError(f"no answer within {self._connect_timeout:g} seconds")
            )
        connection.dispose()
        if self._state != "running" or connection is not self._listener:
            return
        self._listener = None
        if not self._failures:
            _log.warn(
                "cannot LISTEN on PostgreSQL at {url}, retrying: {reason}",
                url=redact(self.url),
                reason=_why(failure),
            )
        self._schedule_retry()
        self._settle_first()

    def _schedule_retry(self) -> None:
        delay = min(self._max_backoff, FIRST_BACKOFF * 2**self._failures)
        delay *= 0.5 + self._jitter() / 2
        self._failures += 1
        self._retry = self._reactor.callLater(delay, self._connect)

    def _lost(self, connection: _ListenConnection) -> None:
        """
        The listening connection is gone: listen again soon.
        """
        if connection is not self._listener:
            connection.dispose()
            return
        self._listener = None
        self.connected = False
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        connection.dispose()
        if self._state != "running":
            return
        _log.warn("PostgreSQL LISTEN connection of node {node} lost; listening again",
                  node=self.node_id)
        self._failures = 0
        self._schedule_retry()

    def _send_probe(self, connection: _ListenConnection) -> None:
        """
        Ask the listening connection a trivial question; no answer in time means that it
        is gone, even if the socket does not say so.
        """
        self._probe = None
        if connection is not self._listener:
            return
        timer = self._reactor.callLater(self._probe_timeout, self._lost, connection)
        probing: Deferred[Any] = connection.runQuery("SELECT 1")

        def answered(_: object) -> None:
            if not timer.active():
                return
            timer.cancel()
            if connection is self._listener:
                self._probe = self._reactor.callLater(
                    self._keepalive, self._send_probe, connection
                )

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
                _log.warn(
                    "PostgreSQL LISTEN connection failed a probe: {reason}",
                    reason=_why(failure),
                )
                self._lost(connection)

        probing.addCallbacks(answered, failed)

    def _notified(self, notify: Any) -> None:
        if notify.channel != self._channel:
            return
        unpacked = unpack(notify.payload)
        if unpacked is None:
            _log.warn(
                "ignoring a notification on {channel} that is not medichat's",
                channel=self._channel,
            )
            return
        node, messages = unpacked
        receiver = self._receiver
        if receiver is None:
            return
        for message in messages:
            try:
                receiver(node, message)
            except Exception:
                _log.failure("a broadcast receiver failed")


__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_KEEPALIVE",
    "MAX_PAYLOAD",
    "PostgreSQLBroadcast",
    "encode_message",
    "message_room",
    "pack",
    "unpack",
]
