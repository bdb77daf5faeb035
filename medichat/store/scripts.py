"""
What the SQLite and the PostgreSQL store share: migrations, SQL, row mapping, and the
logic of every L{IStore} operation.

Each operation is written once, as a I{transaction script}: a generator that yields
L{Statement}s and is sent back each one's L{Result}, and whose return value is the
operation's.  A script does no I/O of its own, so the SQLite store drives it synchronously
in its database thread and the PostgreSQL store drives it asynchronously over
txpostgres, each inside one transaction.  What differs between the two SQL dialects is in
L{Dialect}.

SQL is only ever built from constants and from the fragments that L{medichat.rsql.to_sql}
compiles; every value travels as a parameter.  The constants here are written with C{?}
placeholders, which L{Dialect.sql} turns into the driver's own.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import sys
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

from attrs import define, evolve, frozen
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from medichat import rsql
from medichat.errors import DuplicateError, MissingDatabase, StoreError, StoreUnavailable
from medichat.model import (
    CONVERSATION_FEED_KINDS,
    STATUSES,
    AccessEntry,
    Conversation,
    Employee,
    LoginSession,
    Message,
    MessageCommit,
    MessageCommitted,
    OfflineNotice,
    Overview,
    Receipt,
    Role,
    Status,
    StoredEvent,
    TriageChange,
    conversation_created_event,
    conversation_updated_event,
    event_json,
    message_event,
    micros,
    parse_time,
    receipt_event,
)
from medichat.store.webhook_scripts import queue_notifications

T = TypeVar("T")

_log = Logger()


# Statement, Written and Result are made for every statement of every chat message, so
# they are attrs classes without attrs' freezing, which sets each field through
# object.__setattr__: 0.45 against 1.29 µs a Statement, 0.31 against 1.07 a Result
# (timeit).  Nothing changes them once made.
@define
class Statement:
    """
    One SQL statement of a transaction script.

    @ivar sql: the SQL text, with the driver's placeholders.
    @ivar params: one value per placeholder.
    @ivar several: C{True} for a whole migration file: several statements separated by
        C{;}, without parameters.
    @ivar prepare: worth preparing once per connection and executing many times (a
        statement of every chat message); PostgreSQL does, where it can type every
        parameter from the statement alone (L{Dialect.prepared}).  SQLite's driver
        caches its prepared statements by text itself (the last 128), so the flag changes
        nothing there.
    @ivar later: the script does not read what it gives back (an C{INSERT} whose rows
        nobody needs): a driver may send it together with the statement after it, or
        with the C{COMMIT}, and give the script an empty L{Result} at once.  An error it
        raises fails the transaction all the same, one round trip later.  PostgreSQL
        does (one round trip less for each); SQLite runs it at once.
    @ivar read_back: for the transaction's last statement (the script yields nothing
        after it but L{Written}), a query without parameters that reads what it gave back
        again once the transaction has committed: the statement keeps its result where
        the session can read it after the commit (a setting of the session, say).  A
        driver may send the statement, the C{COMMIT} and this query in one round trip and
        give the script what the query read (PostgreSQL does); or run the statement as
        any other and give the script its own result, which is the same.
    """

    sql: str
    params: tuple[object, ...] = ()
    several: bool = False
    prepare: bool = False
    later: bool = False
    read_back: str | None = None


@define
class Written(Statement):
    """
    Not SQL: the durable events that the script has just written (L{_append_events}).
    L{SQLStore} takes it out of the script before any driver sees it and, once the
    transaction has committed, hands the events to its listener (L{SQLStore.hand_off}).

    @ivar events: in position order.
    """

    events: tuple[StoredEvent, ...] = ()


def _taking_written(script: Script[T], written: list[StoredEvent]) -> Script[T]:
    """
    C{script} without its L{Written} steps, whose events go to C{written}; what the
    driver sends back and what the script returns pass through.
    """
    try:
        step = next(script)
        while True:
            if type(step) is Written:
                written.extend(step.events)
                step = script.send(_NOTHING)
            else:
                step = script.send((yield step))
    except StopIteration as stop:
        value: T = stop.value
        return value
    finally:
        script.close()


@define
class Result:
    """
    What a L{Statement} gave back.

    @ivar rows: the rows it returned (empty for statements that return none).
    @ivar rowcount: how many rows it changed, as the driver counts them.
    @ivar last_id: after an C{INSERT} of one row, its rowid where the driver tells it
        (SQLite's C{lastrowid}); L{None} otherwise.
    """

    rows: list[tuple[Any, ...]]
    rowcount: int
    last_id: int | None = None


Script = Generator[Statement, Result, T]
"""A transaction script returning a C{T}."""

_NOTHING = Result([], 0)
"""What a L{Written} step gets back."""


@frozen
class Dialect:
    """
    What differs between the SQL that SQLite and PostgreSQL take.

    @ivar name: C{"sqlite"} or C{"postgresql"}; also the folder of its migrations.
    @ivar placeholder: the DB-API parameter marker of the driver.
    @ivar lock_row: appended to a C{SELECT} to lock the rows it reads until the end of
        the transaction; empty where the whole database has one writer at a time.
    @ivar migration_lock: a statement that takes, with one parameter (an integer key), a
        lock held until the end of the transaction, so that processes starting together
        migrate one after the other; L{None} where beginning a write transaction does that
        already.
    @ivar count_tables: a query counting the tables named by its one parameter.
    @ivar modifying_ctes: C{UPDATE ... RETURNING} may stand in a C{WITH} (one statement
        for what would otherwise take several round trips).
    """

    name: str
    placeholder: str
    lock_row: str
    migration_lock: str | None
    count_tables: str
    modifying_ctes: bool = False

    def sql(self, text: str) -> str:
        """
        Turn the C{?} placeholders of a constant SQL text into the driver's.
        """
        if self.placeholder == "?":
            return text
        return text.replace("?", self.placeholder)

    def statement(self, text: str, *params: object) -> Statement:
        """
        A L{Statement} from a constant SQL text written with C{?} placeholders.
        """
        return Statement(self.sql(text), params)

    def prepared(self, text: str, *params: object, later: bool = False) -> Statement:
        """
        L{statement}, marked worth preparing (L{Statement.prepare}).  For statements of
        the chat's hot path, whose parameters take their types from the columns they go
        to or are compared with: a parameter PostgreSQL could only type as C{text} there
        fails the preparation, and the statement then runs unprepared on that connection.

        @param later: its result is not read (L{Statement.later}).
        """
        return Statement(self.sql(text), params, prepare=True, later=later)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    lock_row="",
    migration_lock=None,
    count_tables="SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
)
"""SQLite: one writer at a time, taken by C{BEGIN IMMEDIATE}."""

POSTGRESQL = Dialect(
    name="postgresql",
    placeholder="%s",
    # NO KEY UPDATE: serialises writers of the same conversation without blocking the
    # KEY SHARE locks that foreign key checks (receipts, say) take on it.
    lock_row=" FOR NO KEY UPDATE",
    migration_lock="SELECT pg_advisory_xact_lock(?)",
    count_tables=(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name = ?"
    ),
    modifying_ctes=True,
)
"""PostgreSQL through psycopg2."""

DEFAULT_MAX_BATCH = 200
"""The most messages one group commit takes (L{SQLStore.commit_message})."""

DEFAULT_SIDE_GROUP = 16
"""How many messages must be queued for a group to start beside one under way: fewer
wait for it to end, so that groups stay large (every transaction costs a BEGIN, a COMMIT
and a lock of the event counter) unless a backlog builds up."""

DEFAULT_GROUP_WINDOW = 0.0
"""Seconds from the start of one group within which the next may not start unless
L{DEFAULT_GROUP_TARGET} messages are queued (L{SQLStore.group_window}): under a steady
load the messages of those few milliseconds share a transaction, instead of each taking
its own as soon as the one before has committed.  None by default, as PostgreSQL's
C{commit_delay}: a window of 3 ms cuts the SQLite server's CPU per message by a fifth to
a quarter at 800-1,200 messages a second, and costs capacity near saturation
(C{docs/benchmarks.md}, seventh session)."""

DEFAULT_GROUP_TARGET = 4
"""How many queued messages start a group at once, whatever the window: a transaction's
fixed cost is well shared by then, and waiting would only add latency.  A group that took
as many means a heavy load, and the next does not wait either."""

MIGRATION_LOCK_KEY = int.from_bytes(b"medichat", "big")
"""The advisory lock key that serialises migrations on PostgreSQL."""


# --------------------------------------------------------------------------------------
# Migrations


@frozen
class Migration:
    """
    One schema migration: a numbered SQL file.

    @ivar version: its number; a database with this migration applied has at least this
        schema version.
    @ivar name: what it does, from its file name.
    @ivar sql: the statements, separated by C{;}.
    """

    version: int
    name: str
    sql: str


_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def load_migrations(dialect: str) -> list[Migration]:
    """
    The migrations shipped for a dialect, oldest first.

    They are the package data files C{medichat/store/migrations/<dialect>/NNNN_name.sql},
    numbered from 1 without gaps.

    @param dialect: C{"sqlite"} or C{"postgresql"}.
    @raise RuntimeError: if the files are missing or misnumbered (a packaging error).
    """
    folder = importlib.resources.files("medichat.store").joinpath("migrations")
    folder = folder.joinpath(dialect)
    migrations = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            continue
        migrations.append(
            Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
        )
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if not versions or versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(
            f"the {dialect} migrations shipped with medichat are numbered {versions}; "
            "expected 1, 2, 3, ... without gaps"
        )
    return migrations


@frozen
class Migrated:
    """
    What L{migrate} did.

    @ivar before: the schema version found.
    @ivar after: the schema version left.
    @ivar applied: the migrations applied, oldest first.
    """

    before: int
    after: int
    applied: tuple[Migration, ...]


_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at BIGINT  NOT NULL
)
"""


def migrate(dialect: Dialect, migrations: Sequence[Migration], now: int) -> Script[Migrated]:
    """
    Apply the migrations that the database lacks, in order, in one transaction.

    The bookkeeping table C{schema_migrations} records each applied migration; it is
    created here rather than by a migration, as the runner needs it to start with.

    @param now: the time to record as C{applied_at}.
    @raise StoreError: if the database has migrations applied that are not in
        C{migrations}: it was upgraded by a newer medichat, whose schema this one does not
        know.
    """
    if dialect.migration_lock is not None:
        yield dialect.statement(dialect.migration_lock, MIGRATION_LOCK_KEY)
    yield Statement(_CREATE_SCHEMA_MIGRATIONS.strip())
    result = yield dialect.statement("SELECT version FROM schema_migrations")
    applied = {row[0] for row in result.rows}
    known = {m.version for m in migrations}
    unknown = sorted(applied - known)
    if unknown:
        raise StoreError(
            f"the database schema is at version {max(applied)}, newer than this medichat "
            f"knows (it has migrations up to {max(known, default=0)}); upgrade medichat"
        )
    done = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in applied:
            continue
        yield Statement(migration.sql, several=True)
        yield dialect.statement(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            migration.version,
            migration.name,
            now,
        )
        done.append(migration)
    return Migrated(
        before=max(applied, default=0),
        after=max(applied | known, default=0),
        applied=tuple(done),
    )


def _schema_version(dialect: Dialect) -> Script[int]:
    result = yield dialect.statement("SELECT max(version) FROM schema_migrations")
    version = result.rows[0][0] if result.rows else None
    return int(version) if version is not None else 0


def _holds_schema(dialect: Dialect) -> Script[bool]:
    result = yield dialect.statement(dialect.count_tables, "schema_migrations")
    return bool(result.rows and result.rows[0][0])


def _ping(dialect: Dialect) -> Script[None]:
    yield dialect.statement("SELECT 1")


def _check_writable(dialect: Dialect, now: int) -> Script[None]:
    yield dialect.statement(
        "INSERT INTO health_probe (id, checked) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET checked = excluded.checked",
        now,
    )


# --------------------------------------------------------------------------------------
# Row mapping

_CONVERSATION_COLUMNS = (
    "id, created, customer_id, customer_name, status, assignee_id, assignee_name, last_activity"
)
_MESSAGE_COLUMNS = "seq, id, conversation_id, created, user_id, user_name, user_role, message"
_EMPLOYEE_COLUMNS = "id, email, name, password_hash, disabled, created, last_login"
_LOGIN_SESSION_COLUMNS = "id, employee_id, token_hash, created, expires_at, revoked"
_EVENT_COLUMNS = "position, conversation_id, stream_offset, kind, body, created"
_ACCESS_COLUMNS = (
    "at, employee_id, employee_name, role, action, conversation_id, customer_id, address"
)


def conversation_from_row(row: Sequence[Any]) -> Conversation:
    """A L{Conversation} from a row of L{_CONVERSATION_COLUMNS}."""
    id_, created, customer_id, customer_name, status, assignee_id, assignee_name, activity = row
    return Conversation(
        id=id_,
        created=int(created),
        customer_id=customer_id,
        customer_name=customer_name,
        status=cast(Status, status),
        assignee_id=assignee_id,
        assignee_name=assignee_name,
        last_activity=int(activity),
    )


def message_from_row(row: Sequence[Any]) -> Message:
    """A L{Message} from a row of L{_MESSAGE_COLUMNS}."""
    seq, id_, conversation_id, created, user_id, user_name, user_role, text = row
    return Message(
        id=id_,
        conversation_id=conversation_id,
        created=int(created),
        user_id=user_id,
        user_name=user_name,
        user_role=cast(Role, user_role),
        message=text,
        seq=int(seq),
    )


def event_from_row(row: Sequence[Any]) -> StoredEvent:
    """A L{StoredEvent} from a row of L{_EVENT_COLUMNS}."""
    position, conversation_id, offset, kind, body, created = row
    return StoredEvent(
        position=int(position),
        conversation_id=conversation_id,
        offset=int(offset),
        kind=kind,
        body=body,
        created=int(created),
    )


def access_from_row(row: Sequence[Any]) -> AccessEntry:
    """An L{AccessEntry} from a row of C{seq, } and L{_ACCESS_COLUMNS}."""
    seq, at, employee_id, employee_name, role, action, conversation_id, customer_id, address = (
        row
    )
    return AccessEntry(
        at=int(at),
        employee_id=employee_id,
        employee_name=employee_name,
        role=role,
        action=action,
        conversation_id=conversation_id,
        customer_id=customer_id,
        address=address,
        seq=int(seq),
    )


def employee_from_row(row: Sequence[Any]) -> Employee:
    """An L{Employee} from a row of L{_EMPLOYEE_COLUMNS}."""
    id_, email, name, password_hash, disabled, created, last_login = row
    return Employee(
        id=id_,
        email=email,
        name=name,
        password_hash=password_hash,
        disabled=bool(disabled),
        created=int(created),
        last_login=None if last_login is None else int(last_login),
    )


def login_session_from_row(row: Sequence[Any]) -> LoginSession:
    """A L{LoginSession} from a row of L{_LOGIN_SESSION_COLUMNS}."""
    id_, employee_id, token_hash, created, expires_at, revoked = row
    return LoginSession(
        id=id_,
        employee_id=employee_id,
        token_hash=token_hash,
        created=int(created),
        expires_at=int(expires_at),
        revoked=bool(revoked),
    )


def email_key(email: str) -> str:
    """
    The form of an email that makes it unique and finds it: lower case.

    Computed here rather than by the database's C{lower()}, which folds only ASCII in
    SQLite and follows the locale in PostgreSQL, so that both stores agree.
    """
    return email.lower()


# --------------------------------------------------------------------------------------
# RSQL fields

MESSAGE_FIELDS: Mapping[str, rsql.Field] = {
    "created": rsql.Field("created", parse_time),
    "userId": rsql.Field("user_id", str),
    "userRole": rsql.Field("user_role", str),
    "id": rsql.Field("id", str),
}
"""What an RSQL query over a conversation's messages may name, and the columns."""

CONVERSATION_FIELDS: Mapping[str, rsql.Field] = {
    "created": rsql.Field("created", parse_time),
    "customerId": rsql.Field("customer_id", str),
    "status": rsql.Field("status", str),
    "assigneeId": rsql.Field("assignee_id", str),
    "lastActivity": rsql.Field("last_activity", parse_time),
}
"""What an RSQL query over conversations may name, and the columns."""


def _page_where(
    dialect: Dialect,
    prefix: str,
    column: str,
    customer_id: str | None,
    query: rsql.Node | None,
    descending: bool,
    after: tuple[int, str] | None,
) -> tuple[str, list[object]]:
    """
    The C{WHERE} clause of a page of conversations ordered by C{(column, id)}: one
    customer's only (if given), strictly past the cursor row C{after} (row values
    compare lexicographically), and matching the RSQL C{query}.

    @param prefix: what the conversations' columns are qualified with (C{""} or C{"c."}).
    """
    conditions: list[tuple[str, Sequence[object]]] = []
    if customer_id is not None:
        conditions.append((dialect.sql(f"{prefix}customer_id = ?"), [customer_id]))
    if after is not None:
        comparison = "<" if descending else ">"
        conditions.append(
            (dialect.sql(f"({prefix}{column}, {prefix}id) {comparison} (?, ?)"), list(after))
        )
    if query is not None:
        conditions.append(rsql.to_sql(query, CONVERSATION_FIELDS, dialect.placeholder))
    return _where(conditions)


def _where(conditions: Sequence[tuple[str, Sequence[object]]]) -> tuple[str, list[object]]:
    """
    Join conditions into a C{WHERE} clause.

    @param conditions: pairs of SQL (with the driver's placeholders already) and their
        parameters, in order.
    """
    if not conditions:
        return "", []
    params: list[object] = []
    for _, values in conditions:
        params.extend(values)
    return " WHERE " + " AND ".join(sql for sql, _ in conditions), params


def conversations_query(
    dialect: Dialect,
    customer_id: str | None,
    query: rsql.Node | None,
    descending: bool,
    limit: int,
    after: tuple[int, str] | None,
) -> Statement:
    """
    The C{SELECT} behind L{SQLStore.list_conversations}; its arguments are the same.

    Served by the index on C{(customer_id, created, id)} or on C{(created, id)}.

    @raise rsql.RSQLError: if C{query} names other fields or has a bad value.
    """
    where, params = _page_where(dialect, "", "created", customer_id, query, descending, after)
    direction = "DESC" if descending else "ASC"
    sql = (
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations{where}"
        f" ORDER BY created {direction}, id {direction} LIMIT {dialect.placeholder}"
    )
    return Statement(sql, (*params, max(0, limit)))


ORDER_KEYS = {"created": "created", "lastActivity": "last_activity"}
"""The orders of the overview (L{overview_query}) and the column of each."""

_NEVER_READ = -(2**62)
"""A read time before every message: the unread count of a user who never read."""


def overview_query(
    dialect: Dialect,
    viewer_id: str,
    customer_id: str | None,
    query: rsql.Node | None,
    order: str,
    descending: bool,
    limit: int,
    after: tuple[int, str] | None,
) -> Statement:
    """
    The C{SELECT} behind L{SQLStore.overview}: the conversations' columns, then the
    viewer's unread count and the C{seq} of the newest message (L{None} if none) of each.

    Both per-row values are correlated subqueries served by the index on
    C{(conversation_id, created, seq)}: a range from the viewer's read time to the end,
    and the last entry.  The rows are served by the index on C{(customer_id, <order>,
    id)} or C{(<order>, id)}.

    @param order: a key of L{ORDER_KEYS}.
    @param after: the C{(<order value>, id)} of the last row of the previous page.
    @raise rsql.RSQLError: if C{query} names other fields or has a bad value.
    """
    column = ORDER_KEYS[order]
    where, params = _page_where(dialect, "c.", column, customer_id, query, descending, after)
    columns = ", ".join("c." + name for name in _CONVERSATION_COLUMNS.split(", "))
    direction = "DESC" if descending else "ASC"
    sql = dialect.sql(
        f"SELECT {columns},"
        " (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id"
        "  AND m.created > COALESCE((SELECT r.at FROM receipts r WHERE r.conversation_id = c.id"
        "   AND r.kind = 'read' AND r.user_id = ?), ?)"
        "  AND m.user_id <> ?),"
        " (SELECT m.seq FROM messages m WHERE m.conversation_id = c.id"
        "  ORDER BY m.created DESC, m.seq DESC LIMIT 1)"
        " FROM conversations c"
    )
    sql += where + f" ORDER BY c.{column} {direction}, c.id {direction} LIMIT {dialect.placeholder}"
    return Statement(sql, (viewer_id, _NEVER_READ, viewer_id, *params, max(0, limit)))


def messages_query(
    dialect: Dialect,
    conversation_id: str,
    query: rsql.Node | None,
    descending: bool,
    limit: int | None,
) -> Statement:
    """
    The C{SELECT} behind L{SQLStore.list_messages}; its arguments are the same.

    Served by the index on C{(conversation_id, created, seq)}.

    @raise rsql.RSQLError: if C{query} names other fields or has a bad value.
    """
    conditions: list[tuple[str, Sequence[object]]] = [
        (dialect.sql("conversation_id = ?"), [conversation_id])
    ]
    if query is not None:
        conditions.append(rsql.to_sql(query, MESSAGE_FIELDS, dialect.placeholder))
    where, params = _where(conditions)
    direction = "DESC" if descending else "ASC"
    sql = (
        f"SELECT {_MESSAGE_COLUMNS} FROM messages{where}"
        f" ORDER BY created {direction}, seq {direction}"
    )
    if limit is not None:
        sql += f" LIMIT {dialect.placeholder}"
        params.append(max(0, limit))
    return Statement(sql, tuple(params))


def access_query(
    dialect: Dialect,
    *,
    customer_id: str | None = None,
    employee_id: str | None = None,
    conversation_id: str | None = None,
    since: int | None = None,
    until: int | None = None,
    descending: bool = True,
    limit: int = 50,
    after: tuple[int, int] | None = None,
) -> Statement:
    """
    The C{SELECT} behind L{SQLStore.access_log}; its arguments are the same.

    A customer's log is served by the index on C{(customer_id, at, seq)}, a time range by
    the one on C{(at, seq)}.
    """
    conditions: list[tuple[str, Sequence[object]]] = []
    for column, value in (
        ("customer_id", customer_id),
        ("employee_id", employee_id),
        ("conversation_id", conversation_id),
    ):
        if value is not None:
            conditions.append((dialect.sql(f"{column} = ?"), [value]))
    if since is not None:
        conditions.append((dialect.sql("at >= ?"), [since]))
    if until is not None:
        conditions.append((dialect.sql("at < ?"), [until]))
    if after is not None:
        comparison = "<" if descending else ">"
        conditions.append((dialect.sql(f"(at, seq) {comparison} (?, ?)"), list(after)))
    where, params = _where(conditions)
    direction = "DESC" if descending else "ASC"
    sql = (
        f"SELECT seq, {_ACCESS_COLUMNS} FROM access_log{where}"
        f" ORDER BY at {direction}, seq {direction} LIMIT {dialect.placeholder}"
    )
    return Statement(sql, (*params, max(0, limit)))


# --------------------------------------------------------------------------------------
# Transaction scripts


def _write(statement: Statement) -> Script[None]:
    yield statement


def _count(statement: Statement) -> Script[int]:
    """How many rows the statement changed."""
    result = yield statement
    return result.rowcount


# Rows become objects inside the script, which for SQLite means in the database thread
# rather than in the reactor's: a long history barely touches the reactor thread.


def _select_one(statement: Statement, convert: Callable[[Sequence[Any]], T]) -> Script[T | None]:
    """The first row, converted, or L{None}."""
    result = yield statement
    return convert(result.rows[0]) if result.rows else None


def _select_all(statement: Statement, convert: Callable[[Sequence[Any]], T]) -> Script[list[T]]:
    """Every row, converted."""
    result = yield statement
    return [convert(row) for row in result.rows]


def _lock_conversation(dialect: Dialect, conversation_id: str) -> Script[None]:
    """
    Make sure the conversation exists and, where rows can be locked, lock it, so that
    writers of one conversation commit one at a time, in C{seq} order.  Every writer of a
    conversation starts with this: one lock order (the conversation, then its rows, then
    the event counter).
    """
    customers = yield from _lock_conversations(dialect, {conversation_id})
    if not customers:
        raise StoreError(f"no conversation {conversation_id!r}")


def _find_by_key(
    dialect: Dialect, conversation_id: str, user_id: str, key: str
) -> Script[Message | None]:
    columns = ", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))
    # Prepared: a client that sends a key sends one with every message.
    result = yield dialect.prepared(
        f"SELECT {columns} FROM idempotency_keys k JOIN messages m ON m.id = k.message_id"
        " WHERE k.conversation_id = ? AND k.user_id = ? AND k.idempotency_key = ?",
        conversation_id,
        user_id,
        key,
    )
    return message_from_row(result.rows[0]) if result.rows else None


# --------------------------------------------------------------------------------------
# The message transaction


@define  # not frozen, as Statement (above): a few for every message
class PendingEvent:
    """
    A durable event that the current transaction writes at its end (L{_append_events}).

    @ivar conversation_id: its conversation.
    @ivar kind: C{"message"}, C{"read"} or C{"received"}; for the employees' feed,
        C{"conversationCreated"} or C{"conversationUpdated"}.
    @ivar event: the event, as published.
    @ivar created: its time.
    @ivar feed: an event of the employees' feed (C{feed_events}): it takes a global
        position like the others but belongs to no conversation's stream (offset 0).
    """

    conversation_id: str
    kind: str
    event: dict[str, Any]
    created: int
    feed: bool = False


def commit_messages(
    dialect: Dialect, commits: Sequence[MessageCommit]
) -> Script[list[MessageCommitted | None]]:
    """
    B{The} transaction of chat messages: one message, or several at once (a group
    commit, L{SQLStore.commit_message}), each with everything that posting it commits.

      1. lock the rows of the conversations concerned, in id order, in one statement (so
         that two such transactions, in two processes, never deadlock);
      2. each message in turn, in order: L{_admit} (may it be stored at all? is it a
         replay?), a message with the key of an earlier one of the group being that
         one's replay; then the employees' access-log rows of them all, in that order, in
         one statement (L{_insert_access});
      3. the messages admitted, in order: L{_store_messages} (the message rows, the
         receipts they move, their conversations' triage);
      4. each of those in turn, in order: L{commit_message} (the rest of what it
         commits, and its events);
      5. write the durable events of all of them, last, in the same order: so the event
         counter's row is locked only from there to the commit.

    Should any step fail, the transaction rolls back as a whole; L{SQLStore} then commits
    each message again on its own, so that each caller gets its own outcome or error.

    @return: each message's outcome, in order: what was committed, the first message for
        a replayed idempotency key, or L{None} if the poster may not post there.
    """
    ids = {commit.message.conversation_id for commit in commits}
    # SQLite reads the whole row of one conversation (L{_Whole}); reading whole rows for a
    # group of several would cost more than it saves there.
    whole: _Whole | None = None
    if len(ids) == 1 and not dialect.modifying_ctes:
        whole = yield from _lock_whole(dialect, next(iter(ids)))
        customers = {} if whole is None else {whole.row.id: whole.row.customer_id}
    else:
        customers = yield from _lock_conversations(dialect, ids)
    outcomes: list[MessageCommitted | None] = []
    admitted: list[int] = []
    # A key that an earlier message of this group brings: its replay, without a look-up.
    keyed: dict[tuple[str, str, str], int] = {}
    replays: list[tuple[int, int]] = []
    accesses: list[AccessEntry] = []
    for commit in commits:
        message, key = commit.message, commit.idempotency_key
        first = None if key is None else keyed.get((message.conversation_id, message.user_id, key))
        outcome = yield from _admit(
            dialect, commit, customers.get(message.conversation_id), accesses, first is None
        )
        if outcome is True:
            if first is not None:
                replays.append((len(outcomes), first))
            else:
                admitted.append(len(outcomes))
                if key is not None:
                    keyed[message.conversation_id, message.user_id, key] = len(outcomes)
            outcome = None
        outcomes.append(outcome)
    yield from _insert_access(dialect, accesses)
    stored = yield from _store_messages(dialect, [commits[i] for i in admitted], whole)
    events: list[PendingEvent] = []
    for i, (message, received, changed) in zip(admitted, stored, strict=True):
        outcomes[i] = yield from commit_message(
            dialect, commits[i], message, received, changed, events
        )
    for i, first in replays:
        original = outcomes[first]
        assert original is not None
        outcomes[i] = MessageCommitted(original.message, False)
    yield from _append_events(dialect, events, whole)
    return outcomes


def _admit(
    dialect: Dialect,
    commit: MessageCommit,
    customer: str | None,
    accesses: list[AccessEntry],
    look_up_key: bool = True,
) -> Script[MessageCommitted | None | Literal[True]]:
    """
    Whether a message may be stored, inside L{commit_messages} with its conversation's
    row locked:

      1. the poster must take part in the conversation; if not (or there is no such
         conversation), nothing is written and the outcome is L{None};
      2. an employee's access is to be recorded (L{MessageCommit.access}; a replay's
         too): appended to C{accesses}, which L{commit_messages} writes;
      3. a replayed idempotency key writes nothing more: its outcome is the first
         message.

    @param customer: the customer of the message's conversation, or L{None} if there is
        no such conversation.
    @param look_up_key: whether to look its idempotency key up (not when an earlier
        message of the same group brought the same key: L{commit_messages} knows it).
    @return: C{True} if the message is to be stored, or its outcome.
    """
    message = commit.message
    if customer is None:
        return None
    if commit.check_participant and message.user_role != "employee" and (
        customer != message.user_id
    ):
        return None
    if commit.access is not None:
        accesses.append(commit.access.of_customer(customer))
    key = commit.idempotency_key
    if key is not None and look_up_key:
        first = yield from _find_by_key(dialect, message.conversation_id, message.user_id, key)
        if first is not None:
            return MessageCommitted(first, False)
    return True


def commit_message(
    dialect: Dialect,
    commit: MessageCommit,
    stored: Message,
    received: tuple[str, ...],
    changed: Conversation | None,
    events: list[PendingEvent],
) -> Script[MessageCommitted]:
    """
    What one chat message commits besides its row, its receipts and its triage
    (L{_store_messages}), inside L{commit_messages}:

      1. its idempotency key, and its webhook notifications (L{MessageCommit.notice},
         L{queue_notifications});
      2. the steps other features add (see below);
      3. its durable events, queued on C{events}: the message's, then one C{received}
         per receipt that moved, then its conversation's C{conversationUpdated} if its
         triage changed (L{commit_messages} writes them at the end).

    B{Adding a step}: write a script C{_your_step(dialect, commit, stored) -> Script[None]}
    that yields its statements (rows of this conversation, or rows of its own tables;
    never C{event_counter}, never another conversation's row), add what it needs to know
    to L{MessageCommit} as a field with a default, and call it with one line,
    C{yield from _your_step(dialect, commit, stored)}, at the marked place below.  It
    commits or rolls back with the message; an exception it raises fails this message
    (and only it: see L{SQLStore.commit_message}).  A step with a durable event of its
    own to publish takes C{events} too and appends a L{PendingEvent} to it (never writes
    C{events} itself): it is then written with the others, in order, at the end.  Its
    statements run for every message: write them with L{Dialect.prepared}, with
    C{later=True} where the step does not read the result.  (On SQLite, the triage and
    stream offset of a transaction of one conversation reach its row only at the end,
    with the events, L{_Whole}: a step learns them from C{changed}, not from the row.)

    @param stored: the message with its C{seq}.
    @param received: the users whose C{received} receipt it moved, in user id order.
    @param changed: its conversation after its triage moved, or L{None}.
    @return: what was committed.
    """
    message = commit.message
    key = commit.idempotency_key
    if key is not None:
        yield dialect.prepared(
            "INSERT INTO idempotency_keys"
            " (conversation_id, user_id, idempotency_key, message_id, created)"
            " VALUES (?, ?, ?, ?, ?)",
            message.conversation_id,
            message.user_id,
            key,
            message.id,
            message.created,
            later=True,
        )
    yield from queue_notifications(dialect, stored, commit.notice)
    # -- steps that other features add go here, each one line:
    #    yield from _your_step(dialect, commit, stored)
    # -- then the events, written by commit_messages at the end.
    at = message.created
    events.append(PendingEvent(message.conversation_id, "message", message_event(stored), at))
    for user_id in received:
        receipt = receipt_event("received", user_id, at)
        events.append(PendingEvent(message.conversation_id, "received", receipt, at))
    if changed is not None:
        event = conversation_updated_event(changed)
        events.append(PendingEvent(changed.id, "conversationUpdated", event, at, feed=True))
    return MessageCommitted(stored, True, received)


def _lock_conversations(dialect: Dialect, conversation_ids: set[str]) -> Script[dict[str, str]]:
    """
    Lock the rows of the conversations (where rows can be locked), in id order, and read
    their customers.

    @return: the customer of each conversation that exists, by conversation id.
    """
    if not conversation_ids:
        return {}
    ordered = sorted(conversation_ids)
    marks = ", ".join("?" * len(ordered))
    result = yield dialect.prepared(
        f"SELECT id, customer_id FROM conversations WHERE id IN ({marks}) ORDER BY id"
        + dialect.lock_row,
        *ordered,
    )
    return {str(row[0]): str(row[1]) for row in result.rows}


@define  # not frozen: the transaction moves it along
class _Whole:
    """
    On SQLite, the one conversation of a message transaction, read whole as it begins
    (L{_lock_whole}), with its stream's last offset and the event counter: the messages'
    triage is worked out from it (L{_store_message}), and it goes back to the database
    with the events' offsets and positions at the end (L{_append_events}) in two plain
    C{UPDATE}s: no statement with C{RETURNING} (which costs SQLite an ephemeral table
    each), nothing read back (docs/benchmarks.md, sixteenth session).  Sound because the
    transaction holds SQLite's write lock from its C{BEGIN IMMEDIATE}: nothing else
    moves the row or the counter meanwhile.

    @ivar row: the conversation, as the transaction's messages leave it.
    @ivar last_offset: its stream's last offset when read.
    @ivar last_position: the event counter when read.
    """

    row: Conversation
    last_offset: int
    last_position: int


def _lock_whole(dialect: Dialect, conversation_id: str) -> Script[_Whole | None]:
    """L{_lock_conversations} of one conversation, reading it whole (L{_Whole}); L{None} if
    there is no such conversation."""
    result = yield dialect.prepared(
        f"SELECT {_CONVERSATION_COLUMNS}, last_offset,"
        " (SELECT last FROM event_counter WHERE id = 1) FROM conversations WHERE id = ?"
        + dialect.lock_row,
        conversation_id,
    )
    if not result.rows:
        return None
    row = result.rows[0]
    return _Whole(conversation_from_row(row[:-2]), int(row[-2]), int(row[-1]))


_Stored = tuple[Message, tuple[str, ...], Conversation | None]
"""A stored message (with its C{seq}), the users whose receipt it moved, and its
conversation after its triage moved (or L{None})."""


def _store_messages(
    dialect: Dialect, commits: Sequence[MessageCommit], whole: _Whole | None = None
) -> Script[list[_Stored]]:
    """
    L{_store_message} for each message, in order.  Consecutive messages of different
    conversations go together: on PostgreSQL in one statement (L{_store_together}), so
    that a group of messages of as many conversations costs one round trip; on SQLite in
    three (L{_store_apart}), so that the database thread runs three statements for them,
    not three each.  A conversation's second message starts the next segment, since one
    statement cannot change a row twice (its receipts, its triage) and must see the first
    one's changes.

    @param whole: on SQLite, the messages' one conversation, if read whole.
    """
    segments: list[list[MessageCommit]] = []
    seen: set[str] = set()
    for commit in commits:
        conversation_id = commit.message.conversation_id
        if not segments or conversation_id in seen:
            segments.append([])
            seen = set()
        segments[-1].append(commit)
        seen.add(conversation_id)
    stored: list[_Stored] = []
    for segment in segments:
        uniform = len({c.received_by is None for c in segment}) == 1
        if len(segment) > 1 and dialect.modifying_ctes and uniform:
            stored += yield from _store_together(dialect, segment)
        elif len(segment) > 1 and all(c.received_by is not None for c in segment):
            stored += yield from _store_apart(dialect, segment)
        else:
            for commit in segment:
                stored.append((yield from _store_message(dialect, commit, whole)))
    return stored


def _store_together(dialect: Dialect, commits: Sequence[MessageCommit]) -> Script[list[_Stored]]:
    """
    L{_store_message} for messages of different conversations at once, in one statement
    (PostgreSQL): one multi-row C{INSERT} of the messages (their C{seq}s taken in order),
    one of the receipts they move, one C{UPDATE} of their conversations' triage; the
    results come back as three JSON arrays.  Either every message's receipts come from
    the presence tables or every one's from L{MessageCommit.received_by}.
    """
    rows = ", ".join([_ONE_MESSAGE] * len(commits))
    params: list[object] = []
    for commit in commits:
        params += _message_row(commit.message)
    # As for one message (_store_message): the receipts and the triage read the messages'
    # conversations, times, authors and roles from what the INSERT returns.
    text = f"WITH inserted AS ({_INSERT_MESSAGES}{rows}{_INSERTED})"
    moved = "NULL::json"
    receipts = _MOVE_RECEIPT_ONLY_FORWARD + " RETURNING conversation_id, user_id"
    if commits[0].received_by is None:
        # Who is subscribed, on any node, read in this very statement.
        text += f", moved AS ({_PRESENCE_RECEIPTS}{receipts})"
        moved = "(SELECT json_agg(json_build_array(conversation_id, user_id)) FROM moved)"
    else:
        reached = _receipts_given(commits)
        if reached is not None:
            text += f", moved AS ({reached[0]})"
            params += reached[1]
            moved = "(SELECT json_agg(json_build_array(conversation_id, user_id)) FROM moved)"
    text += (
        f", active AS ({_INSERTED_ACTIVITY} RETURNING {_RETURNED_CONVERSATION})"
        " SELECT (SELECT json_agg(json_build_array(id, seq)) FROM inserted),"
        f" {moved},"
        f" (SELECT json_agg(json_build_array({_CONVERSATION_COLUMNS})) FROM active)"
    )
    if commits[0].received_by is None:
        # Its text differs only with the number of messages: a handful of shapes, each
        # worth preparing (planning this statement is most of what a backend spends on
        # parsing and planning a group).
        result = yield dialect.prepared(text, *params)
    else:
        # Not prepared: its text differs with the number of messages and of receipts.
        result = yield dialect.statement(text, *params)
    inserted, moved_rows, active_rows = result.rows[0]
    return _stored_segment(commits, inserted, moved_rows or (), active_rows or ())


def _store_apart(dialect: Dialect, commits: Sequence[MessageCommit]) -> Script[list[_Stored]]:
    """
    L{_store_message} for messages of different conversations at once, where one
    statement cannot hold it all (SQLite): one multi-row C{INSERT} of the messages (their
    C{seq}s taken in order), one of the receipts they move, one C{UPDATE ... FROM} of
    their conversations' triage.  Every message's receipts come from
    L{MessageCommit.received_by}.
    """
    rows = ", ".join([_ONE_MESSAGE] * len(commits))
    params: list[object] = []
    for commit in commits:
        params += _message_row(commit.message)
    inserted = yield dialect.prepared(f"{_INSERT_MESSAGES}{rows} RETURNING id, seq", *params)
    moved: list[tuple[Any, ...]] = []
    reached = _receipts_given(commits)
    if reached is not None:
        moved = (yield dialect.prepared(reached[0], *reached[1])).rows
    values = ", ".join(["(?, ?, ?)"] * len(commits))
    params = []
    for commit in commits:
        m = commit.message
        params += [m.conversation_id, m.created, m.user_role == "customer"]
    active = yield dialect.prepared(
        f"WITH activity (id, created, reopen) AS (VALUES {values})"
        f" {_ACTIVITY_UPDATE} RETURNING {_CONVERSATION_COLUMNS}",
        *params,
    )
    return _stored_segment(commits, inserted.rows, moved, active.rows)


_INSERTED = " RETURNING id, seq, conversation_id, created, user_id, user_role"
"""Ends the C{INSERT} of messages in PostgreSQL's one statement of them (L{_store_message},
L{_store_together}): what the receipts (L{_PRESENCE_RECEIPTS}, L{_GIVEN_RECEIPTS}) and the
triage (L{_INSERTED_ACTIVITY}) read from C{inserted}."""

_PRESENCE_RECEIPTS = (
    "INSERT INTO receipts (conversation_id, kind, user_id, at)"
    " SELECT i.conversation_id, 'received', p.user_id, i.created"
    " FROM inserted i, presence_members p"
    " WHERE p.conversation_id = i.conversation_id AND p.user_id <> i.user_id"
)
"""The C{received} receipts of whoever is subscribed to the conversations of the messages
C{inserted} (on any node), their authors aside, at the messages' times; then
L{_MOVE_RECEIPT_ONLY_FORWARD}."""

_GIVEN_RECEIPTS = (
    "INSERT INTO receipts (conversation_id, kind, user_id, at)"
    " SELECT i.conversation_id, 'received', u.user_id, i.created"
    " FROM inserted i, unnest(CAST(? AS TEXT[])) AS u (user_id)"
)
"""The C{received} receipts of the users its one parameter names, at the time of the one
message C{inserted}; then L{_MOVE_RECEIPT_ONLY_FORWARD}."""

def _activity_from(source: str, conversation: str, created: str, reopen: str) -> str:
    """
    L{_message_activity} for several conversations at once: an C{UPDATE ... FROM}
    C{source}, whose rows give each conversation's id (C{conversation}), its message's time
    (C{created}) and whether a customer wrote it (C{reopen}), as SQL expressions.
    """
    return (
        "UPDATE conversations SET"
        f" last_activity = CASE WHEN conversations.last_activity < {created}"
        f" THEN {created} ELSE conversations.last_activity END,"
        f" status = CASE WHEN {reopen} THEN 'open' ELSE conversations.status END"
        f" FROM {source} WHERE conversations.id = {conversation}"
        f" AND (conversations.last_activity < {created}"
        f" OR ({reopen} AND conversations.status <> 'open'))"
    )


_INSERTED_ACTIVITY = _activity_from(
    "inserted i", "i.conversation_id", "i.created", "i.user_role = 'customer'"
)
"""The triage of the messages C{inserted}, of as many conversations (PostgreSQL)."""

_ACTIVITY_UPDATE = _activity_from(
    "activity", "activity.id", "activity.created", "activity.reopen"
)
"""The triage of several conversations at once from a table C{activity (id, created,
reopen)}: each conversation's message time, and whether a customer wrote it (SQLite)."""

_RETURNED_CONVERSATION = ", ".join(
    "conversations." + column for column in _CONVERSATION_COLUMNS.split(", ")
)
"""L{_CONVERSATION_COLUMNS} of C{conversations}, in a statement that reads other tables."""

def _receipts_given(commits: Sequence[MessageCommit]) -> tuple[str, list[object]] | None:
    """
    The one C{INSERT} that moves, at each message's time, the receipts of the users its
    L{MessageCommit.received_by} names (its author aside), and returns the
    C{(conversation_id, user_id)} of those it moved; L{None} if they reach nobody.
    """
    reached = [
        (commit.message.conversation_id, user_id, commit.message.created)
        for commit in commits
        for user_id in sorted(set(commit.received_by or ()) - {commit.message.user_id})
    ]
    if not reached:
        return None
    values = ", ".join(["(?, 'received', ?, ?)"] * len(reached))
    params: list[object] = []
    for row in reached:
        params += row
    return (
        f"INSERT INTO receipts (conversation_id, kind, user_id, at) VALUES {values}"
        + _MOVE_RECEIPT_ONLY_FORWARD
        + " RETURNING conversation_id, user_id",
        params,
    )


def _stored_segment(
    commits: Sequence[MessageCommit],
    inserted: Iterable[Sequence[Any]],
    moved: Iterable[Sequence[Any]],
    active: Iterable[Sequence[Any]],
) -> list[_Stored]:
    """
    What L{_store_together} or L{_store_apart} stored, message by message, from the rows
    they returned (in any order): the messages' C{(id, seq)}, the moved receipts'
    C{(conversation_id, user_id)}, and the conversations whose triage moved.
    """
    seqs = {str(message_id): int(seq) for message_id, seq in inserted}
    users: dict[str, list[str]] = {}
    for conversation_id, user_id in moved:
        users.setdefault(str(conversation_id), []).append(str(user_id))
    changed = {str(row[0]): conversation_from_row(row) for row in active}
    stored: list[_Stored] = []
    for commit in commits:
        m = commit.message
        received = tuple(sorted(users.get(m.conversation_id, ())))
        stored.append((m.with_seq(seqs[m.id]), received, changed.get(m.conversation_id)))
    return stored


def _store_message(
    dialect: Dialect, commit: MessageCommit, whole: _Whole | None = None
) -> Script[_Stored]:
    """
    Insert the message, move the C{received} receipts of the users it reaches, and move
    its conversation's triage (L{_message_activity}): three statements, which PostgreSQL
    runs as one (data-modifying C{WITH} queries touching three different tables, none of
    which reads what another writes), so that a message costs one round trip there.
    SQLite, given the conversation read whole, works the triage out in Python
    (L{Conversation.after_message}) and leaves it to L{_append_events} to write.

    @return: the message with its C{seq}; the users whose receipt moved, in user id
        order; the conversation after its triage moved, or L{None} if it did not.
    """
    message = commit.message
    insert_params = _message_row(message)
    changed: Conversation | None
    if dialect.modifying_ctes:
        # The receipts and the triage read the message's conversation, time, author and
        # role from what the INSERT returns: each value is quoted into the text once.
        text = f"WITH inserted AS ({_INSERT_MESSAGES}{_ONE_MESSAGE}{_INSERTED})"
        params: list[object] = list(insert_params)
        moved = "ARRAY[]::text[]"
        if commit.received_by is None:
            text += f", moved AS ({_PRESENCE_RECEIPTS}{_MOVE_RECEIPT})"
            moved = "ARRAY(SELECT user_id FROM moved ORDER BY user_id)"
        elif users := sorted(set(commit.received_by) - {message.user_id}):
            text += f", moved AS ({_GIVEN_RECEIPTS}{_MOVE_RECEIPT})"
            params.append(users)
            moved = "ARRAY(SELECT user_id FROM moved ORDER BY user_id)"
        text += (
            f", active AS ({_INSERTED_ACTIVITY} RETURNING {_RETURNED_CONVERSATION})"
            f" SELECT inserted.seq, {moved}, active.* FROM inserted LEFT JOIN active ON TRUE"
        )
        result = yield dialect.prepared(text, *params)
        row = result.rows[0]
        seq, users, active = row[0], row[1], row[2:]
        changed = None if active[0] is None else conversation_from_row(active)
    else:
        # The C{seq} is the row's rowid: no C{RETURNING}, which costs SQLite an ephemeral
        # table for the row (docs/benchmarks.md, fourteenth session).
        result = yield dialect.prepared(_INSERT_MESSAGES + _ONE_MESSAGE, *insert_params)
        seq, users = result.last_id, []
        reached = _one_reached(commit)
        if reached is not None:
            # Whether one receipt moved is the row count: no C{RETURNING} either.
            moved_one = yield dialect.prepared(
                _INSERT_RECEIPT + _MOVE_RECEIPT_ONLY_FORWARD,
                message.conversation_id, "received", reached, message.created,
            )
            users = [reached] if moved_one.rowcount > 0 else []
        elif (receipts := _receipts_insert(commit)) is not None:
            moved_rows = yield dialect.prepared(receipts[0], *receipts[1])
            users = [row[0] for row in moved_rows.rows]
        if whole is not None:
            changed = whole.row.after_message(message.created, message.user_role == "customer")
            if changed is not None:
                whole.row = changed
        else:
            update, update_params = _message_activity(message)
            activity = yield dialect.prepared(update, *update_params)
            changed = conversation_from_row(activity.rows[0]) if activity.rows else None
    received = tuple(sorted(str(user_id) for user_id in users))
    return message.with_seq(int(seq)), received, changed


_INSERT_MESSAGES = (
    "INSERT INTO messages"
    " (id, conversation_id, created, user_id, user_name, user_role, message) VALUES "
)
"""The start of an C{INSERT} of messages; one C{(?, ?, ?, ?, ?, ?, ?)} row each
(L{_message_row}'s values)."""


_ONE_MESSAGE = "(?, ?, ?, ?, ?, ?, ?)"
"""The row of one message in L{_INSERT_MESSAGES}."""


def _message_row(message: Message) -> list[object]:
    """The values of a message's row in L{_INSERT_MESSAGES}, for one L{_ONE_MESSAGE}."""
    return [
        message.id,
        message.conversation_id,
        message.created,
        message.user_id,
        message.user_name,
        message.user_role,
        message.message,
    ]


_MOVE_RECEIPT_ONLY_FORWARD = (
    " ON CONFLICT (conversation_id, kind, user_id) DO UPDATE SET at = excluded.at"
    " WHERE excluded.at > receipts.at"
)
"""Makes an C{INSERT INTO receipts} move receipts forward only."""

_MOVE_RECEIPT = _MOVE_RECEIPT_ONLY_FORWARD + " RETURNING user_id"
"""Makes an C{INSERT INTO receipts} move receipts forward only, and name those it moved."""

_INSERT_RECEIPT = "INSERT INTO receipts (conversation_id, kind, user_id, at) VALUES (?, ?, ?, ?)"
"""The C{INSERT} of one receipt, before L{_MOVE_RECEIPT_ONLY_FORWARD}: the driver's row
count then says whether it moved (1) or not (0), as a row from C{RETURNING} would, which
costs SQLite an ephemeral table a statement (docs/benchmarks.md, sixteenth session)."""


def _one_reached(commit: MessageCommit) -> str | None:
    """The one user whose receipt a message moves, if it names exactly one (its author
    aside); L{None} if it reaches nobody, several, or whoever is subscribed."""
    if commit.received_by is None:
        return None
    users = set(commit.received_by)
    users.discard(commit.message.user_id)
    return users.pop() if len(users) == 1 else None


def _receipts_insert(commit: MessageCommit) -> tuple[str, list[object]] | None:
    """
    The one statement that marks the conversation received, at the message's time, for
    the users it reaches, and returns those whose receipt moved; L{None} if it reaches
    nobody.
    """
    message = commit.message
    if commit.received_by is None:
        # Who is subscribed, on any node, read in this very transaction.
        return (
            "INSERT INTO receipts (conversation_id, kind, user_id, at)"
            " SELECT conversation_id, 'received', user_id, ? FROM presence_members"
            " WHERE conversation_id = ? AND user_id <> ?" + _MOVE_RECEIPT,
            [message.created, message.conversation_id, message.user_id],
        )
    users = sorted(set(commit.received_by) - {message.user_id})
    if not users:
        return None
    values = ", ".join(["(?, 'received', ?, ?)"] * len(users))
    params: list[object] = []
    for user_id in users:
        params.extend((message.conversation_id, user_id, message.created))
    return (
        f"INSERT INTO receipts (conversation_id, kind, user_id, at) VALUES {values}"
        + _MOVE_RECEIPT,
        params,
    )


def _create_conversation(dialect: Dialect, conversation: Conversation) -> Script[None]:
    c = conversation
    yield dialect.statement(
        f"INSERT INTO conversations ({_CONVERSATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        c.id,
        c.created,
        c.customer_id,
        c.customer_name,
        c.status,
        c.assignee_id,
        c.assignee_name,
        c.last_activity,
    )
    yield from _append_feed_event(dialect, c.id, conversation_created_event(c), c.created)


def _message_activity(message: Message) -> tuple[str, list[object]]:
    """
    What a stored message does to its conversation's triage, as one statement (the
    conversation locked; SQLite, in a transaction of one conversation, applies the same
    rule in Python instead, L{Conversation.after_message}): its last activity moves
    forward to the message's time and, if a customer wrote it, a resolved conversation
    opens again.  It returns the
    conversation's row if either changed (which then gets a C{conversationUpdated}
    event), none otherwise.
    """
    reopen = message.user_role == "customer"
    return (
        "UPDATE conversations SET"
        " last_activity = CASE WHEN last_activity < ? THEN ? ELSE last_activity END,"
        " status = CASE WHEN ? THEN 'open' ELSE status END"
        " WHERE id = ? AND (last_activity < ? OR (? AND status <> 'open'))"
        f" RETURNING {_CONVERSATION_COLUMNS}",
        [
            message.created,
            message.created,
            reopen,
            message.conversation_id,
            message.created,
            reopen,
        ],
    )


def _change_triage(
    dialect: Dialect,
    conversation_id: str,
    decide: Callable[[Conversation], Conversation],
    at: int,
) -> Script[TriageChange | None]:
    """
    Change a conversation's status or assignee as C{decide} says, given it as it is
    now, locked; where that changes anything, write it and a C{conversationUpdated}
    event.  The lock makes the decision atomic: of concurrent changes each sees the
    outcome of the one before (so of concurrent claims exactly one finds nobody
    assigned).

    @return: the conversation before and after, or L{None} if there is no such
        conversation.
    """
    result = yield dialect.statement(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?" + dialect.lock_row,
        conversation_id,
    )
    if not result.rows:
        return None
    before = conversation_from_row(result.rows[0])
    after = decide(before)
    if after != before:
        yield dialect.statement(
            "UPDATE conversations SET status = ?, assignee_id = ?, assignee_name = ?"
            " WHERE id = ?",
            after.status,
            after.assignee_id,
            after.assignee_name,
            conversation_id,
        )
        yield from _append_feed_event(
            dialect, conversation_id, conversation_updated_event(after), at
        )
    return TriageChange(before, after)


def _append_feed_event(
    dialect: Dialect, conversation_id: str, event: dict[str, Any], created: int
) -> Script[None]:
    """
    Write an event of the employees' feed (C{conversationCreated},
    C{conversationUpdated}) in the current transaction; call at its end, as
    L{_append_events}, whose global positions it shares.  It belongs to no conversation's
    stream: its offset is 0.
    """
    kind = next(iter(event))
    yield from _append_events(
        dialect, [PendingEvent(conversation_id, kind, event, created, feed=True)]
    )


def _overview(
    dialect: Dialect, statement: Statement
) -> Script[list[tuple[Conversation, Overview]]]:
    result = yield statement
    rows = [
        (conversation_from_row(row[:-2]), int(row[-2]), None if row[-1] is None else int(row[-1]))
        for row in result.rows
    ]
    seqs = [seq for _, _, seq in rows if seq is not None]
    last: dict[int, Message] = {}
    if seqs:
        marks = ", ".join([dialect.placeholder] * len(seqs))
        messages = yield Statement(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq IN ({marks})", tuple(seqs)
        )
        for row in messages.rows:
            message = message_from_row(row)
            last[message.seq] = message
    return [
        (conversation, Overview(unread, None if seq is None else last.get(seq)))
        for conversation, unread, seq in rows
    ]


def _mark(
    dialect: Dialect,
    kind: str,
    conversation_id: str,
    user_id: str,
    at: int,
    access: AccessEntry | None = None,
) -> Script[bool]:
    # The conversation first, as for a message: one lock order for every writer of it.
    yield from _lock_conversation(dialect, conversation_id)
    yield from _record_access(dialect, access)
    # One statement, so that two writers cannot both read the old time and both win;
    # it changes a row only where one was inserted or moved forward.
    result = yield dialect.statement(
        _INSERT_RECEIPT + _MOVE_RECEIPT_ONLY_FORWARD, conversation_id, kind, user_id, at
    )
    if result.rowcount < 1:
        return False  # a receipt that does not move writes no event
    event = receipt_event(kind, user_id, at)
    yield from _append_events(dialect, [PendingEvent(conversation_id, kind, event, at)])
    return True


_COUNT_EVENTS = "UPDATE event_counter SET last = last + ? WHERE id = 1 RETURNING last"
"""Takes positions for events (its one parameter: how many); the last one taken."""


def _append_events(
    dialect: Dialect, events: Sequence[PendingEvent], whole: _Whole | None = None
) -> Script[list[StoredEvent]]:
    """
    Write durable events, in order, in the current transaction; call at its very end,
    with their conversations' rows locked (L{_lock_conversations}).  On PostgreSQL one
    statement, which goes with the C{COMMIT} (L{_append_together}); on SQLite three
    statements however many events and conversations, four with an event of the
    employees' feed (see L{_take_offsets}), or, given the transaction's one conversation
    read whole (L{_Whole}), its row, with its triage, and the counter written back
    (L{_write_back}) and the events inserted.

    The conversations' rows give the next offsets of their streams.  The global positions
    come last: the one row of C{event_counter} stays locked from here to the commit, so
    writers queue for it only for the tail of their transactions, take positions in the
    order in which they commit, and a rollback gives its numbers back.  Readers therefore
    never see position M committed while a smaller one is still to come.
    """
    if not events:
        return []
    bodies = [event_json(pending.event) for pending in events]
    if dialect.modifying_ctes:
        stored = yield from _append_together(dialect, events, bodies)
        yield Written("", events=tuple(stored))
        return stored
    counts: dict[str, int] = {}
    for pending in events:
        if not pending.feed:
            counts[pending.conversation_id] = counts.get(pending.conversation_id, 0) + 1
    if whole is not None:
        offsets, last_position = yield from _write_back(dialect, whole, counts, len(events))
    else:
        offsets, last_position = yield from _take_offsets(dialect, counts, len(events))
    stored = _positioned(events, bodies, offsets, last_position)
    streamed = [e for e, pending in zip(stored, events, strict=True) if not pending.feed]
    if streamed:
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(streamed))
        params: list[object] = []
        for e in streamed:
            params.extend((e.position, e.conversation_id, e.offset, e.kind, e.body, e.created))
        yield dialect.prepared(
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {values}", *params, later=True
        )
    fed = [e for e, pending in zip(stored, events, strict=True) if pending.feed]
    if fed:
        values = ", ".join(["(?, ?, ?, ?, ?)"] * len(fed))
        params = []
        for e in fed:
            params.extend((e.position, e.conversation_id, e.kind, e.body, e.created))
        yield dialect.prepared(
            "INSERT INTO feed_events (position, conversation_id, kind, body, created)"
            f" VALUES {values}",
            *params,
            later=True,
        )
    yield Written("", events=tuple(stored))
    return stored


