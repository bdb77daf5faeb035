"""
Value objects shared by the store, the domain services and the edges (REST, STOMP).

Times are integer microseconds since the POSIX epoch (UTC) inside medichat, so that a time
survives a round trip through RFC 3339 text exactly (a client's C{created=ge=} recovery query
must find the very message it took the time from).  They are only turned into RFC 3339
strings at the edges, by L{format_time}, and read back by L{parse_time}.  Ids are UUID
strings (lower case, with hyphens).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
import unicodedata
from typing import Any, Literal

from attrs import Factory, field, frozen

Role = Literal["customer", "employee"]

Status = Literal["open", "resolved"]

STATUSES: tuple[Status, ...] = ("open", "resolved")

ROLES: tuple[Role, ...] = ("customer", "employee")


@frozen
class User:
    """
    An authenticated person: the avatar that the realm hands to the STOMP session and REST.

    @ivar user_id: stable id of the person (the JWT C{sub}, or the employee's id).
    @ivar user_name: display name.
    @ivar user_role: C{"customer"} or C{"employee"}.
    @ivar expires_at: time (microseconds) when the credential that proved this identity expires, or
        L{None} if it does not expire by itself.
    @ivar session_id: for cookie-authenticated employees, the id of the login session, so
        that logout or disablement can end live connections; L{None} otherwise.
    @ivar address: the client's address (behind trusted proxies, the forwarded one) of the
        request or connection this avatar acts through, for the access log; the edges set
        it (L{at}), the realm leaves it L{None}.
    """

    user_id: str
    user_name: str
    user_role: Role
    expires_at: int | None = None
    session_id: str | None = None
    address: str | None = None

    @property
    def is_employee(self) -> bool:
        """C{True} for employees (nurses)."""
        return self.user_role == "employee"

    def at(self, address: str | None) -> User:
        """
        This user acting from C{address}: C{attrs.evolve(self, address=address)}, made
        directly (a third of the cost: once a request).
        """
        return User(self.user_id, self.user_name, self.user_role, self.expires_at,
                    self.session_id, address)

    def as_json(self) -> dict[str, str]:
        """The C{/v1/me} shape: C{userId}, C{userName}, C{userRole}."""
        return {"userId": self.user_id, "userName": self.user_name, "userRole": self.user_role}


@frozen
class Conversation:
    """
    A conversation between one customer and the care team.

    @ivar status: C{"open"} (new ones, and any a customer writes to) or C{"resolved"}.
    @ivar assignee_id: the employee who claimed it, or C{""} when nobody has.
    @ivar assignee_name: that employee's name, or C{""}.
    @ivar last_activity: the time of its newest message, or its C{created} before the
        first; it only moves forward.
    """

    id: str
    created: int
    customer_id: str
    customer_name: str
    status: Status = "open"
    assignee_id: str = ""
    assignee_name: str = ""
    last_activity: int = field(default=Factory(lambda self: self.created, takes_self=True))

    def after_message(self, created: int, by_customer: bool) -> Conversation | None:
        """
        What a new message does to this conversation's triage: its last activity moves
        forward to the message's time and, if a customer wrote it, a resolved conversation
        opens again.  (The same rule as the SQL of L{medichat.store.scripts}'
        C{_message_activity}, which the stores run where they do not use this.)

        @return: the conversation after the message, or L{None} if neither changed.
        """
        status: Status = "open" if by_customer else self.status
        if self.last_activity >= created and status == self.status:
            return None
        return Conversation(self.id, self.created, self.customer_id, self.customer_name,
                            status, self.assignee_id, self.assignee_name,
                            max(self.last_activity, created))

    def triage_json(self) -> dict[str, Any]:
        """
        What triage adds to the conversation's JSON: C{status}, C{assigneeId},
        C{assigneeName} (both L{None} when unassigned) and C{lastActivity}.
        """
        return {
            "status": self.status,
            "assigneeId": self.assignee_id or None,
            "assigneeName": self.assignee_name or None,
            "lastActivity": format_time(self.last_activity),
        }

    def as_json(self) -> dict[str, Any]:
        """
        The conversation without messages or receipts: C{id}, C{created}, C{customerId},
        C{customerName}, then L{triage_json}'s keys.
        """
        result: dict[str, Any] = {
            "id": self.id,
            "created": format_time(self.created),
            "customerId": self.customer_id,
            "customerName": self.customer_name,
        }
        result.update(self.triage_json())
        return result


@frozen
class TriageChange:
    """
    What a change of a conversation's status or assignee found and left.

    @ivar before: the conversation as it was (locked) when the change was decided.
    @ivar after: as it was left; equal to C{before} when nothing changed.
    """

    before: Conversation
    after: Conversation

    @property
    def changed(self) -> bool:
        """C{True} if anything was written."""
        return self.before != self.after


@frozen
class Overview:
    """
    What one user sees of a conversation in the list, besides the conversation.

    @ivar unread: messages by others created after the user's read time (all of them if
        the user never read it).
    @ivar last_message: its newest message, or L{None} if it has none.
    """

    unread: int
    last_message: Message | None


@frozen
class Message:
    """
    One chat message, exactly the object inside the seed's C{message} event.

    @ivar seq: store-assigned, strictly increasing commit sequence; breaks ties between
        messages with the same C{created} and gives the paging cursor.
    """

    id: str
    conversation_id: str
    created: int
    user_id: str
    user_name: str
    user_role: Role
    message: str
    seq: int = 0

    def with_seq(self, seq: int) -> Message:
        """
        This message with its C{seq}: C{attrs.evolve(self, seq=seq)}, made directly (a
        third of the cost: once a message, in its transaction).
        """
        return Message(self.id, self.conversation_id, self.created, self.user_id,
                       self.user_name, self.user_role, self.message, seq)

    def as_json(self) -> dict[str, str]:
        """The seed's message object (key order as in the seed)."""
        return {
            "userId": self.user_id,
            "userName": self.user_name,
            "userRole": self.user_role,
            "id": self.id,
            "created": format_time(self.created),
            "message": self.message,
        }


