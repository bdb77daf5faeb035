"""
The clustered store: PostgreSQL through txpostgres, which drives psycopg2's asynchronous
connections from the reactor (no threads).

A pool of a few connections serves every operation, each in its own transaction.  A
connection that PostgreSQL drops (a restart, a fail-over, an idle timeout) fails what was
running on it and is opened again when it is next used; nothing is retried on its own,
since a write may or may not have committed.  libpq does not time out asynchronous
connection attempts, so L{PostgreSQLStore} does.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg2
import psycopg2.errors
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres
from zope.interface import implementer

from medichat.errors import DuplicateError, StoreError, StoreUnavailable
from medichat.interfaces import IStore
from medichat.store.presence_scripts import PresenceOperations
from medichat.store.scripts import POSTGRESQL, Migration, Result, Script, SQLStore
from medichat.store.webhook_scripts import WebhookOperations

T = TypeVar("T")

_log = Logger()

DEFAULT_POOL_SIZE = 4
"""Connections per process; each runs one transaction at a time."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection to PostgreSQL before giving up."""


def redact(url: str) -> str:
    """
    A PostgreSQL URL fit for logs and error messages: without its password.
    """
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            port = f":{parts.port}" if parts.port is not None else ""
            parts = parts._replace(netloc=f"{user}:***@{host}{port}")
        # libpq also takes the password as a query parameter.
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(key == "password" for key, _ in query):
            hidden = [(key, "***" if key == "password" else value) for key, value in query]
            parts = parts._replace(query=urlencode(hidden, safe="*"))
        return parts.geturl()
    except ValueError:
        return "(unparseable URL)"


@implementer(IStore)
class PostgreSQLStore(PresenceOperations, WebhookOperations, SQLStore):
    """
    L{IStore} in a PostgreSQL database, which any number of medichat processes may share.

    @ivar url: the C{postgresql://} URL (libpq connection URI) connected to.
    """

    kind = "postgresql"
    _dialect = POSTGRESQL

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        migrations: Sequence[Migration] | None = None,
        create: bool = True,
    ) -> None:
        """
        @param url: a libpq connection URI, C{postgresql://user@host:port/dbname}.
        @param reactor: provides C{IReactorTime} and C{IReactorFDSet}.
        @param pool_size: how many connections to keep.
        @param connect_timeout: seconds to wait for each connection to open.
        @param migrations: the migrations to apply at start; all that ship with medichat
            unless given (tests pass fewer, to make an older database).
        @param create: make medichat's tables if the database has none; if C{False},
            C{start} fails with L{medichat.errors.MissingDatabase} instead.
        """
        super().__init__(reactor, migrations, create=create)
        self.url = url
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: _Pool | None = None
        # Message groups commit side by side on all connections but one, which stays
        # free for reads (the event feed's, a GET's).
        self.max_groups = max(1, pool_size - 1)

    def start(self) -> Deferred[None]:
        """See L{IStore.start}."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._pool is not None:
            raise StoreError("the PostgreSQL store was started already")
        pool = _Pool(self._reactor, self.url, self._pool_size, self._connect_timeout)
        self._pool = pool
        try:
            try:
                await pool.start()
            except Exception as e:
                raise StoreError(
                    f"cannot connect to PostgreSQL at {redact(self.url)}: {_reason(e)}"
                ) from e
            outcome = await self._start_running()
        except BaseException:
            self._pool = None
            pool.close()
            raise
        _log.info(
            "PostgreSQL store {url} at schema version {version}",
            url=redact(self.url),
            version=outcome.after,
        )

    def _where(self) -> str:
        return redact(self.url)

    def preflight(self) -> None:
        """
        See L{IStore.preflight}: connect once, blocking, with the connection timeout.
        """
        try:
            psycopg2.connect(
                self.url, connect_timeout=max(1, math.ceil(self._connect_timeout))
            ).close()
        except psycopg2.Error as e:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {redact(self.url)}: {_reason(e)}"
            ) from e

    def stop(self) -> Deferred[None]:
        """See L{IStore.stop}: waits for operations in flight, then disconnects."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        pool = self._pool
        if pool is None:
            return
        # Work accepted before stop (queued messages) still needs the pool.
        await self._stop_running()
        if self._pool is not pool:
            return  # another stop() finished first
        self._pool = None
        pool.close()

    def _execute(self, script: Script[T], write: bool) -> Deferred[T]:
        assert self._pool is not None
        d: Deferred[T] = self._pool.run_script(script)
        return d.addErrback(self._translate)

    def _translate(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, psycopg2.errors.UniqueViolation):
            detail = (error.diag.message_detail or error.diag.message_primary or "").strip()
            raise DuplicateError(f"already taken: {detail}") from error
        if isinstance(error, _OUTAGES):
            raise StoreUnavailable(
                f"PostgreSQL at {redact(self.url)}: {_reason(error)}"
            ) from error
        if isinstance(error, psycopg2.Error | txpostgres.RollbackFailed):
            raise StoreError(f"PostgreSQL at {redact(self.url)}: {_reason(error)}") from error
        return failure


