"""
The access log (NEN 7513): who accessed which customer's conversation data, when, how and
from where.

Every access by an employee to conversation data is recorded, append-only, by the store:
in the transaction of the action itself where it writes anyway (a message, a read or
received receipt, the received mark of a view), otherwise in its own transaction before
the data is handed out (a list, a STOMP subscription, an export), so that nothing is seen
without its record.  A row holds the time, the employee's id, name and role, the action,
the conversation and its customer, and the client's address; never message text.
Customers' own actions are not recorded: it is their own data.

A customer reads their own log (L{AccessLog.page}); the privacy officer reads anyone's with
C{medichat-admin audit}.  Rows older than the retention (C{--audit-retention}, five years
by default, never less than two) are deleted by L{AccessLogPruner}.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from medichat.errors import BadRequest, Forbidden, NotFound
from medichat.interfaces import IStore
from medichat.model import AccessEntry, Conversation, User, micros
from medichat.pubsub.feed import EventPruner

__all__ = [
    "DEFAULT_ACCESS_PAGE",
    "DEFAULT_AUDIT_RETENTION",
    "MAX_ACCESS_PAGE",
    "MINIMUM_AUDIT_RETENTION",
    "YEAR",
    "AccessLog",
    "AccessLogPruner",
    "AccessPage",
    "access_entry",
    "conversation_access",
    "decode_access_cursor",
    "encode_access_cursor",
    "parse_retention",
]

_log = Logger()

YEAR = 365.25 * 24 * 3600
"""Seconds in a year, as retention counts them (a Julian year: leap days included)."""

DEFAULT_AUDIT_RETENTION = 5 * YEAR
"""How long access-log rows are kept by default: NEN 7513's five years."""

MINIMUM_AUDIT_RETENTION = 2 * YEAR
"""The shortest retention C{--audit-retention} accepts."""

DEFAULT_ACCESS_PAGE = 50
"""Rows on one page of a customer's access log when no C{limit} is given."""

MAX_ACCESS_PAGE = 1000
"""The largest C{limit} of a customer's access log."""


def access_entry(
    user: User, conversation: Conversation, action: str, at: int
) -> AccessEntry | None:
    """
    The access-log row for C{user} doing C{action} on C{conversation} at C{at}, or
    L{None} for a customer (their own data needs no record).
    """
    return conversation_access(user, conversation.id, conversation.customer_id, action, at)


def conversation_access(
    user: User, conversation_id: str, customer_id: str, action: str, at: int
) -> AccessEntry | None:
    """
    As L{access_entry}, given the conversation's ids; C{customer_id} may be C{""} where
    the store fills it in from the conversation it locks (a message's transaction).
    """
    if not user.is_employee:
        return None
    return AccessEntry(
        at=at,
        employee_id=user.user_id,
        employee_name=user.user_name,
        role=user.user_role,
        action=action,
        conversation_id=conversation_id,
        customer_id=customer_id,
        address=user.address,
    )


# ----------------------------------------------------------------------------------------
# Retention