@frozen
class MessageCommit:
    """
    One chat message and what must be committed with it, in the same transaction
    (L{medichat.interfaces.IStore.commit_message}).

    @ivar message: the message, as posted (its C{seq} is assigned by the store); its
        C{user_id} and C{user_role} are the poster's.
    @ivar idempotency_key: the poster's key, or L{None}; a key this poster used before in
        this conversation commits nothing and answers with the first message.
    @ivar received_by: the other users to mark the conversation received for, at the
        message's time (the users subscribed to it); L{None} for every user that the
        store's shared presence tables list as subscribed, read in the transaction
        (several processes on one database), the poster excepted.
    @ivar check_participant: refuse (commit nothing, answer L{None}) unless the poster
        takes part in the conversation: its customer, or any employee.  L{False} only
        for callers that checked already.
    @ivar access: the access-log row (NEN 7513) of an employee's message, recorded in
        the same transaction, a replay included; its C{customer_id} is filled in by the
        store from the conversation.  L{None} for a customer's message.
    @ivar notice: with webhooks on, what the transaction needs to queue notifications for
        the conversation's users who are not subscribed to it (L{OfflineNotice}).
    """

    message: Message
    idempotency_key: str | None = None
    received_by: tuple[str, ...] | None = ()
    check_participant: bool = True
    access: AccessEntry | None = None
    notice: OfflineNotice | None = None


@frozen
class MessageCommitted:
    """
    What committing a L{MessageCommit} did.

    @ivar message: the stored message (with its C{seq}), or for a replayed idempotency
        key the first message stored with it.
    @ivar created: C{False} for a replay, which committed nothing.
    @ivar received: the users whose received time moved (each with a C{received} event),
        in the order their events were written.
    """

    message: Message
    created: bool
    received: tuple[str, ...] = ()