_OUTAGES = (
    # Connections lost or refused, the server shutting down, a full disk.
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    # A read-only server (a standby, default_transaction_read_only).
    psycopg2.errors.ReadOnlySqlTransaction,
    txpostgres.RollbackFailed,
)
"""Driver errors that mean the database cannot serve now, not that a statement is wrong."""


def _reason(error: BaseException) -> str:
    """
    The gist of a driver error, on one line.
    """
    text = " ".join(str(error).split())
    return text or type(error).__name__


async def _drive(connection: _Connection, script: Script[T]) -> T:
    """
    Run a transaction script on a connection, in one transaction, through
    L{_Connection.execute}.

    C{BEGIN} travels with the first statement (one round trip, and none for a script
    that has no statement); C{COMMIT} follows the last; any failure rolls back.  A
    statement marked C{prepare} runs as C{EXECUTE} of the connection's prepared
    statement once it has one (L{_prepare}); one marked C{later} travels with the next
    statement, or with the C{COMMIT} (L{_together}); one with a C{read_back} query
    travels with the C{COMMIT} and that query, whose result the script gets.
    """
    cursor = connection.raw_cursor()
    began = False
    # The script's last statement went with the COMMIT (Statement.read_back).
    committed = False
    # Statements whose results the script does not read, to go with the next one.
    held: list[tuple[str, tuple[object, ...]]] = []
    try:
        try:
            statement = next(script)
            while True:
                if committed:
                    raise StoreError(
                        "a transaction script went on after its last statement"
                        f" ({statement.sql[:60]!r})"
                    )
                sql = statement.sql
                if statement.prepare and statement.params:
                    execute = None
                    if sql in connection.prepared:
                        execute = connection.prepared[sql]
                    elif len(connection.prepared) < MAX_PREPARED and connection.seen(sql):
                        # Begun from here on, should the preparation itself fail.
                        began, begun = True, began
                        execute = await _prepare(connection, cursor, sql, begun)
                    if execute is not None:
                        sql = execute
                if statement.later and statement.params:
                    held.append((sql, statement.params))
                    statement = script.send(_UNREAD)
                    continue
                sql, params = _together(held, sql, statement.params)
                held = []
                # Without parameters psycopg2 leaves the text alone (a literal % stays).
                sql = sql if began else "BEGIN; " + sql
                began = True
                if statement.read_back is not None:
                    await connection.execute(
                        cursor, f"{sql}; COMMIT; {statement.read_back}", params or None
                    )
                    # Nothing left to roll back, should the script fail from here on.
                    began, committed = False, True
                else:
                    await connection.execute(cursor, sql, params or None)
                rows = cursor.fetchall() if cursor.description is not None else []
                statement = script.send(Result(rows, cursor.rowcount))
        except StopIteration as stop:
            if began or held:
                sql, params = _together(held, "COMMIT", ())
                sql = sql if began else "BEGIN; " + sql
                began = True
                await connection.execute(cursor, sql, params or None)
            value: T = stop.value
            return value
    except BaseException as e:
        if isinstance(e, psycopg2.errors.InvalidSqlStatementName):
            # The session lost its prepared statements (a DISCARD ALL, say): the next
            # transaction prepares them again.
            _log.warn("PostgreSQL session lost its prepared statements: {reason}",
                      reason=_reason(e))
            connection.prepared.clear()
        if began and connection.is_open:
            try:
                await connection.execute(cursor, "ROLLBACK", None)
            except Exception as rollback_error:
                # The connection is in doubt: drop it, to be opened again when next used.
                _log.warn("PostgreSQL rollback failed, reconnecting: {reason}",
                          reason=_reason(rollback_error))
                connection.close()
        raise
    finally:
        if connection.is_open:
            cursor.close()


