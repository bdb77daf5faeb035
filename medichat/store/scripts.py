"""
What the SQLite and the PostgreSQL store share: migrations, SQL, row mapping, and the
logic of every L{IStore} operation.

Each operation is written once, as a I{transaction script}: a generator that yields
L{Statement}s and is sent back each one's L{Result}, and whose return value is the
operation's.  A script does no I/O of its own, so the SQLite store drives it synchronously
in adbapi's database thread and the PostgreSQL store drives it asynchronously over
txpostgres, each inside one transaction.  What differs between the two SQL dialects is in
L{Dialect}.

SQL is only ever built from constants and from the fragments that L{medichat.rsql.to_sql}
compiles; every value travels as a parameter.  The constants here are written with C{?}
placeholders, which L{Dialect.sql} turns into the driver's own.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar, cast

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from medichat import rsql
from medichat.errors import DuplicateError, MissingDatabase, StoreError, StoreUnavailable
from medichat.model import (
    Conversation,
    Employee,
    LoginSession,
    Message,
    OfflineNotice,
    Receipt,
    Role,
    StoredEvent,
    event_json,
    message_event,
    micros,
    parse_time,
    receipt_event,
)
from medichat.store.webhook_scripts import queue_notifications

T = TypeVar("T")

_log = Logger()


@frozen
class Statement:
    """
    One SQL statement of a transaction script.

    @ivar sql: the SQL text, with the driver's placeholders.
    @ivar params: one value per placeholder.
    @ivar several: C{True} for a whole migration file: several statements separated by
        C{;}, without parameters.
    """

    sql: str
    params: tuple[object, ...] = ()
    several: bool = False


@frozen
class Result:
    """
    What a L{Statement} gave back.

    @ivar rows: the rows it returned (empty for statements that return none).
    @ivar rowcount: how many rows it changed, as the driver counts them.
    """

    rows: list[tuple[Any, ...]]
    rowcount: int


Script = Generator[Statement, Result, T]
"""A transaction script returning a C{T}."""


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
    """

    name: str
    placeholder: str
    lock_row: str
    migration_lock: str | None
    count_tables: str

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
)
"""PostgreSQL through psycopg2."""

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

_CONVERSATION_COLUMNS = "id, created, customer_id, customer_name"
_MESSAGE_COLUMNS = "seq, id, conversation_id, created, user_id, user_name, user_role, message"
_EMPLOYEE_COLUMNS = "id, email, name, password_hash, disabled, created, last_login"
_LOGIN_SESSION_COLUMNS = "id, employee_id, token_hash, created, expires_at, revoked"
_EVENT_COLUMNS = "position, conversation_id, stream_offset, kind, body, created"