@frozen
class Receipt:
    """
    When a user last read, or last received, a conversation.
    """

    conversation_id: str
    user_id: str
    at: int


@frozen
class StoredEvent:
    """
    A durable conversation event (C{message}, C{read} or C{received}) as the store keeps
    it, committed with the change it reports.

    @ivar position: global, gap-free, in commit order across every conversation.
    @ivar conversation_id: the conversation it belongs to.
    @ivar offset: its place in the conversation's stream: 1, 2, 3, ... in commit order
        (the C{x-stream-offset} of its STOMP C{MESSAGE} frames).
    @ivar kind: C{"message"}, C{"read"} or C{"received"}.
    @ivar body: the event's JSON text, exactly as published (L{event_json}).
    @ivar created: when it happened, microseconds since the epoch.
    """

    position: int
    conversation_id: str
    offset: int
    kind: str
    body: str
    created: int


def message_event(message: Message) -> dict[str, Any]:
    """The seed's C{message} event for a stored message."""
    return {"message": message.as_json()}


def receipt_event(kind: str, user_id: str, at: int) -> dict[str, Any]:
    """
    The seed's C{read} (C{{"read": {"userId", "readAt"}}}) or C{received}
    (C{{"received": {"userId", "receivedAt"}}}) event.
    """
    key = "readAt" if kind == "read" else "receivedAt"
    return {kind: {"userId": user_id, key: format_time(at)}}


CONVERSATION_FEED_KINDS = frozenset({"conversationCreated", "conversationUpdated"})
"""The events of the employees' feed of conversations (C{/v1/topic/conversations})."""


def conversation_created_event(conversation: Conversation) -> dict[str, Any]:
    """
    C{{"conversationCreated": {...}}}: the new conversation, as L{Conversation.as_json}.
    """
    return {"conversationCreated": conversation.as_json()}


def conversation_updated_event(conversation: Conversation) -> dict[str, Any]:
    """
    C{{"conversationUpdated": {"id", "status", "assigneeId", "assigneeName",
    "lastActivity"}}}: the conversation's triage state after a change of it.
    """
    return {"conversationUpdated": {"id": conversation.id, **conversation.triage_json()}}


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)
"""Made once: C{json.dumps} with any option makes an encoder per call, a third of its
cost for an event's few fields.  No check for circular values: every value encoded here
is a tree that medichat built (a circular one would fail with C{RecursionError})."""

# JSONEncoder.encode makes CPython's C encoder anew for every value it encodes, and goes
# through two Python methods to get there: the C encoder made once, with the same
# options, writes the same text for 70 % of the instructions (8 K fewer for a message
# event; four such texts a chat message).  Where the json module has no C encoder, the
# JSONEncoder above does it.
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_encode_compact = None if _C_ENCODER is None else _C_ENCODER(
    None, _COMPACT.default, json.encoder.encode_basestring, None, ":", ",", False, False,
    True,
)


def compact_json(value: Any) -> str:
    """
    C{value} as compact JSON text: no spaces, key order kept, non-ASCII as is.
    """
    if _encode_compact is None:
        return _COMPACT.encode(value)
    return "".join(_encode_compact(value, 0))


def event_json(event: dict[str, Any]) -> str:
    """
    An event's JSON text as published: compact, key order kept, non-ASCII as is.
    """
    if _encode_compact is None:
        return _COMPACT.encode(event)
    return "".join(_encode_compact(event, 0))


ACCESS_ACTIONS = (
    "view",
    "list",
    "subscribe",
    "message",
    "read",
    "received",
    "claim",
    "release",
    "resolve",
    "reopen",
    "export",
    "erase",
)
"""The actions the access log records (L{AccessEntry.action}); see docs/compliance.md."""