_UNREAD = Result([], -1)
"""What a script is given for a statement held to go with the next one."""


def _together(
    held: Sequence[tuple[str, tuple[object, ...]]], sql: str, params: tuple[object, ...]
) -> tuple[str, tuple[object, ...]]:
    """
    C{sql} after the statements C{held}, as one text for one round trip (PostgreSQL
    runs them in order; the result is the last one's), with all their parameters.
    """
    if not held:
        return sql, params
    texts = [text for text, _ in held]
    values: list[object] = []
    for _, their_params in held:
        values.extend(their_params)
    if params:
        values.extend(params)
    elif "%" in sql:
        # With parameters psycopg2 reads every % as a placeholder.
        sql = sql.replace("%", "%%")
    return "; ".join([*texts, sql]), tuple(values)


MAX_PREPARED = 256
"""Statements prepared per connection, at most (then the rest run unprepared)."""

_SAVEPOINT = "medichat_prepare"


async def _prepare(connection: _Connection, cursor: Any, sql: str, began: bool) -> str | None:
    """
    Prepare C{sql} (with psycopg2's C{%s} placeholders) on C{connection}, inside the
    transaction (begun here if C{began} is false), under a savepoint: a statement that
    PostgreSQL cannot prepare (a parameter it cannot type from the statement alone)
    leaves the transaction as it was, and is remembered as such.

    @return: the C{EXECUTE} to send in its place (with C{%s} for its parameters), or
        L{None} to send it as it is.
    """
    name = f"medichat_{next(connection.names)}"
    numbered, count = _numbered(sql)
    begin = "" if began else "BEGIN; "
    try:
        await connection.execute(
            cursor,
            f"{begin}SAVEPOINT {_SAVEPOINT}; PREPARE {name} AS {numbered};"
            f" RELEASE SAVEPOINT {_SAVEPOINT}",
            None,
        )
    except psycopg2.Error as e:
        if isinstance(e, _OUTAGES) or not connection.is_open:
            raise
        await connection.execute(
            cursor, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}", None
        )
        _log.info("PostgreSQL runs a statement unprepared: {reason}", reason=_reason(e))
        connection.prepared[sql] = None
        return None
    execute = f"EXECUTE {name} ({', '.join(['%s'] * count)})"
    connection.prepared[sql] = execute
    return execute


def _numbered(sql: str) -> tuple[str, int]:
    """
    C{sql} with psycopg2's placeholders (C{%s}, and C{%%} for a percent sign) as
    PostgreSQL's own (C{$1}, C{$2}...); and how many there are.
    """
    parts = sql.split("%%")
    count = 0
    for i, part in enumerate(parts):
        pieces = part.split("%s")
        numbered = [pieces[0]]
        for piece in pieces[1:]:
            count += 1
            numbered.append(f"${count}{piece}")
        parts[i] = "".join(numbered)
    return "%".join(parts), count


# --------------------------------------------------------------------------------------
# Connections


