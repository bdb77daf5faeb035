"""
Notifications for offline users, as Standard Webhooks (U{https://www.standardwebhooks.com}).

When a message is committed, its transaction queues a notification in the store's outbox
for each of the conversation's users (its customer, and the employees who wrote in it)
other than the author who has no live subscription to it anywhere (the conversation
service asks L{medichat.interfaces.IPresence} before it commits).  L{WebhookDispatcher}
sends them, at least once, as a POST of a thin event, never the message text::

    {"type": "message.created", "timestamp": "2026-11-30T01:02:03.456789Z",
     "data": {"conversationId": "...", "messageId": "...",
              "recipientUserId": "...", "recipientRole": "customer"}}

signed as the specification says: the headers C{webhook-id} (the same on every attempt),
C{webhook-timestamp} (the attempt's time, Unix seconds) and C{webhook-signature}
(C{v1,} and the base64 HMAC-SHA256, keyed with the base64-decoded C{whsec_} secret, of
C{"<id>.<timestamp>.<body>"}).

Delivery: 2xx is success (the row is deleted).  A timeout, a connection error or any
other status is retried after L{RETRY_DELAYS} (each with +-20 % jitter), then given up
(the row is marked failed, kept for L{FAILED_RETENTION}, and logged).  A C{Retry-After}
header moves the next attempt later; 429, 502 and 504 also pause all sending by this
process for that long (or the row's own delay), as the receiver is overloaded.  410 Gone
means the receiver wants no more: that row is given up and this process stops sending
until it is restarted (what is queued meanwhile stays queued).  A notification older than
L{MAX_AGE} when its turn comes is given up unsent: a push that late helps nobody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from medichat.interfaces import IStore, IWebhookSender
from medichat.model import OutboxEntry, WebhookResponse, compact_json, format_time, micros

__all__ = [
    "EVENT_TYPE",
    "FAILED_RETENTION",
    "MAX_AGE",
    "RETRY_DELAYS",
    "Decision",
    "InvalidSecret",
    "WebhookDispatcher",
    "decide",
    "event_body",
    "parse_secret",
    "sign",
    "signed_headers",
]

_log = Logger()

EVENT_TYPE = "message.created"
"""The one event type medichat sends."""

SECRET_PREFIX = "whsec_"
"""How a Standard Webhooks symmetric secret is marked."""

MIN_SECRET_BYTES = 24
"""The shortest secret the specification allows (192 bits)."""

MAX_SECRET_BYTES = 64
"""The longest secret the specification allows (512 bits)."""

RETRY_DELAYS: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
"""
Seconds before each retry: the first attempt is immediate, then 5 s, 30 s, 2 min, 10 min,
30 min and 1 h (7 attempts over about 1 h 45 min).  Shorter than the specification's
example, which spans three days: a push notification that late is noise.
"""

JITTER = 0.2
"""Each retry delay is spread by up to this fraction either way."""

MAX_RETRY_AFTER = 3600.0
"""The longest C{Retry-After} honoured, in seconds."""

PACED_STATUSES = frozenset({429, 502, 504})
"""Statuses that mean an overloaded receiver: all sending pauses."""

MAX_AGE = 6 * 3600.0
"""Seconds after its message when a notification not yet sent is given up."""

FAILED_RETENTION = 7 * 24 * 3600.0
"""Seconds a given-up notification is kept in the outbox for the operator."""

DEFAULT_TIMEOUT = 15.0
"""Seconds a receiver may take to answer (the specification suggests 15 to 30)."""

DEFAULT_COALESCE = 5.0
"""Seconds during which further messages for a recipient join a waiting notification."""


class InvalidSecret(ValueError):
    """
    A webhook secret that is not C{whsec_} and the base64 of 24 to 64 bytes.
    """


def parse_secret(text: str) -> bytes:
    """
    The signing key of a Standard Webhooks secret, C{whsec_<base64>}.

    @param text: the secret, surrounding white space allowed (a file's newline).
    @raise InvalidSecret: saying what is wrong with it (never repeating it).
    """
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret(f"what follows {SECRET_PREFIX!r} is not base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidSecret(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes,"
            f" not {len(key)}"
        )
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """
    The C{webhook-signature} value: C{v1,} and the base64 HMAC-SHA256 of
    C{"<id>.<timestamp>.<body>"} under C{key}.
    """
    content = b"%s.%d.%s" % (webhook_id.encode("ascii"), timestamp, body)
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def event_body(entry: OutboxEntry) -> bytes:
    """
    The thin C{message.created} event of a notification, as compact JSON.
    """
    event = {
        "type": EVENT_TYPE,
        "timestamp": format_time(entry.occurred),
        "data": {
            "conversationId": entry.conversation_id,
            "messageId": entry.message_id,
            "recipientUserId": entry.recipient_user_id,
            "recipientRole": entry.recipient_role,
        },
    }
    return compact_json(event).encode("utf-8")


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """
    The Standard Webhooks headers of one attempt.
    """
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }


@frozen
class Decision:
    """
    What to do with a notification after an attempt.

    @ivar action: C{"delivered"}, C{"retry"}, C{"failed"} (the schedule is over) or
        C{"gone"} (the receiver answered 410).
    @ivar delay: for C{"retry"}, seconds until the next attempt.
    @ivar pause: seconds during which this process sends nothing at all (0: none).
    @ivar reason: what went wrong, for the row and the log.
    """

    action: str
    delay: float = 0.0
    pause: float = 0.0
    reason: str = ""


def decide(
    attempts: int,
    response: WebhookResponse | None,
    error: str,
    delays: Sequence[float],
    sample: float,
) -> Decision:
    """
    The outcome of an attempt.

    @param attempts: attempts made, this one included.
    @param response: the answer, or L{None} if none came.
    @param error: why none came (when C{response} is L{None}).
    @param delays: the retry schedule (L{RETRY_DELAYS}).
    @param sample: a number in [0, 1), spreading the delay (jitter).
    """
    if response is not None and 200 <= response.status < 300:
        return Decision("delivered")
    reason = error if response is None else f"HTTP {response.status}"
    if response is not None and response.status == 410:
        return Decision("gone", reason=reason)
    if attempts > len(delays):
        return Decision("failed", reason=reason)
    delay = delays[attempts - 1] * (1 + JITTER * (2 * sample - 1))
    pause = 0.0
    if response is not None:
        asked = response.retry_after
        if asked is not None:
            delay = max(delay, min(asked, MAX_RETRY_AFTER))
        if response.status in PACED_STATUSES:
            pause = delay
    return Decision("retry", delay=delay, pause=pause, reason=reason)


class WebhookDispatcher:
    """
    Sends the notifications of the store's outbox to the receiver, at least once.

    Every C{poll_interval} seconds (and at once after a full batch) it claims the due
    notifications, up to C{batch} of them, under a lease that outlasts an attempt, sends
    them together, and records each outcome (L{decide}).  Other processes on the same
    database do the same; the store's claim gives each process different rows.

    @ivar disabled: C{True} once the receiver answered 410 Gone: nothing more is sent
        until the process restarts.
    """

    def __init__(
        self,
        store: IStore,
        sender: IWebhookSender,
        clock: IReactorTime,
        key: bytes,
        *,
        owner: str,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = 1.0,
        batch: int = 20,
        delays: Sequence[float] = RETRY_DELAYS,
        sample: Callable[[], float] = random.random,
    ) -> None:
        """
        @param store: holds the outbox.
        @param sender: posts to the receiver.
        @param clock: gives the time and drives the polls.
        @param key: the signing key (L{parse_secret}).
        @param owner: this process's name on the leases it takes (unique per process).
        @param timeout: the sender's timeout; a lease lasts a minute longer.
        @param poll_interval: seconds between looks for due notifications.
        @param batch: the most notifications claimed and sent at once.
        @param delays: the retry schedule.
        @param sample: numbers in [0, 1) for the jitter.
        """
        self._store = store
        self._sender = sender
        self._clock = clock
        self._key = key
        self._owner = owner
        self._lease = timeout + 60.0
        self._poll_interval = poll_interval
        self._batch = batch
        self._delays = tuple(delays)
        self._sample = sample
        self._loop: LoopingCall | None = None
        self._pruner: LoopingCall | None = None
        self._polling = False
        self._again: IDelayedCall | None = None
        self._paused_until = 0.0
        self._in_flight: set[Deferred[Any]] = set()
        self._running = False
        self.disabled = False

    # -- service

    def start(self) -> Deferred[None]:
        """
        Look for due notifications now and every C{poll_interval} seconds; prune given-up
        ones now and hourly.
        """
        self._running = True
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self._clock
        self._loop.start(self._poll_interval, now=True)
        self._pruner = LoopingCall(self.prune)
        self._pruner.clock = self._clock
        self._pruner.start(3600.0, now=True)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """
        Stop sending.  Attempts under way are cancelled and their notifications given
        back for a later attempt (by this process after a restart, or another one).

        @return: fires once the connections to the receiver are closed.
        """
        self._running = False
        for loop in (self._loop, self._pruner):
            if loop is not None and loop.running:
                loop.stop()
        self._loop = self._pruner = None
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None
        for attempt in list(self._in_flight):
            attempt.cancel()
        return self._sender.close()

    # -- work

    def prune(self) -> Deferred[None]:
        """
        Delete the notifications given up longer than L{FAILED_RETENTION} ago; a failure
        is logged (the next run tries again).
        """
        before = micros(self._clock.seconds() - FAILED_RETENTION)

        async def prune() -> None:
            try:
                count = await self._store.prune_webhooks(before)
            except Exception as e:
                _log.warn("pruning failed webhooks failed: {error}", error=str(e))
                return
            if count:
                _log.info("pruned {count} failed webhooks", count=count)

        return Deferred.fromCoroutine(prune())

    def poll(self) -> Deferred[None]:
        """
        Claim the due notifications and send them; does nothing while a poll is under
        way, while paused, or once disabled.

        @return: fires when the claimed notifications' outcomes are recorded.
        """
        if self._polling or self.disabled or self._clock.seconds() < self._paused_until:
            return succeed(None)
        self._polling = True

        def finished(result: object) -> object:
            self._polling = False
            return result

        return Deferred.fromCoroutine(self._poll()).addBoth(finished)

    async def _poll(self) -> None:
        now = self._clock.seconds()
        try:
            entries = await self._store.claim_webhooks(
                self._owner, micros(now), micros(now + self._lease), self._batch
            )
        except Exception as e:
            _log.warn("claiming webhooks failed: {error}", error=str(e))
            return
        try:
            await gatherResults(
                [Deferred.fromCoroutine(self._attempt(e)) for e in entries], consumeErrors=True
            )
        except Exception:
            # A bug, not a receiver's failure: keep polling (a LoopingCall whose call
            # fails stops); the leases of what was not recorded run out.
            _log.failure("sending webhooks failed")
        if len(entries) == self._batch and self._running:
            # There may be more due now: look again on the next turn.
            self._again = self._clock.callLater(0, self._poll_again)

    def _poll_again(self) -> None:
        self._again = None
        self.poll()

    async def _attempt(self, entry: OutboxEntry) -> None:
        """
        Send one notification and record the outcome; never fails.
        """
        now = self._clock.seconds()
        if now - entry.occurred / 1e6 > MAX_AGE:
            _log.warn(
                "webhook {webhook_id} given up unsent: its message is too old",
                webhook_id=entry.webhook_id,
            )
            await self._record(entry, self._store.webhook_failed(
                entry.seq, self._owner, micros(now), "expired"
            ))
            return
        body = event_body(entry)
        headers = signed_headers(self._key, entry.webhook_id, int(now), body)
        response: WebhookResponse | None = None
        error = ""
        try:
            sending = self._sender.send(headers, body)
        except Exception as e:
            sending = fail(e)
        self._in_flight.add(sending)
        try:
            response = await sending
        except CancelledError:
            error = "cancelled: medichat stopped"
        except Exception as e:
            error = " ".join(str(e).split()) or type(e).__name__
        finally:
            self._in_flight.discard(sending)
        await self._conclude(entry, response, error)

    async def _conclude(
        self, entry: OutboxEntry, response: WebhookResponse | None, error: str
    ) -> None:
        now = self._clock.seconds()
        if not self._running:
            # Stopped while sending: give it back at once, without counting a failure.
            if response is not None and 200 <= response.status < 300:
                await self._record(entry, self._store.webhook_delivered(entry.seq))
            else:
                await self._record(entry, self._store.webhook_retry(
                    entry.seq, self._owner, micros(now), error or "medichat stopped"
                ))
            return
        decision = decide(entry.attempts, response, error, self._delays, self._sample())
        if decision.action == "delivered":
            await self._record(entry, self._store.webhook_delivered(entry.seq))
            return
        if decision.action == "gone":
            self.disabled = True
            _log.error(
                "the webhook receiver answered 410 Gone: medichat sends no more webhooks"
                " until it is restarted (notifications are still queued)"
            )
            await self._record(entry, self._store.webhook_failed(
                entry.seq, self._owner, micros(now), decision.reason
            ))
            return
        if decision.action == "failed":
            _log.warn(
                "webhook {webhook_id} given up after {attempts} attempts: {reason}",
                webhook_id=entry.webhook_id,
                attempts=entry.attempts,
                reason=decision.reason,
            )
            await self._record(entry, self._store.webhook_failed(
                entry.seq, self._owner, micros(now), decision.reason
            ))
            return
        if decision.pause:
            self._paused_until = max(self._paused_until, now + decision.pause)
            _log.info(
                "webhook receiver overloaded ({reason}): pausing for {pause:.0f} s",
                reason=decision.reason,
                pause=decision.pause,
            )
        _log.info(
            "webhook {webhook_id} attempt {attempts} failed ({reason}); next in {delay:.0f} s",
            webhook_id=entry.webhook_id,
            attempts=entry.attempts,
            reason=decision.reason,
            delay=decision.delay,
        )
        await self._record(entry, self._store.webhook_retry(
            entry.seq, self._owner, micros(now + decision.delay), decision.reason
        ))

    async def _record(self, entry: OutboxEntry, writing: Deferred[bool]) -> None:
        """
        Wait for an outcome to be stored; a failure is logged, and the lease running out
        makes the notification due again (it may then be sent twice: at least once).
        """
        try:
            await writing
        except Exception as e:
            _log.warn(
                "recording webhook {webhook_id} failed: {error}",
                webhook_id=entry.webhook_id,
                error=str(e),
            )