def _positioned(
    events: Sequence[PendingEvent],
    bodies: Sequence[str],
    offsets: dict[str, int],
    last_position: int,
) -> list[StoredEvent]:
    """
    The events as stored, given their bodies, the first offset of each conversation's
    new events (moved along here) and the last of their positions.
    """
    position = last_position - len(events) + 1
    stored = []
    for pending, body in zip(events, bodies, strict=True):
        offset = 0
        if not pending.feed:
            offset = offsets[pending.conversation_id]
            offsets[pending.conversation_id] = offset + 1
        stored.append(
            StoredEvent(
                position, pending.conversation_id, offset, pending.kind, body, pending.created
            )
        )
        position += 1
    return stored


_FEED_KINDS_SQL = ", ".join(f"'{kind}'" for kind in sorted(CONVERSATION_FEED_KINDS))
"""The kinds of the employees' feed's events, as a list of SQL literals."""

_APPEND_EVENTS = (
    "WITH pending (conversation_id, kind, body, created, i) AS ("
    "SELECT * FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS TEXT[]),"
    " CAST(? AS BIGINT[])) WITH ORDINALITY),"
    " streaming AS (SELECT pending.*,"
    " row_number() OVER (PARTITION BY conversation_id ORDER BY i) AS step"
    f" FROM pending WHERE kind NOT IN ({_FEED_KINDS_SQL})),"
    " added (id, events) AS ("
    "SELECT conversation_id, count(*) FROM streaming GROUP BY conversation_id),"
    " moved AS (UPDATE conversations SET last_offset = last_offset + added.events FROM added"
    " WHERE conversations.id = added.id"
    " RETURNING conversations.id, last_offset - added.events AS base),"
    " counted AS (UPDATE event_counter SET last = last + (SELECT count(*) FROM pending)"
    " WHERE id = 1 RETURNING last, last - (SELECT count(*) FROM pending) AS base),"
    f" streamed AS (INSERT INTO events ({_EVENT_COLUMNS})"
    " SELECT counted.base + s.i, s.conversation_id, moved.base + s.step, s.kind, s.body,"
    " s.created FROM streaming s CROSS JOIN counted"
    " LEFT JOIN moved ON moved.id = s.conversation_id),"
    " fed AS (INSERT INTO feed_events (position, conversation_id, kind, body, created)"
    " SELECT counted.base + p.i, p.conversation_id, p.kind, p.body, p.created"
    f" FROM pending p CROSS JOIN counted WHERE p.kind IN ({_FEED_KINDS_SQL}))"
    " SELECT set_config('medichat.appended', CAST(json_build_array("
    "(SELECT last FROM counted), (SELECT json_agg(json_build_array(id, base)) FROM moved)"
    ") AS TEXT), false)"
)
"""L{_append_together}'s statement: its parameters are the events' conversations, kinds,
bodies and times, as four arrays, in order.  An event of the employees' feed is one of a
feed kind (L{CONVERSATION_FEED_KINDS}, which the two tables' C{CHECK}s keep apart); the
others take offsets in their conversation's stream, in order, and every event a position,
in order.  What it gives back, the last position taken and each conversation's last
offset before, as JSON text (C{[last, [[id, offset], ...]]}), it also leaves in a setting
of the session, where L{_APPENDED} reads it after the commit.  A streamed event whose
conversation's row is not there gets no offset, which its column refuses: the
transaction fails rather than lose it.  (Each value psycopg2 quotes into a statement costs
the reactor some 11,000 instructions: what PostgreSQL can work out, it does.)"""