class _Connection(txpostgres.Connection):
    """
    A txpostgres connection that reports its loss once, as a warning, rather than as an
    unhandled error from the reactor; and that runs the store's statements itself
    (L{execute}), with its socket registered for reading all along.

    txpostgres registers and unregisters the socket with the reactor around every query
    (four C{epoll_ctl} calls: the connection stops reading, the cursor starts and stops,
    the connection starts again) and hands each result over a C{callLater(0)}: about a
    tenth of the reactor thread's time under load.  txpostgres already keeps an idle
    connection registered as a reader (for C{NOTIFY}); L{execute} leaves it so, polls
    psycopg2 from L{doRead} while a statement is under way, and fires its result at
    once.  txpostgres's own methods (which the broadcast connections use) are untouched.

    Once open, the connection is watched through a duplicate of its socket's descriptor
    (L{fileno}), closed only after the reactor has stopped watching it.  libpq closes its
    own descriptor the moment it finds the server gone, inside the call that fails, while
    the reactor still counts that number as watched; the next connection accepted on the
    same number (any HTTP or WebSocket client) would then never be registered, and never
    read.  The duplicate keeps the number, and the reactor's registration, ours until
    L{close}.
    """

    _statement: Deferred[None] | None = None
    _watched: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What _drive prepared on this session (the SQL text: its EXECUTE, or None for a
        # statement PostgreSQL would not prepare); a new connection starts with none.
        self.prepared: dict[str, str | None] = {}
        # Names for them, never used twice on a session (one lost may linger).
        self.names = itertools.count(1)
        self._seen: set[str] = set()

    def seen(self, sql: str) -> bool:
        """
        Whether C{sql} was sent on this connection before: a statement is prepared on
        its second use, so that texts used once (a group of unusual size) are not.
        """
        if sql in self._seen:
            return True
        if len(self._seen) >= 4 * MAX_PREPARED:
            self._seen.clear()
        self._seen.add(sql)
        return False

    def poll(self) -> Deferred[Any]:
        """Poll (txpostgres: the connection's set-up); once open, watch a duplicate."""
        polled: Deferred[Any] = super().poll()
        if self._watched is None:
            polled.addCallback(self._watch)
        return polled

    def _watch(self, result: object) -> object:
        # Runs before txpostgres starts reading the new connection (its callback follows);
        # whatever the set-up left registered under libpq's own number moves over.
        if self._watched is None and self._connection is not None and not self._connection.closed:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            self._watched = os.dup(self._connection.fileno())
        return result

    def fileno(self) -> int:
        """The descriptor the reactor watches: the duplicate once open."""
        if self._watched is not None:
            return self._watched
        return int(super().fileno())

    @property
    def is_open(self) -> bool:
        """C{True} if connected and not known to be lost."""
        return self._connection is not None and not self._connection.closed

    def raw_cursor(self) -> Any:
        """A psycopg2 cursor of the connection, for L{execute}."""
        return self._connection.cursor()

    def execute(self, cursor: Any, sql: str, params: Any) -> Deferred[None]:
        """
        Send a statement on a cursor from L{raw_cursor}; fires when its result is in
        the cursor.  One at a time per connection (the pool sees to that).

        @raise StoreError: (asynchronously) for a value psycopg2 refuses to send (a NUL in
            text).
        """
        assert self._statement is None, "a statement is under way on this connection"
        try:
            cursor.execute(sql, params)
        except ValueError as e:
            # psycopg2 refuses some values before sending anything.
            return fail(StoreError(f"PostgreSQL cannot store this value: {e}"))
        except Exception:
            return fail()
        statement = self._statement = Deferred()
        self._advance()
        return statement

    def _advance(self) -> None:
        """
        Move the statement under way forward: poll psycopg2, and fire its L{Deferred}
        once it is done (or failed).
        """
        statement = self._statement
        assert statement is not None
        try:
            state = self._connection.poll()
        except Exception:
            self._statement = None
            if self._connection.closed:
                # Gone (libpq has closed its own descriptor): stop watching it now.
                self.reactor.removeReader(self)
                self.reactor.removeWriter(self)
            statement.errback()
            return
        if state == psycopg2.extensions.POLL_OK:
            self._statement = None
            statement.callback(None)
        elif state == psycopg2.extensions.POLL_WRITE:
            # A large statement that the socket did not take at once; the reading side
            # stays registered.
            self.reactor.addWriter(self)

    def doRead(self) -> None:
        """Read; an error while idle means the server has gone."""
        if self._statement is not None:
            self._advance()
            return
        try:
            super().doRead()
        except psycopg2.Error as e:
            _log.warn("PostgreSQL connection lost: {reason}", reason=_reason(e))
            # psycopg2 may not have marked it closed yet; txpostgres stopped reading it.
            # Closed, its next use opens a new one instead of sending a statement into a
            # connection nobody reads, which would wait for ever.
            self.close()

    def doWrite(self) -> None:
        """Write the rest of a statement under way."""
        if self._statement is not None:
            self.reactor.removeWriter(self)
            self._advance()
            return
        super().doWrite()

    def connectionLost(self, reason: Failure) -> None:
        """Fail the statement under way, if any, then forget the connection."""
        statement, self._statement = self._statement, None
        if statement is not None:
            statement.errback(
                psycopg2.OperationalError(f"connection lost: {reason.getErrorMessage()}")
            )
        super().connectionLost(reason)

    def close(self) -> None:
        """
        Close, even if the connection never opened: stop watching its socket (the
        connection, and any txpostgres cursor under way, which txpostgres itself would
        leave registered), close it, then the duplicate.
        """
        if self._connection is not None:
            for cursor in list(self._cursors):
                self.reactor.removeReader(cursor)
                self.reactor.removeWriter(cursor)
            super().close()
        watched, self._watched = self._watched, None
        if watched is not None:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            os.close(watched)


class _Slot:
    """
    One place in the pool: a connection that is opened again, on its next use, after it
    was lost.  Only one operation uses a slot at a time (the pool sees to that).
    """

    def __init__(self, reactor: Any, cooperator: Any = None, *, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._args: tuple[Any, ...] = ()
        self._kwargs: dict[str, Any] = {}
        self._opening: Deferred[None] | None = None
        self._timer: Any = None

    def connect(self, *args: Any, **kwargs: Any) -> Deferred[None]:
        """
        Open the connection; remember the arguments for reopening it.
        """
        self._args, self._kwargs = args, kwargs
        return self._open()

    def _open(self) -> Deferred[None]:
        """
        Open a new connection, giving up after the timeout.
        """
        self.close()
        connection = self._connection = _Connection(self._reactor)
        opening = self._opening = Deferred()
        self._timer = self._reactor.callLater(
            self._timeout,
            self._settle,
            Failure(
                StoreUnavailable(f"no answer from PostgreSQL within {self._timeout:g} seconds")
            ),
        )
        connecting: Deferred[Any] = connection.connect(*self._args, **self._kwargs)
        connecting.addBoth(self._settle)
        return opening

    def _settle(self, outcome: object) -> None:
        """
        End the current attempt to open, with success or a failure; later outcomes of the
        same attempt (a timeout after success, an answer after the timeout) are ignored.
        """
        opening, self._opening = self._opening, None
        if opening is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if isinstance(outcome, Failure):
            # An attempt that failed, or that was given up, leaves nothing open.
            if self._connection is not None:
                self._connection.close()
            opening.errback(outcome)
        else:
            opening.callback(None)

    def runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{interaction} in a transaction, reconnecting first if the connection was lost.
        """
        if self._connection is not None and self._connection.is_open:
            return self._connection.runInteraction(interaction, *args, **kwargs)
        _log.info("reconnecting to PostgreSQL")

        def run(_: None) -> Any:
            assert self._connection is not None
            return self._connection.runInteraction(interaction, *args, **kwargs)

        return self._open().addCallback(run)

    def run_script(self, script: Script[T]) -> Deferred[T]:
        """
        Run a transaction script (L{_drive}), reconnecting first if the connection was
        lost.
        """
        if self._connection is not None and self._connection.is_open:
            return Deferred.fromCoroutine(_drive(self._connection, script))
        _log.info("reconnecting to PostgreSQL")

        def run(_: None) -> Deferred[T]:
            assert self._connection is not None
            return Deferred.fromCoroutine(_drive(self._connection, script))

        return self._open().addCallback(run)

    def close(self) -> None:
        """
        Disconnect; an attempt to open still under way fails.
        """
        if self._opening is not None:
            self._settle(Failure(StoreError("the connection was closed while opening")))
        if self._connection is not None:
            self._connection.close()


class _Pool(txpostgres.ConnectionPool):
    """
    txpostgres's pool of L{_Slot}s, on a given reactor.
    """

    def __init__(self, reactor: Any, url: str, size: int, timeout: float) -> None:
        # txpostgres reads these while constructing the pool's connections.
        self.reactor = reactor
        self.connectionFactory = functools.partial(_Slot, timeout=timeout)
        super().__init__(None, url, min=size)

    def run_script(self, script: Script[T]) -> Deferred[T]:
        """Run a transaction script on a free connection (L{_Slot.run_script})."""
        d: Deferred[T] = self._semaphore.run(self._run_script, script)
        return d

    def _run_script(self, script: Script[T]) -> Deferred[T]:
        slot = self.connections.pop()
        d: Deferred[T] = slot.run_script(script)
        return d.addBoth(self._putBackAndPassthrough, slot)

    def close(self) -> None:
        """Disconnect every connection."""
        for slot in self.connections:
            slot.close()


__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_POOL_SIZE", "PostgreSQLStore", "redact"]
