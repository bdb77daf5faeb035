"""
Tests for L{medichat.store._dbthread.DatabaseThread}: the SQLite store's one connection in
one thread, on the real reactor with a real file.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from medichat.store._dbthread import DatabaseThread


class DatabaseThreadTests(TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()

    def connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER NOT NULL UNIQUE)")
        return connection

    async def started(self, timed: bool = False) -> DatabaseThread:
        database = DatabaseThread(reactor, self.connect, timed=timed)
        await database.start()
        self.addCleanup(database.close)
        return database

    def rows(self) -> list[int]:
        """What another connection reads from the file: committed rows only."""
        connection = sqlite3.connect(self.path)
        try:
            return [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")]
        finally:
            connection.close()

    async def test_commits_and_returns(self) -> None:
        """An interaction that returns is committed, and its value is the result."""
        database = await self.started()

        def insert(cursor: sqlite3.Cursor, n: int) -> int:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("INSERT INTO t (n) VALUES (?)", (n,))
            return n * 10

        self.assertEqual(await database.run(insert, 4), 40)
        self.assertEqual(self.rows(), [4])

    async def test_rolls_back_and_fails(self) -> None:
        """An interaction that raises is rolled back and fails; the next one still runs."""
        database = await self.started()

        def insert_twice(cursor: sqlite3.Cursor) -> None:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("INSERT INTO t (n) VALUES (1)")
            cursor.execute("INSERT INTO t (n) VALUES (1)")

        def insert(cursor: sqlite3.Cursor) -> None:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("INSERT INTO t (n) VALUES (2)")

        with self.assertRaises(sqlite3.IntegrityError):
            await database.run(insert_twice)
        await database.run(insert)
        self.assertEqual(self.rows(), [2])

    async def test_order_and_thread(self) -> None:
        """Interactions run in order in one thread of their own; outcomes come back on ours."""
        database = await self.started()
        ran: list[tuple[int, int]] = []

        def note(cursor: sqlite3.Cursor, n: int) -> int:
            ran.append((n, threading.get_ident()))
            return n

        heard: list[tuple[int, int]] = []
        waiting = [
            database.run(note, n).addCallback(
                lambda n: heard.append((n, threading.get_ident()))
            )
            for n in range(20)
        ]
        for done in waiting:
            await done
        self.assertEqual([n for n, _ in ran], list(range(20)))
        threads = {ident for _, ident in ran}
        self.assertEqual(len(threads), 1)
        self.assertNotIn(threading.get_ident(), threads)
        self.assertEqual(heard, [(n, threading.get_ident()) for n in range(20)])

    async def test_counts(self) -> None:
        """
        Each operation, committed or rolled back, is counted with the seconds it waited,
        ran and used the CPU, before its caller hears of it.
        """
        database = await self.started(timed=True)
        self.assertEqual(
            (database.operations, database.waited, database.busy, database.cpu), (0, 0, 0, 0)
        )

        def insert(cursor: sqlite3.Cursor, n: int) -> int:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("INSERT INTO t (n) VALUES (?)", (n,))
            return database.operations

        def counted(_: object) -> int:
            return database.operations

        self.assertEqual(await database.run(insert, 1), 0)
        self.assertEqual(await database.run(insert, 2).addCallback(counted), 2)
        failed = database.run(insert, 1).addCallbacks(counted, lambda _: database.operations)
        self.assertEqual(await failed, 3)
        self.assertGreater(database.busy, 0)
        self.assertGreater(database.cpu, 0)
        self.assertGreaterEqual(database.waited, 0)

    async def test_untimed(self) -> None:
        """Not timed (the default), operations are counted and the seconds stay 0."""
        database = await self.started()

        def nothing(cursor: sqlite3.Cursor) -> None:
            cursor.execute("SELECT 1")

        await database.run(nothing)
        await database.run(nothing)
        self.assertEqual(
            (database.operations, database.waited, database.busy, database.cpu), (2, 0, 0, 0)
        )

    async def test_close_runs_what_was_queued(self) -> None:
        """close() lets what was queued before it run, then ends the thread."""
        database = DatabaseThread(reactor, self.connect)
        await database.start()

        def insert(cursor: sqlite3.Cursor, n: int) -> None:
            cursor.execute("INSERT INTO t (n) VALUES (?)", (n,))

        waiting = [database.run(insert, n) for n in range(5)]
        closed = database.close()
        for done in waiting:
            await done
        await closed
        self.assertEqual(self.rows(), [0, 1, 2, 3, 4])
        self.assertFalse(database._thread.is_alive())
        self.assertRaises(RuntimeError, database.run, insert, 9)
        # Closing again is harmless and fires at once.
        await database.close()

    async def test_start_fails(self) -> None:
        """A connection that cannot be opened fails start(), and the thread ends."""

        def refuse() -> Any:
            raise sqlite3.OperationalError("unable to open database file")

        database = DatabaseThread(reactor, refuse)
        with self.assertRaises(sqlite3.OperationalError):
            await database.start()
        await database.close()
        self.assertFalse(database._thread.is_alive())