@frozen
class AccessEntry:
    """
    One row of the access log (NEN 7513): an employee's (or an operator's) access to a
    customer's conversation data.  Never the data itself.

    @ivar at: when, microseconds since the epoch.
    @ivar employee_id: who: the employee's id (C{operator:<login>} for C{medichat-admin}).
    @ivar employee_name: their name at the time.
    @ivar role: C{"employee"}, or C{"operator"} for C{medichat-admin}.
    @ivar action: one of L{ACCESS_ACTIONS}.
    @ivar conversation_id: the conversation accessed.
    @ivar customer_id: whose data it is: the conversation's customer.
    @ivar address: the client's address, or L{None} (a local command).
    @ivar seq: assigned by the store; with C{at}, orders and pages the log.
    """

    at: int
    employee_id: str
    employee_name: str
    role: str
    action: str
    conversation_id: str | None
    customer_id: str | None
    address: str | None
    seq: int = 0

    def of_customer(self, customer_id: str | None) -> AccessEntry:
        """
        This entry with its customer: C{attrs.evolve(self, customer_id=customer_id)},
        made directly (a third of the cost: once an employee's message, in its
        transaction).
        """
        return AccessEntry(self.at, self.employee_id, self.employee_name, self.role,
                           self.action, self.conversation_id, customer_id, self.address,
                           self.seq)


@frozen
class Employee:
    """
    An employee account.  The password hash never leaves the store and the auth module.
    """

    id: str
    email: str
    name: str
    password_hash: str
    disabled: bool
    created: int
    last_login: int | None


@frozen
class LoginSession:
    """
    An employee's login session; only the hash of its token is stored.
    """

    id: str
    employee_id: str
    token_hash: str
    created: int
    expires_at: int
    revoked: bool


@frozen
class PresenceChange:
    """
    What a change of presence shared by several processes means to everyone, as the store
    decided it: who appeared in or left a conversation (on every node), and the new number
    of employees online if it changed.

    @ivar connected: C{(conversation_id, user_id)} pairs whose first subscription appeared.
    @ivar disconnected: C{(conversation_id, user_id)} pairs whose last subscription ended.
    @ivar online: the distinct employees online now, or L{None} if that did not change.
    """

    connected: tuple[tuple[str, str], ...] = ()
    disconnected: tuple[tuple[str, str], ...] = ()
    online: int | None = None


@frozen
class NodePresence:
    """
    One open STOMP session as the process holding it knows it, to restore its presence.

    @ivar joined: C{(conversation_id, subscriptions, position)} for each conversation it
        subscribes to.
    """

    session_key: str
    user_id: str
    employee: bool
    joined: tuple[tuple[str, int, int], ...] = ()


@frozen
class OfflineNotice:
    """
    What the transaction that stores a message needs in order to queue webhook
    notifications for the users it concerns who are not there to see it (the outbox of
    L{medichat.store.webhook_scripts}).

    @ivar live: the users with a live subscription to the conversation when the message
        was committed (anywhere in the cluster): they are not notified.
    @ivar due: when the notification may leave (microseconds); with coalescing, the end of
        the window in which further messages for the same recipient join it.
    @ivar coalesce: whether further messages for the same recipient in the same
        conversation join a notification that has not been sent yet.
    """

    live: frozenset[str]
    due: int
    coalesce: bool = True


@frozen
class OutboxEntry:
    """
    One webhook notification claimed from the outbox for an attempt.

    @ivar seq: its row.
    @ivar webhook_id: the Standard Webhooks C{webhook-id}, the same on every attempt.
    @ivar conversation_id: the conversation with a new message.
    @ivar message_id: the newest message it reports (of C{coalesced} messages).
    @ivar recipient_user_id: whom it concerns.
    @ivar recipient_role: C{"customer"} or C{"employee"}.
    @ivar occurred: when the newest message it reports was created (microseconds).
    @ivar attempts: attempts made, this one included.
    @ivar coalesced: how many messages it reports.
    """

    seq: int
    webhook_id: str
    conversation_id: str
    message_id: str
    recipient_user_id: str
    recipient_role: Role
    occurred: int
    attempts: int
    coalesced: int = 1


