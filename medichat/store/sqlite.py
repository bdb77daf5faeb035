"""
The embedded store: one SQLite file, through C{sqlite3} in a thread of its own.

One connection in one thread (L{medichat.store._dbthread}), so there is one writer and
every operation runs in order, off the reactor thread.  The connection is in WAL mode
(readers never wait for the writer), with foreign keys enforced and a busy timeout for
other processes (C{medichat-admin}) that write the same file.  Python's C{sqlite3} opens no
transactions of its own here (C{isolation_level=None}); each operation begins one
explicitly, C{BEGIN IMMEDIATE} when it writes, so that it holds the write lock from its
first statement and cannot deadlock on upgrading a read lock.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from medichat.errors import DuplicateError, MissingDatabase, StoreError, StoreUnavailable
from medichat.interfaces import IStore
from medichat.store._dbthread import DatabaseThread
from medichat.store.presence_scripts import PresenceOperations
from medichat.store.scripts import SQLITE, Migration, Result, Script, SQLStore
from medichat.store.webhook_scripts import WebhookOperations

T = TypeVar("T")

_log = Logger()

SQLITE_FILE_NAME = "medichat.sqlite3"
"""The database file that L{medichat.store.open_store} uses in the data directory."""

MINIMUM_SQLITE_VERSION = (3, 35, 0)
"""The oldest SQLite with everything used here (upserts with C{WHERE}, C{RETURNING})."""

_UNIQUE_VIOLATIONS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})

_OUTAGES = (
    "SQLITE_FULL",
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_NOLFS",
    "SQLITE_PROTOCOL",
)
"""Error names (and the prefixes of their extended codes) of a file that cannot be used
now, rather than of a wrong statement."""


@implementer(IStore)
class SQLiteStore(PresenceOperations, WebhookOperations, SQLStore):
    """
    L{IStore} in one SQLite file.

    @ivar path: the database file.
    """

    kind = "sqlite"
    _dialect = SQLITE

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        busy_timeout: float = 10.0,
        migrations: Sequence[Migration] | None = None,
        create: bool = True,
    ) -> None:
        """
        @param path: the database file; it and its directory are created if missing.
        @param reactor: provides C{IReactorTime}, C{IReactorCore} and C{IReactorThreads}.
        @param busy_timeout: how long, in seconds, to wait for another process's write
            lock before failing.
        @param migrations: the migrations to apply at start; all that ship with medichat
            unless given (tests pass fewer, to make an older database).
        @param create: make the database if there is none; if C{False}, C{start} fails
            with L{MissingDatabase} instead.
        """
        super().__init__(reactor, migrations, create=create)
        self.path = path
        self._busy_timeout = busy_timeout
        self._pool: DatabaseThread | None = None
        # Whether the database thread keeps its times (the server's metrics want them).
        self.time_thread = False

    @property
    def database_thread(self) -> DatabaseThread | None:
        """
        The thread that runs the store's transactions, with its counts (for the metrics);
        L{None} before L{start} and after L{stop}.
        """
        return self._pool

    def start(self) -> Deferred[None]:
        """See L{IStore.start}."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._pool is not None:
            raise StoreError("the SQLite store was started already")
        if sqlite3.sqlite_version_info < MINIMUM_SQLITE_VERSION:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old; medichat needs "
                + ".".join(map(str, MINIMUM_SQLITE_VERSION))
                + " or newer"
            )
        if not self._create and not os.path.exists(self.path):
            raise MissingDatabase(f"{self.path} holds no medichat database")
        _create_private(self.path)
        pool = self._pool = DatabaseThread(self._reactor, self._connect,
                                           timed=self.time_thread)
        try:
            await pool.start().addErrback(translate_failure, self.path)
            outcome = await self._start_running()
        except BaseException:
            self._pool = None
            await pool.close()
            raise
        _log.info(
            "SQLite store {path} at schema version {version}",
            path=self.path,
            version=outcome.after,
        )

    def _where(self) -> str:
        return self.path

    def preflight(self) -> None:
        """
        See L{IStore.preflight}: make the directory and file (if allowed) and read the
        file's header.
        """
        if not self._create and not os.path.exists(self.path):
            raise MissingDatabase(f"{self.path} holds no medichat database")
        _create_private(self.path)
        try:
            connection = sqlite3.connect(self.path)
            try:
                connection.execute("PRAGMA schema_version").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the SQLite store {self.path}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        """
        Open and set up the connection (in the database thread, before its first use).
        """
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._configure(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _configure(self, connection: sqlite3.Connection) -> None:
        """
        Set up a new connection.
        """
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            _log.warn(
                "SQLite store {path}: journal mode is {mode}, not WAL", path=self.path, mode=mode
            )
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA temp_store = MEMORY")
        # PRAGMA takes no parameters; this is an int we computed.
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def stop(self) -> Deferred[None]:
        """See L{IStore.stop}: waits for operations in flight, then closes the file."""
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
        try:
            # SQLite's advice for long-lived connections: let it refresh its statistics
            # before closing.  Not worth failing a shutdown over.
            await pool.run(_execute_only, "PRAGMA optimize")
        except sqlite3.Error as e:
            _log.warn("SQLite store {path}: PRAGMA optimize failed: {e}", path=self.path, e=e)
        await pool.close()

    def _execute(self, script: Script[T], write: bool) -> Deferred[T]:
        assert self._pool is not None
        d: Deferred[T] = self._pool.run(run_script, script, write)
        return d.addErrback(translate_failure, self.path)


def _execute_only(cursor: sqlite3.Cursor, sql: str) -> None:
    """Run one statement that needs no transaction of its own (a C{PRAGMA})."""
    cursor.execute(sql)


def _create_private(path: str) -> None:
    """
    Make the database file's directory (mode 0700) and the file itself (mode 0600) if
    missing, whatever the umask: they hold every chat and every password hash.  SQLite
    gives the C{-wal} and C{-shm} files it makes the database file's mode.

    @raise StoreError: if either cannot be made.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the data directory {directory}: {e}") from e
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StoreError(f"cannot create the database file {path}: {e}") from e
    os.close(fd)


def translate_failure(failure: Failure, path: str) -> Failure:
    """
    Turn a failed SQLite operation into the errors L{IStore} promises: L{DuplicateError}
    for a unique violation, L{StoreUnavailable} for an outage (disk full, read-only, I/O
    error, busy), L{StoreError} for any other database error.

    @param path: the database, named in the message.
    @return: C{failure} itself if it is not a database error.
    """
    error = failure.value
    if isinstance(error, sqlite3.IntegrityError) and (
        getattr(error, "sqlite_errorname", "") in _UNIQUE_VIOLATIONS
    ):
        raise DuplicateError(f"already taken: {error}") from error
    if isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorname", "").startswith(
        _OUTAGES
    ):
        raise StoreUnavailable(f"SQLite store {path}: {error}") from error
    if isinstance(error, sqlite3.Error):
        raise StoreError(f"SQLite store {path}: {error}") from error
    return failure


def run_script(cursor: Any, script: Script[T], write: bool) -> T:
    """
    Run a transaction script on a cursor of a connection in autocommit mode
    (C{isolation_level=None}): begin the transaction, run each statement, return the
    script's value.  The caller commits when this returns and rolls back when it raises:
    L{DatabaseThread} does, in the database thread; L{medichat.testing.MemoryStore} does,
    inline.
    """
    cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        statement = next(script)
        while True:
            if statement.several:
                for sql in split_statements(statement.sql):
                    cursor.execute(sql)
                result = Result([], -1)
            else:
                cursor.execute(statement.sql, statement.params)
                rows = cursor.fetchall() if cursor.description is not None else []
                result = Result(rows, cursor.rowcount, cursor.lastrowid)
            statement = script.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


def split_statements(sql: str) -> list[str]:
    """
    Split an SQL script into its statements, as SQLite's own shell does: a statement ends
    at the line where it is complete.  (C{executescript} would commit first, and
    migrations run inside a transaction.)

    @raise ValueError: if the script ends inside a statement.
    """
    statements = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [line for line in pending.splitlines() if line.strip()]
    if any(not line.lstrip().startswith("--") for line in leftover):
        raise ValueError(f"SQL script ends inside a statement: {pending.strip()[:80]!r}")
    return statements