_APPENDED = "SHOW medichat.appended"
"""What L{_APPEND_EVENTS} gave back, read again after the commit (L{Statement.read_back}):
a setting of the session made in a transaction that commits outlives it.  C{SHOW} rather
than C{SELECT current_setting(...)}: a utility command, which PostgreSQL neither analyses
nor plans (25-45 against 60-80 µs of a backend's CPU on the eighteenth session's VM)."""


def _append_together(
    dialect: Dialect, events: Sequence[PendingEvent], bodies: Sequence[str]
) -> Script[list[StoredEvent]]:
    """
    L{_append_events} on PostgreSQL: the streams' offsets and the counter moved on and
    the events inserted in one statement (L{_APPEND_EVENTS}), whose text is the same
    whatever the number of events (it is prepared once per connection), and which goes
    with the C{COMMIT}, its result read back after it (L{Statement.read_back}): a
    message transaction's last round trip, and the counter's row held locked only for
    it, not also for the time its result takes to reach this process and the C{COMMIT}
    to come back.
    """
    result = yield Statement(
        dialect.sql(_APPEND_EVENTS),
        (
            [pending.conversation_id for pending in events],
            [pending.kind for pending in events],
            list(bodies),
            [pending.created for pending in events],
        ),
        prepare=True,
        read_back=_APPENDED,
    )
    last_position, moved = json.loads(result.rows[0][0])
    offsets = {str(conversation_id): int(base) + 1 for conversation_id, base in moved or ()}
    return _positioned(events, bodies, offsets, int(last_position))