@frozen
class WebhookResponse:
    """
    What a webhook receiver answered.

    @ivar status: the HTTP status code.
    @ivar retry_after: the seconds its C{Retry-After} header asked for, or L{None}.
    """

    status: int
    retry_after: float | None = None


class _RandomIds:
    """
    Fresh random (version 4) UUID strings, as C{str(uuid.uuid4())} makes them, from the
    operating system's random bytes as C{uuid4} takes them, but read for 256 ids at a
    time: C{uuid4} asks the kernel once an id, and the call lets go of the GIL, which in a
    busy server hands it to the database thread and waits to get it back (a chat message
    takes one id).  Safe in threads; a forked child never reuses its parent's bytes.

    L{time_ordered} makes RFC 9562 version 7 UUIDs from the same bytes, for the rows
    that are indexed by id and made by the thousand (chat messages).
    """

    _IDS_PER_READ = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def forget(self) -> None:
        """Drop the bytes read (in a forked child: they are its parent's too)."""
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def _random(self) -> int:
        """128 random bits."""
        with self._lock:
            at = self._at
            if at >= len(self._bytes):
                self._bytes = os.urandom(16 * self._IDS_PER_READ)
                at = 0
            self._at = at + 16
            return int.from_bytes(self._bytes[at:at + 16], "big")

    def __call__(self) -> str:
        # RFC 4122's version (4) and variant (10xx) bits, as uuid.UUID(version=4) sets them.
        return _uuid_text((self._random() & _UUID_KEEP) | _UUID_SET)

    def time_ordered(self, millis: int) -> str:
        """
        A fresh version 7 UUID string (RFC 9562): C{millis}, milliseconds since the epoch,
        in its first 48 bits, then the version, 74 random bits and the variant.

        Ids made later sort after ids made earlier (to the millisecond, as text too), so a
        table's index on them grows at its end, as an index on a counter does: a random
        id lands anywhere in the index, touching a page of its own (written whole to
        SQLite's WAL, or PostgreSQL's) and, once the index outgrows the cache, reading
        one.  What it tells about when it was made is its row's own C{created}, to the
        millisecond, which whoever sees the id sees too.

        @param millis: milliseconds since the epoch; a time before 1970 counts as 1970,
            and one after the year 10889 as then (the ids stay unique, random bits
            apart: only their order is no longer the time's).
        """
        millis = min(max(millis, 0), _V7_TIME_LIMIT - 1)
        number = (self._random() & _V7_KEEP) | (millis << 80) | _V7_SET
        return _uuid_text(number)


def _uuid_text(number: int) -> str:
    text = f"{number:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_UUID_KEEP = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)
# Version 7: the time in the top 48 bits, then the version (0111) and the variant (10xx);
# the rest random.
_V7_TIME_LIMIT = 1 << 48
_V7_KEEP = ((1 << 80) - 1) & _UUID_KEEP
_V7_SET = (0x7000 << 64) | (0x8000 << 48)

new_id = _RandomIds()
"""A fresh random UUID string (version 4): C{new_id()}."""

