#!/usr/bin/env python3
"""
What a chat message's id costs the store as its table grows: random (version 4) UUIDs,
which land anywhere in the index on C{messages.id}, against time-ordered (version 7) ones,
which land at its end, as C{medichat.model.new_time_id} makes them.

For each kind (no server process): a new SQLite file with medichat's own migrations (WAL,
foreign keys on, as the store has it), 200 conversations, C{--rows} messages already in
it (their ids of that kind, inserted a thousand a transaction), then C{--groups}
transactions of C{--group} messages each, as the store commits a group: C{BEGIN
IMMEDIATE}, the store's multi-row C{INSERT INTO messages ... RETURNING id, seq}, C{COMMIT}
(the messages only, not the rest of a message's transaction). Prints per message: the
CPU of the C{INSERT} and of the C{COMMIT} (C{time.thread_time}), and the WAL pages the
commits wrote (the C{-wal} file's growth, with checkpoints off while measuring). Repeats
C{--repeats} times, the kinds alternated, a new file each time.

With C{--database URL}, on PostgreSQL instead: a database made for each run and dropped
after it, medichat's PostgreSQL migrations, the same rows and groups through psycopg2 (one
connection, autocommit off); after the rows are in, a C{CHECKPOINT}, so that the measured
groups pay the full-page images that PostgreSQL writes for the first change of each page
after a checkpoint, as a server does between its checkpoints.  Prints per message the
backend's CPU (its C{/proc} figures: the server must run on this machine) for the
C{INSERT} and the C{COMMIT} together, and the WAL bytes (C{pg_current_wal_lsn}).

    python benchmarks/message_ids.py --rows 200000
    python benchmarks/message_ids.py --rows 200000 \\
        --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import process_cpu  # noqa: E402

from medichat.model import new_id, new_time_id  # noqa: E402
from medichat.store.scripts import _INSERT_MESSAGES, load_migrations  # noqa: E402
from medichat.store.sqlite import split_statements  # noqa: E402

CONVERSATIONS = 200
TEXT = "how are you feeling today?"


def database(path: str) -> sqlite3.Connection:
    """A new database with medichat's schema and its conversations."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("BEGIN IMMEDIATE")
    for migration in load_migrations("sqlite"):
        for statement in split_statements(migration.sql):
            connection.execute(statement)
    connection.executemany(
        "INSERT INTO conversations (id, created, customer_id, customer_name)"
        " VALUES (?, 0, ?, 'customer')",
        [(str(uuid.UUID(int=i)), f"customer-{i}") for i in range(CONVERSATIONS)],
    )
    connection.execute("COMMIT")
    return connection


class Messages:
    """Messages of one kind of id, one conversation after another, a millisecond apart."""

    def __init__(self, time_ordered: bool) -> None:
        self.time_ordered = time_ordered
        self.count = 0
        self.start = int(time.time() * 1000)

    def rows(self, n: int) -> list[object]:
        params: list[object] = []
        for _ in range(n):
            millis = self.start + self.count
            message_id = new_time_id(millis) if self.time_ordered else new_id()
            conversation = str(uuid.UUID(int=self.count % CONVERSATIONS))
            params += [message_id, conversation, millis * 1000, "user", "name", "customer",
                       TEXT]
            self.count += 1
        return params


def insert(connection: sqlite3.Connection, messages: Messages, n: int) -> float:
    """One group's C{INSERT}, as the store sends it; its CPU."""
    sql = _INSERT_MESSAGES + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n) + " RETURNING id, seq"
    params = messages.rows(n)
    started = time.thread_time()
    connection.execute(sql, params).fetchall()
    return time.thread_time() - started