def _write_back(
    dialect: Dialect, whole: _Whole, counts: dict[str, int], events: int
) -> Script[tuple[dict[str, int], int]]:
    """
    L{_take_offsets} for a transaction whose one conversation was read whole (SQLite,
    L{_Whole}): the conversation's row, its triage with its stream's new last offset, and
    the counter, in two plain C{UPDATE}s.

    @param counts: how many events of its stream the transaction writes (by conversation
        id: its own, or none).
    @param events: how many events it writes in all.
    @return: the first offset of its new events (by conversation id), and the last
        position taken.
    """
    row = whole.row
    yield dialect.prepared(
        "UPDATE conversations SET last_activity = ?, status = ?, last_offset = ? WHERE id = ?",
        row.last_activity,
        row.status,
        whole.last_offset + counts.get(row.id, 0),
        row.id,
    )
    last_position = whole.last_position + events
    yield dialect.prepared("UPDATE event_counter SET last = ? WHERE id = 1", last_position)
    return {row.id: whole.last_offset + 1}, last_position


def _take_offsets(
    dialect: Dialect, counts: dict[str, int], events: int
) -> Script[tuple[dict[str, int], int]]:
    """
    Move the conversations' streams' last offsets on by C{counts} (by conversation id)
    and the event counter by C{events}, on SQLite: an C{UPDATE ... FROM} for several
    conversations, then the counter's; for one, two plain C{UPDATE}s and a C{SELECT} of
    what they left.  (PostgreSQL does it all in L{_append_together}.)

    @return: the first offset of each conversation's new events, and the last position
        taken.
    """
    last_position: int | None = None
    result = _NOTHING
    if len(counts) == 1:
        # One conversation: plain UPDATEs, which SQLite runs for some 40,000 instructions
        # less than the UPDATE ... FROM below, then one SELECT of what they left, for
        # some 30,000 less than an ephemeral table for each RETURNING (docs/benchmarks.md,
        # fourteenth and sixteenth sessions).  The transaction holds SQLite's write lock:
        # nothing moves them in between.
        ((conversation_id, count),) = counts.items()
        yield dialect.prepared(
            "UPDATE conversations SET last_offset = last_offset + ? WHERE id = ?",
            count,
            conversation_id,
        )
        yield dialect.prepared("UPDATE event_counter SET last = last + ? WHERE id = 1", events)
        result = yield dialect.prepared(
            "SELECT conversations.id, last_offset, last FROM event_counter"
            " LEFT JOIN conversations ON conversations.id = ? WHERE event_counter.id = 1",
            conversation_id,
        )
        last_position = int(result.rows[0][2])
    elif counts:
        values = ", ".join(["(?, ?)"] * len(counts))
        params: list[object] = []
        for conversation_id, count in counts.items():
            params.extend((conversation_id, count))
        result = yield dialect.prepared(
            f"WITH added (id, events) AS (VALUES {values})"
            " UPDATE conversations SET last_offset = last_offset + added.events FROM added"
            " WHERE conversations.id = added.id RETURNING conversations.id, last_offset",
            *params,
        )
    # The first offset of each conversation's new events.
    offsets = {
        str(row[0]): int(row[1]) - counts[str(row[0])] + 1
        for row in result.rows if row[0] is not None
    }
    if last_position is None:
        counted = yield dialect.prepared(_COUNT_EVENTS, events)
        last_position = int(counted.rows[0][0])
    return offsets, last_position