new_time_id = new_id.time_ordered
"""A fresh time-ordered UUID string (version 7) for a time in milliseconds:
C{new_time_id(created // 1000)}."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_id.forget)


def micros(seconds: float) -> int:
    """Convert POSIX seconds (as from C{IReactorTime.seconds()}) to integer microseconds."""
    return int(round(seconds * 1_000_000))


def format_time(us: int) -> str:
    """
    RFC 3339 UTC with C{Z}; microseconds only when non-zero (as in the seed's examples).

    Every event and message shape holds a time, so this is on the path of every message:
    built from integer arithmetic (the date part remembered for the last day seen) rather
    than C{datetime.strftime}, with the same text; times outside 1970-9999 take the
    general path.  The last time made is remembered too: a chat message's time is in its
    event, its receipts' events, its conversation's new activity and its answer.
    """
    global _last_time
    if type(us) is int and 0 <= us < _FAST_TIME_LIMIT:
        last = _last_time
        if last[0] == us:
            return last[1]
        seconds, fraction = divmod(us, 1_000_000)
        days, second = divmod(seconds, 86_400)
        day = _last_day
        if day[0] != days:
            date = datetime.date.fromordinal(_EPOCH_ORDINAL + days)
            day = (days, f"{date.year:04d}-{date.month:02d}-{date.day:02d}T")
            _remember_day(day)
        hour, second = divmod(second, 3600)
        minute, second = divmod(second, 60)
        if fraction:
            text = f"{day[1]}{hour:02d}:{minute:02d}:{second:02d}.{fraction:06d}Z"
        else:
            text = f"{day[1]}{hour:02d}:{minute:02d}:{second:02d}Z"
        # One tuple, replaced whole: a thread reading it meanwhile sees a pair that belongs.
        _last_time = (us, text)
        return text
    return _format_time_general(us)


def _format_time_general(us: int) -> str:
    dt = _EPOCH + datetime.timedelta(microseconds=us)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


_last_day: tuple[int, str] = (-1, "")
_last_time: tuple[int, str] = (-1, "")


def _remember_day(day: tuple[int, str]) -> None:
    global _last_day
    _last_day = day


def parse_time(text: str) -> int:
    """
    Parse an RFC 3339 timestamp (C{Z} or a numeric offset; up to 6 fractional digits) into
    microseconds.

    @raise ValueError: if C{text} is not such a timestamp.
    """
    t = text.strip()
    if not _RFC3339.match(t):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    if t[-1] in "zZ":
        t = t[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(t.replace("t", "T"))
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_FAST_TIME_LIMIT = (datetime.date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * 86_400_000_000
"""Microseconds from the epoch to the start of year 10000."""
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})$"
)


_CANONICAL_UUID = re.compile(
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_uuid(text: str) -> bool:
    """
    C{True} if C{text} is a UUID in its canonical hyphenated form (any case): what
    C{str(uuid.UUID(text)) == text.lower()} says, without making a L{uuid.UUID} (a
    tenth of the time; every request naming a conversation asks).
    """
    return isinstance(text, str) and _CANONICAL_UUID.fullmatch(text) is not None


# What a display name may not hold: C0 and C1 controls and DEL (terminal escapes, line
# breaks in logs and headers), U+2028/2029 (line breaks in JavaScript and JSON viewers),
# and bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069), which
# let a name reorder the text around it ("Eve\u202egnp.exe" shows as "Eveexe.png").
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# Characters that show nothing although they are neither whitespace nor format
# characters (Unicode category Cf, which covers the zero-width spaces and joiners, U+2060-2064,
# U+FEFF, the soft hyphen, ...): the combining grapheme joiner, Hangul fillers, the blank
# Braille pattern, Khmer inherent vowels and variation selectors.
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
)

DISPLAY_NAME_RULE = (
    "must not contain control characters, line or paragraph separators, or bidirectional "
    "overrides or isolates"
)
"""What L{is_display_name} refuses, for error messages (C{"name " + DISPLAY_NAME_RULE})."""


def is_unicode(text: str) -> bool:
    """
    C{False} if C{text} holds lone surrogates (which JSON's C{\\ud800} escapes can make),
    which no database or client could store or show.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_display_name(text: str) -> bool:
    """
    C{True} if C{text} may be shown as a person's name: valid Unicode without control
    characters, line or paragraph separators, or bidirectional overrides or isolates.
    """
    return _NOT_IN_NAMES.search(text) is None and is_unicode(text)


def is_blank(text: str) -> bool:
    """
    C{True} if C{text} shows nothing: it is empty, or only whitespace and invisible
    characters (zero-width spaces and joiners, U+2060, U+FEFF, other format characters,
    fillers).
    """
    return all(
        c.isspace() or c in _INVISIBLE or unicodedata.category(c) == "Cf" for c in text
    )