def wal_size(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0


def measure(directory: str, time_ordered: bool, options: argparse.Namespace) -> dict[str, Any]:
    path = os.path.join(directory, f"ids-{int(time_ordered)}.sqlite3")
    connection = database(path)
    messages = Messages(time_ordered)
    for start in range(0, options.rows, 1000):
        connection.execute("BEGIN IMMEDIATE")
        insert(connection, messages, min(1000, options.rows - start))
        connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    before = wal_size(path)
    inserting = committing = 0.0
    for _ in range(options.groups):
        connection.execute("BEGIN IMMEDIATE")
        inserting += insert(connection, messages, options.group)
        started = time.thread_time()
        connection.execute("COMMIT")
        committing += time.thread_time() - started
    frames = (wal_size(path) - before) / (page_size + 24)
    connection.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    measured = options.groups * options.group
    return {
        "insert_us_per_message": round(inserting / measured * 1e6, 2),
        "commit_us_per_message": round(committing / measured * 1e6, 2),
        "wal_pages_per_message": round(frames / measured, 2),
    }


def measure_postgresql(url: str, time_ordered: bool, options: argparse.Namespace
                       ) -> dict[str, Any]:
    """L{measure} on a PostgreSQL database made for the run."""
    from conversations import Database

    db = Database(url)
    db.create()
    try:
        import psycopg2

        connection = psycopg2.connect(db.url)
        try:
            with connection.cursor() as cursor:
                for migration in load_migrations("postgresql"):
                    cursor.execute(migration.sql)
                cursor.executemany(
                    "INSERT INTO conversations (id, created, customer_id, customer_name)"
                    " VALUES (%s, 0, %s, 'customer')",
                    [(str(uuid.UUID(int=i)), f"customer-{i}") for i in range(CONVERSATIONS)],
                )
                connection.commit()
                messages = Messages(time_ordered)

                def group(n: int) -> None:
                    sql = (_INSERT_MESSAGES + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * n)
                           + " RETURNING id, seq")
                    cursor.execute(sql, messages.rows(n))
                    cursor.fetchall()
                    connection.commit()

                for start in range(0, options.rows, 1000):
                    group(min(1000, options.rows - start))
                cursor.execute("CHECKPOINT")
                cursor.execute("SELECT pg_backend_pid(), pg_current_wal_lsn()")
                backend, before = cursor.fetchone()
                connection.commit()
                cpu = process_cpu(backend)
                for _ in range(options.groups):
                    group(options.group)
                cpu = process_cpu(backend) - cpu
                cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (before,))
                wal = float(cursor.fetchone()[0])
                connection.commit()
        finally:
            connection.close()
    finally:
        db.drop()
    measured = options.groups * options.group
    return {
        "backend_us_per_message": round(cpu / measured * 1e6, 2),
        "wal_bytes_per_message": round(wal / measured),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000,
                        help="messages in the table before measuring (default %(default)s)")
    parser.add_argument("--groups", type=int, default=2000,
                        help="transactions measured (default %(default)s)")
    parser.add_argument("--group", type=int, default=8,
                        help="messages a transaction (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database", default=None,
                        help="postgresql://user@host:port[/db]: measure PostgreSQL (a "
                             "database made and dropped for each run); default: SQLite")
    options = parser.parse_args()
    if options.rows < 0 or options.groups < 1 or options.group < 1 or options.repeats < 1:
        parser.error("--rows must not be negative; --groups, --group and --repeats positive")
    runs: dict[str, list[dict[str, Any]]] = {"random_v4": [], "time_ordered_v7": []}
    with tempfile.TemporaryDirectory(prefix="medichat-ids-") as directory:
        for _ in range(options.repeats):
            for kind, time_ordered in (("random_v4", False), ("time_ordered_v7", True)):
                if options.database:
                    result = measure_postgresql(options.database, time_ordered, options)
                else:
                    result = measure(directory, time_ordered, options)
                print(f"{kind}: {result}", file=sys.stderr)
                runs[kind].append(result)
    report: dict[str, Any] = {
        "benchmark": "message_ids", "rows": options.rows, "groups": options.groups,
        "group": options.group, "runs": runs,
        "store": "postgresql" if options.database else f"sqlite {sqlite3.sqlite_version}",
    }
    for kind, results in runs.items():
        # Each figure as [least, median, most] over the repeats.
        report[kind] = {
            key: [min(r[key] for r in results), statistics.median(r[key] for r in results),
                  max(r[key] for r in results)]
            for key in results[0]
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