_DURATION = re.compile(r"^([0-9]{1,12})([smhdy]?)$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "y": YEAR}


def parse_retention(text: str) -> float:
    """
    A retention as C{--audit-retention} takes it: a whole number of seconds, or with a
    unit C{s}, C{m}, C{h}, C{d} (days) or C{y} (years of 365.25 days): C{5y}, C{1827d}.

    @return: seconds.
    @raise ValueError: if C{text} is no such duration, or is shorter than
        L{MINIMUM_AUDIT_RETENTION}.
    """
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: give seconds, or a number with s, m, h, d or y "
            "(years), such as 5y"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds < MINIMUM_AUDIT_RETENTION:
        raise ValueError(
            f"{text} is less than 2 years ({int(MINIMUM_AUDIT_RETENTION)} seconds, "
            "730.5 days); NEN 7513 asks for access logs to be kept for years (5 by default)"
        )
    return seconds


class AccessLogPruner(EventPruner):
    """
    Deletes the access-log rows older than the retention: once at start, then every
    C{interval} seconds (hourly), in batches.
    """

    def prune(self) -> Deferred[None]:
        """
        Delete the rows older than the retention now; failures are logged (the next run
        tries again).
        """
        before = micros(self._clock.seconds() - self.retention)
        d = self._store.prune_access_log(before)

        def pruned(count: int) -> None:
            if count:
                _log.info(
                    "pruned {count} access-log rows older than the retention", count=count
                )

        def failed(failure: Failure) -> None:
            _log.warn("pruning the access log failed: {error}", error=failure.getErrorMessage())

        return d.addCallbacks(pruned, failed)


# ----------------------------------------------------------------------------------------
# A customer's own log


@frozen
class AccessPage:
    """
    One page of a customer's access log, newest first.

    @ivar entries: the rows on this page.
    @ivar next: the cursor of the following (older) page, or L{None} on the last.
    """

    entries: Sequence[AccessEntry]
    next: str | None


def encode_access_cursor(entry: AccessEntry) -> str:
    """
    The opaque paging cursor that points just after C{entry}: URL-safe base64, unpadded,
    of C{"<at microseconds>.<seq>"}.
    """
    raw = f"{entry.at}.{entry.seq}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_access_cursor(cursor: str) -> tuple[int, int]:
    """
    The C{(at, seq)} a cursor from L{encode_access_cursor} points after.

    @raise BadRequest: if C{cursor} did not come from L{encode_access_cursor}.
    """
    malformed = BadRequest("cursor: malformed; use the 'next' value of the previous page")
    if not cursor or len(cursor) > 100 or not cursor.isascii():
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise malformed from None
    at, dot, seq = raw.partition(".")
    # At most 18 digits each: both are 64-bit integers in the store.
    for part in (at, seq):
        if not part.isascii() or not part.isdigit() or len(part) > 18:
            raise malformed
    if not dot:
        raise malformed
    return int(at), int(seq)


@frozen
class AccessLog:
    """
    What a customer may read of the access log: who accessed their conversations.

    @ivar store: where the log is.
    """

    store: IStore

    def page(
        self, user: User, limit: int | None = None, cursor: str | None = None
    ) -> Deferred[AccessPage]:
        """
        One page of the rows about C{user}'s conversations, newest first.

        @param limit: the page size, 1 to L{MAX_ACCESS_PAGE}; L{DEFAULT_ACCESS_PAGE} when
            L{None}.
        @param cursor: the C{next} value of the previous page, or L{None} for the first.
        @raise Forbidden: (asynchronously) for an employee: the log is the customer's.
        @raise BadRequest: (asynchronously) for a bad C{limit} or C{cursor}.
        """

        async def page() -> AccessPage:
            if user.is_employee:
                raise Forbidden("the access log is the customers' own; employees have none")
            if limit is not None and (
                isinstance(limit, bool)
                or not isinstance(limit, int)
                or not 1 <= limit <= MAX_ACCESS_PAGE
            ):
                raise BadRequest(f"limit: must be an integer from 1 to {MAX_ACCESS_PAGE}")
            size = DEFAULT_ACCESS_PAGE if limit is None else limit
            after = None if cursor is None else decode_access_cursor(cursor)
            rows = list(
                await self.store.access_log(
                    customer_id=user.user_id, descending=True, limit=size + 1, after=after
                )
            )
            following = encode_access_cursor(rows[size - 1]) if len(rows) > size else None
            return AccessPage(rows[:size], following)

        return Deferred.fromCoroutine(page())


# ----------------------------------------------------------------------------------------
# Export and erasure (the privacy officer's, through medichat-admin)


def operator_entry(login: str, action: str, at: int) -> AccessEntry:
    """
    The access-log row of an operator's C{action} (C{export}, C{erase}) through
    C{medichat-admin}, run by the system account C{login}; the conversation and customer
    are filled in per conversation.
    """
    return AccessEntry(
        at=at,
        employee_id=f"operator:{login}",
        employee_name=login,
        role="operator",
        action=action,
        conversation_id=None,
        customer_id=None,
        address=None,
    )


async def customer_conversations(store: IStore, customer_id: str) -> list[Conversation]:
    """
    Every conversation of a customer, oldest first.

    @raise NotFound: if the customer has none (medichat knows customers only by their
        conversations).
    """
    found: list[Conversation] = []
    after: tuple[int, str] | None = None
    while True:
        page = list(await store.list_conversations(customer_id, None, False, 500, after))
        found += page
        if len(page) < 500:
            break
        after = (page[-1].created, page[-1].id)
    if not found:
        raise NotFound(f"no customer {customer_id!r}: no conversation has that customer id")
    return found


async def erase_customer(
    store: IStore, customer_id: str, actor: AccessEntry
) -> Sequence[str]:
    """
    Erase a customer's conversations with everything in them; their access-log rows stay,
    and the erasure adds one row per conversation (C{actor} with the ids filled in).

    @return: the ids of the conversations erased.
    @raise NotFound: if the customer has no conversation.
    """
    erased: Sequence[str] = await store.erase_customer(customer_id, actor)
    if not erased:
        raise NotFound(f"no customer {customer_id!r}: no conversation has that customer id")
    _log.info(
        "erased customer {customer}: {count} conversations, by {operator}",
        customer=customer_id,
        count=len(erased),
        operator=actor.employee_name,
    )
    return erased
