"""
The webhook outbox (migration 0008), as transaction scripts (see
L{medichat.store.scripts}) and the L{WebhookOperations} that both stores mix in.

A message's transaction queues one row per user it concerns who has no live subscription
to the conversation (L{queue_notifications}, a step of the message script); the delivery
service (L{medichat.domain.webhooks}) claims due rows under a lease, sends them, and then
deletes them, schedules another attempt, or gives them up.

Claiming is safe with several processes: on PostgreSQL the claim reads the due rows
C{FOR UPDATE SKIP LOCKED}, so that two processes claiming at once take different rows
without waiting for each other, and the lease it writes (owner and expiry) keeps a claimed
row from being claimed again while its owner sends it.  A process that dies mid-send
leaves a lease that runs out; the row is then claimed again (at least once).  SQLite has
one writer, which C{BEGIN IMMEDIATE} makes wait for the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred

from medichat.model import Message, OfflineNotice, OutboxEntry, Role, new_id

if TYPE_CHECKING:
    # Only for annotations: the message script in medichat.store.scripts runs
    # queue_notifications, so that module imports this one.
    from medichat.store.scripts import Dialect, Script

__all__ = ["WebhookOperations", "queue_notifications"]

_ENTRY_COLUMNS = (
    "seq, webhook_id, conversation_id, message_id, recipient_user_id, recipient_role,"
    " occurred, attempts, coalesced"
)

_MAX_ERROR = 500
"""The longest error text kept with a row (a receiver's reason may be long)."""


def _skip_locked(dialect: Dialect) -> str:
    """
    Lock the rows a C{SELECT} reads, passing over those another transaction holds
    (PostgreSQL); nothing where the writer holds the whole database.
    """
    return " FOR UPDATE SKIP LOCKED" if dialect.name == "postgresql" else ""


def webhook_id() -> str:
    """A new Standard Webhooks message id: C{msg_} and 32 hex digits (no C{.} in it)."""
    return "msg_" + new_id().replace("-", "")


def entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    """An L{OutboxEntry} from a row of L{_ENTRY_COLUMNS}."""
    seq, id_, conversation_id, message_id, user_id, role, occurred, attempts, coalesced = row
    return OutboxEntry(
        seq=int(seq),
        webhook_id=id_,
        conversation_id=conversation_id,
        message_id=message_id,
        recipient_user_id=user_id,
        recipient_role=cast(Role, role),
        occurred=int(occurred),
        attempts=int(attempts),
        coalesced=int(coalesced),
    )


def queue_notifications(
    dialect: Dialect, message: Message, notice: OfflineNotice | None
) -> Script[int]:
    """
    The message script's step for webhooks: remember an employee author as one of the
    conversation's users, and, given a C{notice}, queue a notification for each of its
    users (its customer, and the employees who wrote in it) other than the author and
    those with a live subscription.  Call with the conversation's row locked.

    With C{notice.coalesce}, a recipient who already has a notification of this
    conversation waiting (never claimed) gets that one updated to this message instead
    of a new one.

    @return: how many notifications it queued or updated.
    """
    if message.user_role == "employee":
        # Nothing reads its result: on PostgreSQL it goes with the next statement.
        yield dialect.prepared(
            "INSERT INTO conversation_employees (conversation_id, user_id) VALUES (?, ?)"
            " ON CONFLICT (conversation_id, user_id) DO NOTHING",
            message.conversation_id,
            message.user_id,
            later=True,
        )
    if notice is None:
        return 0
    result = yield dialect.statement(
        "SELECT customer_id, 'customer' FROM conversations WHERE id = ?"
        " UNION ALL SELECT user_id, 'employee' FROM conversation_employees"
        " WHERE conversation_id = ?",
        message.conversation_id,
        message.conversation_id,
    )
    recipients: dict[str, str] = {}
    for user_id, role in result.rows:
        recipients.setdefault(str(user_id), str(role))
    queued = 0
    for user_id in sorted(recipients):
        if user_id == message.user_id or user_id in notice.live:
            continue
        key = f"{message.conversation_id} {user_id}" if notice.coalesce else None
        yield dialect.statement(
            "INSERT INTO webhook_outbox (webhook_id, conversation_id, message_id,"
            " recipient_user_id, recipient_role, occurred, due, pending_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (pending_key) DO UPDATE SET message_id = excluded.message_id,"
            " occurred = excluded.occurred, coalesced = webhook_outbox.coalesced + 1",
            webhook_id(),
            message.conversation_id,
            message.id,
            user_id,
            recipients[user_id],
            message.created,
            notice.due,
            key,
        )
        queued += 1
    return queued


def claim(
    dialect: Dialect, owner: str, now: int, lease_until: int, limit: int
) -> Script[list[OutboxEntry]]:
    """
    Claim up to C{limit} rows due at C{now} whose lease (if any) ran out, oldest due
    first: lease them to C{owner} until C{lease_until}, count the attempt, and end their
    coalescing window.
    """
    result = yield dialect.statement(
        "SELECT seq FROM webhook_outbox WHERE failed IS NULL AND due <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY due, seq LIMIT ?"
        + _skip_locked(dialect),
        now,
        now,
        max(0, limit),
    )
    entries = []
    for (seq,) in result.rows:
        updated = yield dialect.statement(
            "UPDATE webhook_outbox SET lease_owner = ?, lease_until = ?,"
            " attempts = attempts + 1, pending_key = NULL WHERE seq = ?"
            f" RETURNING {_ENTRY_COLUMNS}",
            owner,
            lease_until,
            seq,
        )
        entries.append(entry_from_row(updated.rows[0]))
    return entries


def delivered(dialect: Dialect, seq: int) -> Script[bool]:
    """Remove a delivered row; C{True} if it was there."""
    result = yield dialect.statement("DELETE FROM webhook_outbox WHERE seq = ?", seq)
    return result.rowcount > 0


def retry_later(dialect: Dialect, seq: int, owner: str, due: int, error: str) -> Script[bool]:
    """
    Give a row back for another attempt at C{due}, if C{owner} still holds its lease.
    """
    result = yield dialect.statement(
        "UPDATE webhook_outbox SET due = ?, lease_owner = NULL, lease_until = NULL,"
        " last_error = ? WHERE seq = ? AND lease_owner = ?",
        due,
        error[:_MAX_ERROR],
        seq,
        owner,
    )
    return result.rowcount > 0


def give_up(dialect: Dialect, seq: int, owner: str, now: int, error: str) -> Script[bool]:
    """
    Mark a row failed for good at C{now}, if C{owner} still holds its lease.
    """
    result = yield dialect.statement(
        "UPDATE webhook_outbox SET failed = ?, lease_owner = NULL, lease_until = NULL,"
        " last_error = ? WHERE seq = ? AND lease_owner = ?",
        now,
        error[:_MAX_ERROR],
        seq,
        owner,
    )
    return result.rowcount > 0


def prune_failed(dialect: Dialect, before: int) -> Script[int]:
    """Delete the rows given up before C{before}."""
    result = yield dialect.statement(
        "DELETE FROM webhook_outbox WHERE failed IS NOT NULL AND failed < ?", before
    )
    return result.rowcount


class WebhookOperations:
    """
    The webhook outbox methods of L{medichat.interfaces.IStore}, mixed into the SQL
    stores (which provide C{_dialect} and C{_run}).
    """

    _dialect: Dialect
    _run: Callable[..., Deferred[Any]]

    def claim_webhooks(
        self, owner: str, now: int, lease_until: int, limit: int
    ) -> Deferred[Sequence[OutboxEntry]]:
        """See L{medichat.interfaces.IStore.claim_webhooks}."""
        return self._run(claim(self._dialect, owner, now, lease_until, limit), True)

    def webhook_delivered(self, seq: int) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.webhook_delivered}."""
        return self._run(delivered(self._dialect, seq), True)

    def webhook_retry(self, seq: int, owner: str, due: int, error: str) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.webhook_retry}."""
        return self._run(retry_later(self._dialect, seq, owner, due, error), True)

    def webhook_failed(self, seq: int, owner: str, now: int, error: str) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.webhook_failed}."""
        return self._run(give_up(self._dialect, seq, owner, now, error), True)

    def prune_webhooks(self, before: int) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.prune_webhooks}."""
        return self._run(prune_failed(self._dialect, before), True)