def _prune_batch(dialect: Dialect, before: int, batch: int) -> Script[tuple[int, int]]:
    """
    Delete up to C{batch} events older than C{before} from each of the conversation
    events and the employees' feed; how many went from each.
    """
    counts = []
    for table in ("events", "feed_events"):
        # The table names are these two constants, never input.
        result = yield dialect.statement(
            f"DELETE FROM {table} WHERE position IN"
            f" (SELECT position FROM {table} WHERE created < ? ORDER BY position LIMIT ?)",
            before,
            batch,
        )
        counts.append(result.rowcount)
    return counts[0], counts[1]


_ACCESS_ROWS_PER_INSERT = 50
"""Access-log rows per C{INSERT} (eight parameters each: within every SQLite's limit)."""


def _record_access(dialect: Dialect, access: AccessEntry | None) -> Script[None]:
    """
    Write one access-log row in the current transaction, so that the access and its record
    commit together or not at all; nothing for L{None} (a customer's own action).
    """
    if access is not None:
        yield from _insert_access(dialect, [access])


def _record_message_access(dialect: Dialect, commit: MessageCommit) -> Script[None]:
    """
    Record a message's access on its own, its customer read from the conversation.
    """
    assert commit.access is not None
    result = yield dialect.statement(
        "SELECT customer_id FROM conversations WHERE id = ?", commit.message.conversation_id
    )
    customer = str(result.rows[0][0]) if result.rows else ""
    yield from _record_access(dialect, commit.access.of_customer(customer))