def conversation_from_row(row: Sequence[Any]) -> Conversation:
    """A L{Conversation} from a row of L{_CONVERSATION_COLUMNS}."""
    id_, created, customer_id, customer_name = row
    return Conversation(
        id=id_, created=int(created), customer_id=customer_id, customer_name=customer_name
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
}
"""What an RSQL query over conversations may name, and the columns."""


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
    conditions: list[tuple[str, Sequence[object]]] = []
    if customer_id is not None:
        conditions.append((dialect.sql("customer_id = ?"), [customer_id]))
    if after is not None:
        # Row values compare lexicographically: strictly past the cursor row.
        comparison = "<" if descending else ">"
        conditions.append((dialect.sql(f"(created, id) {comparison} (?, ?)"), list(after)))
    if query is not None:
        conditions.append(rsql.to_sql(query, CONVERSATION_FIELDS, dialect.placeholder))
    where, params = _where(conditions)
    direction = "DESC" if descending else "ASC"
    sql = (
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations{where}"
        f" ORDER BY created {direction}, id {direction} LIMIT {dialect.placeholder}"
    )
    return Statement(sql, (*params, max(0, limit)))


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
    messages of one conversation commit one at a time, in C{seq} order.
    """
    result = yield dialect.statement(
        "SELECT id FROM conversations WHERE id = ?" + dialect.lock_row, conversation_id
    )
    if not result.rows:
        raise StoreError(f"no conversation {conversation_id!r}")


def _find_by_key(
    dialect: Dialect, conversation_id: str, user_id: str, key: str
) -> Script[Message | None]:
    columns = ", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))
    result = yield dialect.statement(
        f"SELECT {columns} FROM idempotency_keys k JOIN messages m ON m.id = k.message_id"
        " WHERE k.conversation_id = ? AND k.user_id = ? AND k.idempotency_key = ?",
        conversation_id,
        user_id,
        key,
    )
    return message_from_row(result.rows[0]) if result.rows else None


def _add_message(
    dialect: Dialect, message: Message, key: str | None, notice: OfflineNotice | None = None
) -> Script[tuple[Message, bool]]:
    yield from _lock_conversation(dialect, message.conversation_id)
    if key is not None:
        existing = yield from _find_by_key(dialect, message.conversation_id, message.user_id, key)
        if existing is not None:
            return existing, False
    result = yield dialect.statement(
        "INSERT INTO messages"
        " (id, conversation_id, created, user_id, user_name, user_role, message)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        message.id,
        message.conversation_id,
        message.created,
        message.user_id,
        message.user_name,
        message.user_role,
        message.message,
    )
    stored = evolve(message, seq=int(result.rows[0][0]))
    if key is not None:
        yield dialect.statement(
            "INSERT INTO idempotency_keys"
            " (conversation_id, user_id, idempotency_key, message_id, created)"
            " VALUES (?, ?, ?, ?, ?)",
            message.conversation_id,
            message.user_id,
            key,
            message.id,
            message.created,
        )
    yield from queue_notifications(dialect, stored, notice)
    yield from _append_event(
        dialect, message.conversation_id, "message", message_event(stored), message.created
    )
    return stored, True


def _mark(dialect: Dialect, kind: str, conversation_id: str, user_id: str, at: int) -> Script[bool]:
    # The conversation first, as for a message: one lock order for every writer of it.
    yield from _lock_conversation(dialect, conversation_id)
    # One statement, so that two writers cannot both read the old time and both win;
    # RETURNING gives a row only where a row was inserted or moved forward.
    result = yield dialect.statement(
        "INSERT INTO receipts (conversation_id, kind, user_id, at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (conversation_id, kind, user_id) DO UPDATE SET at = excluded.at"
        " WHERE excluded.at > receipts.at"
        " RETURNING at",
        conversation_id,
        kind,
        user_id,
        at,
    )
    if not result.rows:
        return False  # a receipt that does not move writes no event
    yield from _append_event(
        dialect, conversation_id, kind, receipt_event(kind, user_id, at), at
    )
    return True


def _append_event(
    dialect: Dialect, conversation_id: str, kind: str, event: dict[str, Any], created: int
) -> Script[StoredEvent]:
    """
    Write a durable event in the current transaction; call at its very end, with the
    conversation's row locked (L{_lock_conversation}).

    The conversation's row gives the next offset of its stream.  The global position comes
    last: the one row of C{event_counter} stays locked from here to the commit, so writers
    queue for it only for the tail of their transactions, take positions in the order in
    which they commit, and a rollback gives its number back.  Readers therefore never see
    position M committed while a smaller one is still to come.
    """
    result = yield dialect.statement(
        "UPDATE conversations SET last_offset = last_offset + 1 WHERE id = ? RETURNING last_offset",
        conversation_id,
    )
    offset = int(result.rows[0][0])
    result = yield dialect.statement(
        "UPDATE event_counter SET last = last + 1 WHERE id = 1 RETURNING last"
    )
    position = int(result.rows[0][0])
    stored = StoredEvent(position, conversation_id, offset, kind, event_json(event), created)
    yield dialect.statement(
        f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        stored.position,
        stored.conversation_id,
        stored.offset,
        stored.kind,
        stored.body,
        stored.created,
    )
    return stored


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
        while self._in_flight:
            await gatherResults(list(self._in_flight))

    def _run(self, script: Script[T], write: bool = False) -> Deferred[T]:
        if not self._running:
            script.close()
            return fail(StoreError(f"the {self.kind} store is not running"))
        done: Deferred[None] = Deferred()
        self._in_flight.add(done)

        def finished(result: T | Failure) -> T | Failure:
            self._in_flight.discard(done)
            done.callback(None)
            self._note_outage(result, write)
            return result

        return self._execute(script, write).addBoth(finished)

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
        c = conversation
        statement = self._dialect.statement(
            f"INSERT INTO conversations ({_CONVERSATION_COLUMNS}) VALUES (?, ?, ?, ?)",
            c.id,
            c.created,
            c.customer_id,
            c.customer_name,
        )
        return self._run(_write(statement), write=True)

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

    # -- messages

    def add_message(
        self, message: Message, idempotency_key: str | None, notice: OfflineNotice | None = None
    ) -> Deferred[tuple[Message, bool]]:
        """See L{medichat.interfaces.IStore.add_message}."""
        return Deferred.fromCoroutine(self._add_message(message, idempotency_key, notice))

    async def _add_message(
        self, message: Message, key: str | None, notice: OfflineNotice | None
    ) -> tuple[Message, bool]:
        try:
            return await self._run(_add_message(self._dialect, message, key, notice), write=True)
        except DuplicateError:
            if key is None:
                raise
            # The same key stored between our look-up and our insert.  Locking the
            # conversation rules that out today; should it ever happen, the first
            # message is still the answer, never an error.
            first = await self._run(
                _find_by_key(self._dialect, message.conversation_id, message.user_id, key)
            )
            if first is None:
                raise
            return first, False

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

    def mark_read(self, conversation_id: str, user_id: str, at: int) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.mark_read}."""
        return self._run(_mark(self._dialect, "read", conversation_id, user_id, at), write=True)

    def mark_received(self, conversation_id: str, user_id: str, at: int) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.mark_received}."""
        return self._run(_mark(self._dialect, "received", conversation_id, user_id, at), write=True)

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
        statement = self._dialect.statement(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            position,
            max(0, limit),
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
        # locks (or SQLite's one writer) for long.
        statement = self._dialect.statement(
            "DELETE FROM events WHERE position IN"
            " (SELECT position FROM events WHERE created < ? ORDER BY position LIMIT ?)",
            before,
            batch,
        )
        removed = 0
        while True:
            count = await self._run(_count(statement), write=True)
            removed += count
            if count < batch:
                return removed

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
    "conversations_query",
    "load_migrations",
    "messages_query",
    "migrate",
]
