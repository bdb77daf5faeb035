"""
Test support: the real store, without threads or waiting.

L{MemoryStore} runs the SQLite store's own transaction scripts
(L{medichat.store.scripts}), with its own migrations, synchronously on an in-memory
SQLite database, and returns L{Deferred}s that have already fired (a test may hold them
back to keep operations in flight: L{MemoryStore.hold}).  A test can therefore
use C{successResultOf} on anything that reaches the store, drive time with a
L{twisted.internet.task.Clock}, and never run the reactor.  It is the real SQL, not a
fake: the store scenario of C{tests/store/test_store.py} runs against it as it runs
against the SQLite and the PostgreSQL stores.

This module is test support, so unlike the rest of medichat outside C{app} it imports a
store implementation (L{medichat.store.sqlite}); production code never imports it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from medichat.errors import StoreError
from medichat.interfaces import IStore
from medichat.store.presence_scripts import PresenceOperations
from medichat.store.scripts import SQLITE, Migration, Script, SQLStore
from medichat.store.sqlite import MINIMUM_SQLITE_VERSION, run_script, translate_failure
from medichat.store.webhook_scripts import WebhookOperations

T = TypeVar("T")

MEMORY = ":memory:"
"""The name under which L{MemoryStore} reports its database in errors."""


def memory_database() -> sqlite3.Connection:
    """
    A new, empty in-memory SQLite database, set up as L{medichat.store.SQLiteStore} sets
    up its connection: no implicit transactions (each script begins its own), foreign
    keys enforced.  Write-ahead logging and busy timeouts mean nothing in memory.

    It lives until it is closed: hand it to several L{MemoryStore}s in turn to see what a
    restarted store finds.
    """
    connection = sqlite3.connect(MEMORY, isolation_level=None)
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


@implementer(IStore)
class MemoryStore(PresenceOperations, WebhookOperations, SQLStore):
    """
    L{IStore} on an in-memory SQLite database, each operation run to completion before
    the call returns (unless held).

    It is an SQLite store in all but threads and the file: the same dialect, migrations,
    scripts, transactions (C{BEGIN IMMEDIATE} for writes) and error translation.
    Operations run one at a time, each at once unless the store is told to L{hold} them:
    then they wait, as they would for a real database, until L{flush} or L{release}.
    """

    kind = "sqlite"
    _dialect = SQLITE

    def __init__(
        self,
        clock: IReactorTime,
        *,
        database: sqlite3.Connection | None = None,
        migrations: Sequence[Migration] | None = None,
    ) -> None:
        """
        @param clock: gives the time recorded for applied migrations.
        @param database: the database to use, from L{memory_database}; it stays open
            when the store stops, for the caller to close.  By default the store makes a
            new one at C{start} and closes it at C{stop}, which loses its data.
        @param migrations: the migrations to apply at start; all of SQLite's unless given.
        """
        super().__init__(clock, migrations)
        self._given = database
        self._connection: sqlite3.Connection | None = None
        self._held: list[tuple[Script[Any], bool, Deferred[Any]]] | None = None

    def preflight(self) -> None:
        """See L{IStore.preflight}: a database in memory can always be opened."""

    def start(self) -> Deferred[None]:
        """See L{IStore.start}: fires before it returns."""
        if self._connection is not None:
            return fail(StoreError("the memory store was started already"))
        if sqlite3.sqlite_version_info < MINIMUM_SQLITE_VERSION:
            return fail(StoreError(f"SQLite {sqlite3.sqlite_version} is too old for medichat"))
        self._connection = self._given if self._given is not None else memory_database()
        starting = Deferred.fromCoroutine(self._start_running())
        return starting.addCallbacks(lambda _: None, self._not_started)

    def _not_started(self, failure: Failure) -> Failure:
        self._disconnect()
        return failure

    def stop(self) -> Deferred[None]:
        """See L{IStore.stop}: fires before it returns, unless operations are held."""
        if self._connection is None:
            return succeed(None)
        stopping = Deferred.fromCoroutine(self._stop_running())
        return stopping.addBoth(self._stopped)

    def _stopped(self, result: object) -> object:
        self._disconnect()
        return result

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection is not self._given:
            connection.close()

    def hold(self) -> None:
        """
        Queue the operations made from now on instead of running them, until L{release}:
        a test can then start several and see what their callers do while all are
        pending.
        """
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        """
        Run the operations held so far, in the order they were made, each to completion
        before the next; the operations they lead to are held in turn.
        """
        held, self._held = self._held or [], [] if self._held is not None else None
        for script, write, waiting in held:
            self._run_script(script, write).chainDeferred(waiting)

    def release(self) -> None:
        """
        Run the held operations in the order they were made, each to completion before
        the next; operations made meanwhile (by their callbacks) run at once.
        """
        held, self._held = self._held or [], None
        for script, write, waiting in held:
            self._run_script(script, write).chainDeferred(waiting)

    def _execute(self, script: Script[T], write: bool) -> Deferred[T]:
        if self._held is not None:
            waiting: Deferred[T] = Deferred()
            self._held.append((script, write, waiting))
            return waiting
        return self._run_script(script, write)

    def _run_script(self, script: Script[T], write: bool) -> Deferred[T]:
        connection = self._connection
        if connection is None:
            script.close()
            return fail(StoreError("the memory store is not connected"))
        cursor = connection.cursor()
        try:
            value = run_script(cursor, script, write)
            connection.commit()
        except Exception:
            failure = Failure()
            connection.rollback()
            return fail(failure).addErrback(translate_failure, MEMORY)
        finally:
            cursor.close()
        return succeed(value)


__all__ = ["MEMORY", "MemoryStore", "memory_database"]