def _insert_access(dialect: Dialect, entries: Sequence[AccessEntry]) -> Script[None]:
    """
    Write access-log rows, several per statement.
    """
    row = "(" + ", ".join(["?"] * len(_ACCESS_COLUMNS.split(", "))) + ")"
    for start in range(0, len(entries), _ACCESS_ROWS_PER_INSERT):
        chunk = entries[start : start + _ACCESS_ROWS_PER_INSERT]
        params: list[object] = []
        for e in chunk:
            params += [
                e.at,
                e.employee_id,
                e.employee_name,
                e.role,
                e.action,
                e.conversation_id,
                e.customer_id,
                e.address,
            ]
        yield dialect.prepared(
            f"INSERT INTO access_log ({_ACCESS_COLUMNS}) VALUES "
            + ", ".join([row] * len(chunk)),
            *params,
            later=True,
        )


_ERASED_TABLES = (
    "idempotency_keys",
    "events",
    "feed_events",
    "receipts",
    "webhook_outbox",
    "conversation_employees",
    "messages",
)
"""What an erasure deletes by conversation, in an order that foreign keys allow; the
conversations themselves go last."""


def _erase_customer(
    dialect: Dialect, customer_id: str, actor: AccessEntry
) -> Script[list[str]]:
    """
    Delete every conversation of a customer with everything in it, and record one
    C{actor}-like access-log row per conversation erased, in one transaction.
    """
    # Locked first, as every writer of a conversation does: writers of these queue behind
    # the erasure and then find no conversation.
    result = yield dialect.statement(
        "SELECT id FROM conversations WHERE customer_id = ? ORDER BY created, id"
        + dialect.lock_row,
        customer_id,
    )
    erased = [row[0] for row in result.rows]
    if not erased:
        return erased
    for table in _ERASED_TABLES:
        yield dialect.statement(
            f"DELETE FROM {table} WHERE conversation_id IN"
            " (SELECT id FROM conversations WHERE customer_id = ?)",
            customer_id,
        )
    yield dialect.statement("DELETE FROM conversations WHERE customer_id = ?", customer_id)
    yield from _insert_access(
        dialect,
        [evolve(actor, conversation_id=c, customer_id=customer_id) for c in erased],
    )
    return erased


def _last_position(dialect: Dialect) -> Script[int]:
    result = yield dialect.statement("SELECT last FROM event_counter WHERE id = 1")
    return int(result.rows[0][0]) if result.rows else 0


def _stream_offsets(
    dialect: Dialect, conversation_id: str, since: int | None
) -> Script[tuple[int, int | None]]:
    result = yield dialect.statement(
        "SELECT last_offset FROM conversations WHERE id = ?", conversation_id
    )
    last = int(result.rows[0][0]) if result.rows else 0
    if since is None:
        return last, None
    # The (conversation_id, stream_offset) index walks the stream in order.
    result = yield dialect.statement(
        "SELECT stream_offset FROM events WHERE conversation_id = ? AND created >= ?"
        " ORDER BY stream_offset LIMIT 1",
        conversation_id,
        since,
    )
    return last, int(result.rows[0][0]) if result.rows else None


def _receipts(
    dialect: Dialect, conversation_id: str
) -> Script[tuple[Sequence[Receipt], Sequence[Receipt]]]:
    result = yield dialect.statement(
        "SELECT kind, user_id, at FROM receipts WHERE conversation_id = ? ORDER BY kind, user_id",
        conversation_id,
    )
    read: list[Receipt] = []
    received: list[Receipt] = []
    for kind, user_id, at in result.rows:
        (read if kind == "read" else received).append(Receipt(conversation_id, user_id, int(at)))
    return read, received


def _update_employee(
    dialect: Dialect, employee_id: str, changes: Sequence[tuple[str, object]]
) -> Script[bool]:
    if not changes:
        result = yield dialect.statement("SELECT id FROM employees WHERE id = ?", employee_id)
        return bool(result.rows)
    # The column names come from the caller's fixed list, never from input.
    assignments = ", ".join(f"{column} = ?" for column, _ in changes)
    result = yield dialect.statement(
        f"UPDATE employees SET {assignments} WHERE id = ?",
        *(value for _, value in changes),
        employee_id,
    )
    return result.rowcount > 0


# --------------------------------------------------------------------------------------
# The store


class SQLStore:
    """
    The L{medichat.interfaces.IStore} operations, over any driver that can run a
    transaction script.

    Subclasses provide C{kind}, L{_dialect}, L{_execute}, C{start} (which calls
    L{_start_running} once connected) and C{stop} (which calls L{_stop_running} before
    disconnecting).

    @ivar _reactor: gives the time recorded for applied migrations.
    @ivar _migrations: the migrations that C{start} applies.
    @ivar _create: whether C{start} may make a new database; if not, it fails with
        L{MissingDatabase} on one that medichat never migrated.
    @ivar observer: when set (for metrics), called as each operation starts with the
        operation's name (the store method's), and returns what is called with its outcome
        (its result, or a L{Failure}) when it ends.
    @ivar group_window: seconds from one group's start within which the next waits for
        more messages (L{DEFAULT_GROUP_WINDOW}: 0, never; each group as soon as it can).
    @ivar group_target: queued messages that start a group without waiting for the
        window's end (L{DEFAULT_GROUP_TARGET}).
    @ivar message_transactions: transactions of chat messages run so far: one per group,
        and one per message of a failed group committed again on its own (for metrics:
        messages per transaction is how well group commit shares a commit's cost).
    """

    kind: str = ""
    _dialect: Dialect = SQLITE

    def __init__(
        self, reactor: Any, migrations: Sequence[Migration] | None, *, create: bool = True
    ) -> None:
        self._reactor = reactor
        self._create = create
        self._migrations = (
            list(migrations) if migrations is not None else load_migrations(self._dialect.name)
        )
        self._running = False
        self._in_flight: set[Deferred[None]] = set()
        self._outage: str | None = None
        self._outage_writes_only = False
        self.observer: Callable[[str], Callable[[object], object]] | None = None
        self._message_queue: list[tuple[MessageCommit, Deferred[MessageCommitted | None]]] = []
        self._committing: Deferred[None] | None = None
        self._hand_off: Callable[[Sequence[StoredEvent]], object] | None = None
        self.max_batch = DEFAULT_MAX_BATCH
        self.max_groups = 1
        self.side_group = DEFAULT_SIDE_GROUP
        self.group_window = DEFAULT_GROUP_WINDOW
        self.group_target = DEFAULT_GROUP_TARGET
        self._groups = 0
        # When the last group started and how many messages it took, and the call that
        # starts the next once the window is over (while one is set).
        self._group_started = -math.inf
        self._last_group = 0
        self._window: IDelayedCall | None = None
        self._busy: set[str] = set()
        self.message_transactions = 0

    # -- for subclasses

    def start(self) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.start}."""
        raise NotImplementedError()

    def stop(self) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.stop}."""
        raise NotImplementedError()

    def preflight(self) -> None:
        """See L{medichat.interfaces.IStore.preflight}."""
        raise NotImplementedError()

    def _where(self) -> str:
        """
        The database's location for messages (never with a password).
        """
        raise NotImplementedError()

    def _execute(self, script: Script[T], write: bool) -> Deferred[T]:
        """
        Run a transaction script in one transaction.

        @param write: C{True} if it may write (SQLite then takes the write lock at once).
        @return: its return value; database errors become L{StoreError} (or
            L{medichat.interfaces.DuplicateError} for a unique violation).
        """
        raise NotImplementedError()

    async def _start_running(self) -> Migrated:
        """
        Apply pending migrations and accept operations; call once connected.

        @raise MissingDatabase: if the store may not create a database and this one was
            never migrated by medichat.
        """
        if not self._create and not await self._execute(_holds_schema(self._dialect), False):
            raise MissingDatabase(f"{self._where()} holds no medichat database")
        outcome = await self._execute(
            migrate(self._dialect, self._migrations, micros(self._reactor.seconds())),
            write=True,
        )
        for migration in outcome.applied:
            _log.info(
                "{kind} store: applied migration {version} ({name})",
                kind=self.kind,
                version=migration.version,
                name=migration.name,
            )
        self._running = True
        return outcome

    async def _stop_running(self) -> None:
        """
        Refuse new operations and wait for those in flight; call before disconnecting.
        """
        self._running = False
        if self._window is not None:
            # Messages waiting for a window: commit them now.
            self._commit_queued()
        while self._in_flight:
            await gatherResults(list(self._in_flight))

    def _run(self, script: Script[T], write: bool = False) -> Deferred[T]:
        if not self._running:
            script.close()
            return fail(StoreError(f"the {self.kind} store is not running"))
        done: Deferred[None] = Deferred()
        self._in_flight.add(done)
        # The operation is the store method that called (a coroutine's frame, for those
        # that run several scripts; "_add_message" is add_message's): a fixed set of names.
        ended = None
        if self.observer is not None:
            ended = self.observer(sys._getframe(1).f_code.co_name.lstrip("_"))

        def finished(result: T | Failure) -> T | Failure:
            self._in_flight.discard(done)
            done.callback(None)
            if ended is not None:
                ended(result)
            return result

        return self._transaction(script, write).addBoth(finished)

    def _note_outage(self, result: object, write: bool) -> None:
        """
        Log an outage once when it starts and once when it ends, rather than once per
        operation that fails meanwhile (each of which is answered 503).  While only writes
        fail (a read-only or full store), a read that works is no sign of recovery.
        """
        if isinstance(result, Failure):
            if not isinstance(result.value, StoreUnavailable):
                return
            if self._outage is None:
                self._outage = str(result.value)
                self._outage_writes_only = write
                _log.error(
                    "{kind} store unavailable, answering 503 until it recovers: {reason}",
                    kind=self.kind,
                    reason=self._outage,
                )
            elif not write:
                self._outage_writes_only = False
        elif self._outage is not None and (write or not self._outage_writes_only):
            _log.info(
                "{kind} store available again (was: {reason})", kind=self.kind, reason=self._outage
            )
            self._outage = None

    # -- schema

    def schema_version(self) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.schema_version}."""
        return self._run(_schema_version(self._dialect))

    def ping(self) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.ping}."""
        return self._run(_ping(self._dialect))

    def check_writable(self) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.check_writable}."""
        return self._run(_check_writable(self._dialect, micros(self._reactor.seconds())), True)

    # -- conversations

    def create_conversation(self, conversation: Conversation) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.create_conversation}."""
        return self._run(_create_conversation(self._dialect, conversation), write=True)

    def get_conversation(self, conversation_id: str) -> Deferred[Conversation | None]:
        """See L{medichat.interfaces.IStore.get_conversation}."""
        statement = self._dialect.statement(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", conversation_id
        )
        return self._run(_select_one(statement, conversation_from_row))

    def list_conversations(
        self,
        customer_id: str | None,
        query: rsql.Node | None,
        descending: bool,
        limit: int,
        after: tuple[int, str] | None,
    ) -> Deferred[Sequence[Conversation]]:
        """See L{medichat.interfaces.IStore.list_conversations}."""
        try:
            statement = conversations_query(
                self._dialect, customer_id, query, descending, limit, after
            )
        except rsql.RSQLError:
            return fail()
        return self._run(_select_all(statement, conversation_from_row))

    def overview(
        self,
        viewer_id: str,
        customer_id: str | None,
        query: rsql.Node | None,
        order: str,
        descending: bool,
        limit: int,
        after: tuple[int, str] | None,
    ) -> Deferred[Sequence[tuple[Conversation, Overview]]]:
        """See L{medichat.interfaces.IStore.overview}."""
        try:
            statement = overview_query(
                self._dialect, viewer_id, customer_id, query, order, descending, limit, after
            )
        except rsql.RSQLError:
            return fail()
        return self._run(_overview(self._dialect, statement))

    # -- triage

    def set_status(
        self, conversation_id: str, status: str, at: int
    ) -> Deferred[TriageChange | None]:
        """
        See L{medichat.interfaces.IStore.set_status}.

        @raise ValueError: (asynchronously) for a status that is not one of
            L{medichat.model.STATUSES}.
        """
        if status not in STATUSES:
            return fail(ValueError(f"no status {status!r}"))

        def decide(conversation: Conversation) -> Conversation:
            return evolve(conversation, status=cast(Status, status))

        return self._run(_change_triage(self._dialect, conversation_id, decide, at), write=True)

    def assign(
        self,
        conversation_id: str,
        assignee_id: str,
        assignee_name: str,
        take_over: bool,
        at: int,
    ) -> Deferred[TriageChange | None]:
        """See L{medichat.interfaces.IStore.assign}."""

        def decide(conversation: Conversation) -> Conversation:
            if conversation.assignee_id and not take_over:
                return conversation
            return evolve(conversation, assignee_id=assignee_id, assignee_name=assignee_name)

        return self._run(_change_triage(self._dialect, conversation_id, decide, at), write=True)

    def unassign(
        self, conversation_id: str, assignee_id: str, at: int
    ) -> Deferred[TriageChange | None]:
        """See L{medichat.interfaces.IStore.unassign}."""

        def decide(conversation: Conversation) -> Conversation:
            if conversation.assignee_id != assignee_id:
                return conversation
            return evolve(conversation, assignee_id="", assignee_name="")

        return self._run(_change_triage(self._dialect, conversation_id, decide, at), write=True)

    # -- messages

    def add_message(
        self,
        message: Message,
        idempotency_key: str | None,
        access: AccessEntry | None = None,
        *,
        notice: OfflineNotice | None = None,
    ) -> Deferred[tuple[Message, bool]]:
        """
        See L{medichat.interfaces.IStore.add_message}: L{commit_message} without the
        participant check or receipts.
        """
        commit = MessageCommit(
            message, idempotency_key, check_participant=False, access=access, notice=notice
        )

        def added(outcome: MessageCommitted | None) -> tuple[Message, bool]:
            if outcome is None:
                raise StoreError(f"no conversation {message.conversation_id!r}")
            return outcome.message, outcome.created

        return self.commit_message(commit).addCallback(added)

    def commit_message(self, commit: MessageCommit) -> Deferred[MessageCommitted | None]:
        """
        See L{medichat.interfaces.IStore.commit_message}: one L{commit_message} script
        each, in group commits.

        At most L{max_groups} message transactions are under way at a time; messages that
        arrive meanwhile queue, and when one is done, all of them (up to L{max_batch}) go
        together in the next transaction (L{commit_messages}), in the order they arrived;
        with a L{group_window} set (none by default), under a steady load the next waits
        for the end of the window, to take what arrives in it (see L{_commit_queued}).
        With one group at a time (SQLite, which has one connection anyway) commit order is
        arrival order; with several (PostgreSQL), the conversations' row locks keep each
        conversation's messages in commit order, and the event counter makes positions
        commit order.  A group that fails is committed again one message at a time, so
        that each caller gets its own outcome, unless it failed for an outage
        (L{StoreUnavailable}), which fails each.
        """
        if not self._running:
            return fail(StoreError(f"the {self.kind} store is not running"))
        waiting: Deferred[MessageCommitted | None] = Deferred()
        if self.observer is not None:
            # Timed from the call to the answer: the wait for its group included.
            ended = self.observer("commit_message")

            def observed(result: object) -> object:
                ended(result)
                return result

            waiting.addBoth(observed)
        self._message_queue.append((commit, waiting))
        if self._committing is None:
            self._committing = Deferred()
            self._in_flight.add(self._committing)
        self._commit_queued()
        return waiting

    def _commit_queued(self) -> None:
        """
        Start a group of what is queued while fewer than L{max_groups} are under way; a
        group that finishes at once (an in-memory store) is followed by the next in this
        loop.  Once nothing is queued or under way, C{stop} may go on.

        A conversation is in one group at a time: the messages of a conversation that a
        group under way holds wait for the next, so that each conversation's messages
        commit in the order they arrived.

        With nothing under way, a group starts at once unless a L{group_window} is set (none
        by default), the last group started less than that ago, took fewer than
        L{group_target} messages, and fewer than that are queued: then it starts when the
        window ends (or the target is reached), with whatever arrived meanwhile.  A
        message after a quiet spell goes at once; under a steady load the groups are what
        arrives in a window rather than one message each; and under a heavy one, where
        groups are large anyway, nothing waits (with a bounded number of callers, waiting
        would only slow them all down).
        """
        while self._message_queue and self._groups < self.max_groups and (
            self._groups == 0 or len(self._message_queue) >= self.side_group
        ):
            if self._groups == 0 and self._lingering():
                break
            group: list[tuple[MessageCommit, Deferred[MessageCommitted | None]]] = []
            waiting = []
            for queued in self._message_queue:
                conversation_id = queued[0].message.conversation_id
                if len(group) < self.max_batch and conversation_id not in self._busy:
                    group.append(queued)
                else:
                    waiting.append(queued)
            if not group:
                break
            self._message_queue = waiting
            conversations = {commit.message.conversation_id for commit, _ in group}
            self._busy |= conversations
            self._groups += 1
            self._group_started = self._reactor.seconds()
            self._last_group = len(group)
            committing = Deferred.fromCoroutine(self._commit_group(group))
            if committing.called:
                self._group_done(None, conversations, again=False)
            else:
                committing.addCallback(self._group_done, conversations)
        if not self._message_queue and self._groups == 0 and self._committing is not None:
            done, self._committing = self._committing, None
            self._in_flight.discard(done)
            done.callback(None)

    def _lingering(self) -> bool:
        """
        Whether the next group waits for the window to end (see L{_commit_queued}); if it
        does, the call that starts it then is set, and if not, a call set before is
        cancelled.  Never while the store is stopping.
        """
        if (
            self.group_window <= 0
            or len(self._message_queue) >= self.group_target
            or self._last_group >= self.group_target
            or not self._running
        ):
            if self._window is not None:
                self._window.cancel()
                self._window = None
            return False
        if self._window is not None:
            return True
        wait = self._group_started + self.group_window - self._reactor.seconds()
        if wait <= 0:
            return False
        self._window = self._reactor.callLater(wait, self._window_over)
        return True

    def _window_over(self) -> None:
        self._window = None
        self._commit_queued()

    def _group_done(self, _: None, conversations: set[str], again: bool = True) -> None:
        self._groups -= 1
        self._busy -= conversations
        if again:
            self._commit_queued()

    async def _commit_group(
        self, group: list[tuple[MessageCommit, Deferred[MessageCommitted | None]]]
    ) -> None:
        """
        Commit a group and give each caller its outcome; never fails.
        """
        if len(group) == 1:
            outcomes: list[MessageCommitted | None | Failure] = [
                await self._commit_one(group[0][0])
            ]
        else:
            commits = [commit for commit, _ in group]
            self.message_transactions += 1
            try:
                together = await self._transaction(commit_messages(self._dialect, commits), True)
                outcomes = list(together)
            except StoreUnavailable:
                outcomes = [Failure()] * len(group)
            except Exception:
                # Which one failed, and was it even one of them?  Each on its own now.
                outcomes = [await self._commit_one(commit) for commit in commits]
        for (_, waiting), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, Failure):
                waiting.errback(outcome)
            else:
                waiting.callback(outcome)

    async def _commit_one(self, commit: MessageCommit) -> MessageCommitted | None | Failure:
        """
        One message in its own transaction: its outcome, or its failure.
        """
        self.message_transactions += 1
        try:
            outcomes = await self._transaction(commit_messages(self._dialect, [commit]), True)
            return outcomes[0]
        except DuplicateError:
            failure = Failure()
            key = commit.idempotency_key
            if key is None:
                return failure
            # The same key stored between our look-up and our insert.  Locking the
            # conversation rules that out today; should it ever happen, the first
            # message is still the answer, never an error.
            message = commit.message
            try:
                first = await self._transaction(
                    _find_by_key(self._dialect, message.conversation_id, message.user_id, key),
                    False,
                )
                if first is not None and commit.access is not None:
                    # The failed transaction took its access-log row with it.
                    await self._transaction(_record_message_access(self._dialect, commit), True)
            except Exception:
                return Failure()
            return failure if first is None else MessageCommitted(first, False)
        except Exception:
            return Failure()

    def hand_off(self, listener: Callable[[Sequence[StoredEvent]], object] | None) -> None:
        """See L{medichat.interfaces.IStore.hand_off}."""
        self._hand_off = listener

    def _transaction(self, script: Script[T], write: bool) -> Deferred[T]:
        """
        Run a script in one transaction, noting outages; for work already accepted (the
        store may be stopping, but waits for it).  Once it has committed, the durable
        events it wrote go to the L{hand_off} listener, before whoever waits for the
        script's value hears of it.
        """
        written: list[StoredEvent] = []

        def noted(result: T | Failure) -> T | Failure:
            self._note_outage(result, write)
            listener = self._hand_off
            if written and listener is not None and not isinstance(result, Failure):
                try:
                    listener(written)
                except Exception:
                    _log.failure("handing committed events over failed")
            return result

        return self._execute(_taking_written(script, written), write).addBoth(noted)

    def list_messages(
        self,
        conversation_id: str,
        query: rsql.Node | None,
        descending: bool,
        limit: int | None,
    ) -> Deferred[Sequence[Message]]:
        """See L{medichat.interfaces.IStore.list_messages}."""
        try:
            statement = messages_query(self._dialect, conversation_id, query, descending, limit)
        except rsql.RSQLError:
            return fail()
        return self._run(_select_all(statement, message_from_row))

    # -- receipts

    def mark_read(
        self, conversation_id: str, user_id: str, at: int, access: AccessEntry | None = None
    ) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.mark_read}."""
        script = _mark(self._dialect, "read", conversation_id, user_id, at, access)
        return self._run(script, write=True)

    def mark_received(
        self, conversation_id: str, user_id: str, at: int, access: AccessEntry | None = None
    ) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.mark_received}."""
        script = _mark(self._dialect, "received", conversation_id, user_id, at, access)
        return self._run(script, write=True)

    def receipts(
        self, conversation_id: str
    ) -> Deferred[tuple[Sequence[Receipt], Sequence[Receipt]]]:
        """See L{medichat.interfaces.IStore.receipts}."""
        return self._run(_receipts(self._dialect, conversation_id))

    # -- events

    def last_event_position(self) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.last_event_position}."""
        return self._run(_last_position(self._dialect))

    def events_after(self, position: int, limit: int) -> Deferred[Sequence[StoredEvent]]:
        """See L{medichat.interfaces.IStore.events_after}."""
        # The conversation events and the employees' feed share one sequence of
        # positions; each side is read no further than the page.
        limit = max(0, limit)
        statement = self._dialect.statement(
            f"SELECT {_EVENT_COLUMNS} FROM ("
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > ?"
            " ORDER BY position LIMIT ?) e"
            " UNION ALL"
            f" SELECT {_EVENT_COLUMNS} FROM ("
            "SELECT position, conversation_id, 0 AS stream_offset, kind, body, created"
            " FROM feed_events WHERE position > ? ORDER BY position LIMIT ?) f"
            " ORDER BY position LIMIT ?",
            position,
            limit,
            position,
            limit,
            limit,
        )
        return self._run(_select_all(statement, event_from_row))

    def conversation_events(
        self, conversation_id: str, offset: int, limit: int
    ) -> Deferred[Sequence[StoredEvent]]:
        """See L{medichat.interfaces.IStore.conversation_events}."""
        statement = self._dialect.statement(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE conversation_id = ?"
            " AND stream_offset >= ? ORDER BY stream_offset LIMIT ?",
            conversation_id,
            offset,
            max(0, limit),
        )
        return self._run(_select_all(statement, event_from_row))

    def stream_offsets(
        self, conversation_id: str, since: int | None
    ) -> Deferred[tuple[int, int | None]]:
        """See L{medichat.interfaces.IStore.stream_offsets}."""
        return self._run(_stream_offsets(self._dialect, conversation_id, since))

    def prune_events(self, before: int, batch: int = 1000) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.prune_events}."""
        return Deferred.fromCoroutine(self._prune_events(before, batch))

    async def _prune_events(self, before: int, batch: int) -> int:
        # Batches, each its own short transaction, so that a large backlog never holds
        # locks (or SQLite's one writer) for long.  Each batch prunes the employees' feed
        # too, in the same transaction.
        removed = 0
        while True:
            counts = await self._run(_prune_batch(self._dialect, before, batch), write=True)
            removed += sum(counts)
            if max(counts) < batch:
                return removed

    # -- the access log

    def record_access(self, entries: Sequence[AccessEntry]) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.record_access}."""
        return self._run(_insert_access(self._dialect, list(entries)), write=True)

    def access_log(
        self,
        *,
        customer_id: str | None = None,
        employee_id: str | None = None,
        conversation_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        descending: bool = True,
        limit: int = 50,
        after: tuple[int, int] | None = None,
    ) -> Deferred[Sequence[AccessEntry]]:
        """See L{medichat.interfaces.IStore.access_log}."""
        statement = access_query(
            self._dialect,
            customer_id=customer_id,
            employee_id=employee_id,
            conversation_id=conversation_id,
            since=since,
            until=until,
            descending=descending,
            limit=limit,
            after=after,
        )
        return self._run(_select_all(statement, access_from_row))

    def prune_access_log(self, before: int, batch: int = 1000) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.prune_access_log}."""
        statement = self._dialect.statement(
            "DELETE FROM access_log WHERE seq IN"
            " (SELECT seq FROM access_log WHERE at < ? ORDER BY at, seq LIMIT ?)",
            before,
            batch,
        )
        return Deferred.fromCoroutine(self._prune_batches(statement, batch))

    async def _prune_batches(self, statement: Statement, batch: int) -> int:
        removed = 0
        while True:
            count = await self._run(_count(statement), write=True)
            removed += count
            if count < batch:
                return removed

    def erase_customer(self, customer_id: str, actor: AccessEntry) -> Deferred[Sequence[str]]:
        """See L{medichat.interfaces.IStore.erase_customer}."""
        return self._run(_erase_customer(self._dialect, customer_id, actor), write=True)

    # -- employees

    def add_employee(self, employee: Employee) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.add_employee}."""
        e = employee
        statement = self._dialect.statement(
            "INSERT INTO employees (id, email, email_lower, name, password_hash, disabled,"
            " created, last_login) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            e.id,
            e.email,
            email_key(e.email),
            e.name,
            e.password_hash,
            e.disabled,
            e.created,
            e.last_login,
        )
        return self._run(_write(statement), write=True)

    def get_employee(self, employee_id: str) -> Deferred[Employee | None]:
        """See L{medichat.interfaces.IStore.get_employee}."""
        statement = self._dialect.statement(
            f"SELECT {_EMPLOYEE_COLUMNS} FROM employees WHERE id = ?", employee_id
        )
        return self._run(_select_one(statement, employee_from_row))

    def find_employee(self, email: str) -> Deferred[Employee | None]:
        """See L{medichat.interfaces.IStore.find_employee}."""
        statement = self._dialect.statement(
            f"SELECT {_EMPLOYEE_COLUMNS} FROM employees WHERE email_lower = ?", email_key(email)
        )
        return self._run(_select_one(statement, employee_from_row))

    def list_employees(self) -> Deferred[Sequence[Employee]]:
        """See L{medichat.interfaces.IStore.list_employees}."""
        statement = self._dialect.statement(
            f"SELECT {_EMPLOYEE_COLUMNS} FROM employees ORDER BY email_lower, id"
        )
        return self._run(_select_all(statement, employee_from_row))

    def update_employee(
        self,
        employee_id: str,
        *,
        name: str | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
        last_login: int | None = None,
    ) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.update_employee}."""
        candidates: list[tuple[str, object]] = [
            ("name", name),
            ("password_hash", password_hash),
            ("disabled", disabled),
            ("last_login", last_login),
        ]
        changes = [(column, value) for column, value in candidates if value is not None]
        return self._run(_update_employee(self._dialect, employee_id, changes), write=True)

    # -- login sessions

    def add_login_session(self, session: LoginSession) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.add_login_session}."""
        s = session
        statement = self._dialect.statement(
            f"INSERT INTO login_sessions ({_LOGIN_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            s.id,
            s.employee_id,
            s.token_hash,
            s.created,
            s.expires_at,
            s.revoked,
        )
        return self._run(_write(statement), write=True)

    def find_login_session(self, token_hash: str) -> Deferred[LoginSession | None]:
        """See L{medichat.interfaces.IStore.find_login_session}."""
        statement = self._dialect.statement(
            f"SELECT {_LOGIN_SESSION_COLUMNS} FROM login_sessions WHERE token_hash = ?",
            token_hash,
        )
        return self._run(_select_one(statement, login_session_from_row))

    def extend_login_session(self, session_id: str, expires_at: int) -> Deferred[None]:
        """See L{medichat.interfaces.IStore.extend_login_session}."""
        statement = self._dialect.statement(
            "UPDATE login_sessions SET expires_at = ? WHERE id = ?", expires_at, session_id
        )
        return self._run(_write(statement), write=True)

    def revoke_login_sessions(
        self, *, session_id: str | None = None, employee_id: str | None = None
    ) -> Deferred[int]:
        """
        See L{medichat.interfaces.IStore.revoke_login_sessions}; given both, revokes the
        session only if it is the employee's.

        @raise ValueError: (asynchronously) given neither.
        """
        conditions = [
            (column, value)
            for column, value in (("id", session_id), ("employee_id", employee_id))
            if value is not None
        ]
        if not conditions:
            return fail(ValueError("revoke_login_sessions needs session_id or employee_id"))
        where = " AND ".join(f"{column} = ?" for column, _ in conditions)
        statement = self._dialect.statement(
            f"UPDATE login_sessions SET revoked = ? WHERE {where} AND NOT revoked",
            True,
            *(value for _, value in conditions),
        )
        return self._run(_count(statement), write=True)


__all__ = [
    "CONVERSATION_FIELDS",
    "DEFAULT_GROUP_TARGET",
    "DEFAULT_GROUP_WINDOW",
    "DEFAULT_MAX_BATCH",
    "MESSAGE_FIELDS",
    "MIGRATION_LOCK_KEY",
    "POSTGRESQL",
    "SQLITE",
    "Dialect",
    "Migrated",
    "Migration",
    "Result",
    "SQLStore",
    "Script",
    "Statement",
    "commit_message",
    "commit_messages",
    "access_query",
    "conversations_query",
    "load_migrations",
    "messages_query",
    "migrate",
    "overview_query",
]
