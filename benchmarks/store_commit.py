#!/usr/bin/env python3
"""
Chat messages committed through the domain service and the store, without HTTP: how many
per second, and how much CPU each costs, at a given number of concurrent posters.

Each poster posts, one message after another, to its own share of 200 conversations, in
each of which the customer and an employee are subscribed (so every message also marks it
received for the other participant, as in the server).  The service, the store, the event
feed and presence are the server's own: L{InProcessPresence} on SQLite, as the SQLite
server keeps it, and L{ClusterPresence} in the database on PostgreSQL, as the PostgreSQL
server keeps it.  Per run: messages/s, this process's CPU per message (reactor thread and,
for SQLite, adbapi's database thread), PostgreSQL's backends' CPU per message, and store
transactions per message.  PostgreSQL's reference is pgbench's one-client, single-row
INSERT rate, measured between runs on a database made for it (and dropped after).

    python benchmarks/store_commit.py --repeats 3
    python benchmarks/store_commit.py --stores postgresql --concurrency 1,64 --messages 4000

Prints a table per store (median and spread over the repeats) on stderr and one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg2
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from medichat.domain.cluster_presence import ClusterPresence  # noqa: E402
from medichat.domain.conversations import ConversationService  # noqa: E402
from medichat.domain.presence import InProcessPresence  # noqa: E402
from medichat.model import User, micros  # noqa: E402
from medichat.pubsub.feed import EventFeed  # noqa: E402
from medichat.pubsub.hub import InProcessHub  # noqa: E402
from medichat.store import PostgreSQLStore, SQLiteStore  # noqa: E402

reactor: Any = _reactor
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    """Progress and tables go to stderr; stdout carries only the final JSON."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def own_cpu() -> float:
    """This process's CPU seconds, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pids_cpu(pids: list[int]) -> float:
    """The CPU seconds of other processes (PostgreSQL backends), from /proc."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


# ------------------------------------------------------------------------------ PostgreSQL


def with_database(server: str, name: str) -> str:
    return urlsplit(server)._replace(path="/" + name).geturl()


def admin(server: str, sql: str) -> None:
    connection = psycopg2.connect(server)
    try:
        connection.autocommit = True
        connection.cursor().execute(sql)
    finally:
        connection.close()


def create_database(server: str, prefix: str) -> tuple[str, str]:
    name = prefix + secrets.token_hex(6)
    admin(server, f'CREATE DATABASE "{name}"')
    return name, with_database(server, name)


def drop_database(server: str, name: str) -> None:
    admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_pids(server: str, name: str) -> list[int]:
    connection = psycopg2.connect(server)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        return [int(row[0]) for row in cursor.fetchall()]
    finally:
        connection.close()


def pgbench_tps(server: str, seconds: int) -> float:
    """
    pgbench's rate of one-row INSERT transactions with one client, on a new database.
    """
    name, url = create_database(server, "medichat_pgbench_")
    try:
        admin(url, "CREATE TABLE bench_insert (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            script.write("INSERT INTO bench_insert (body) VALUES ('Hello, how are you?');\n")
        try:
            output = subprocess.run(
                ["pgbench", "-n", "-c", "1", "-T", str(seconds), "-f", script.name, url],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            os.unlink(script.name)
        match = re.search(r"tps = ([0-9.]+)", output)
        if match is None:
            raise RuntimeError(f"no tps in pgbench's output: {output!r}")
        return float(match.group(1))
    finally:
        drop_database(server, name)


# ------------------------------------------------------------------------------ one run


class Counting:
    """Counts the transactions a store runs (wraps its C{_execute})."""

    def __init__(self, store: Any) -> None:
        self.transactions = 0
        execute = store._execute

        def counted(script: Any, write: bool) -> Any:
            self.transactions += 1
            return execute(script, write)

        store._execute = counted


class StatementTimes:
    """
    The database thread's CPU per SQLite statement, by statement text (C{--statements}):
    wraps the cursor that L{medichat.store.sqlite.run_script} is given, so each
    C{execute} and the C{fetchall} after it are timed with C{time.thread_time}.  The
    C{BEGIN} counts as a statement; the C{COMMIT} (which C{fsync}s) is not included.
    """

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        import medichat.store.sqlite as sqlite_store

        self._module = sqlite_store
        self._run_script = sqlite_store.run_script
        times = self.times

        class TimedCursor:
            def __init__(self, cursor: Any) -> None:
                self._cursor = cursor
                self._last: list[float] = []

            def execute(self, sql: str, params: Any = ()) -> Any:
                started = time.thread_time()
                result = self._cursor.execute(sql, params)
                key = " ".join(sql.split())[:100]
                self._last = times.setdefault(key, [0, 0.0])
                self._last[0] += 1
                self._last[1] += time.thread_time() - started
                return result

            def fetchall(self) -> Any:
                started = time.thread_time()
                rows = self._cursor.fetchall()
                if self._last:
                    self._last[1] += time.thread_time() - started
                return rows

            def __getattr__(self, name: str) -> Any:
                return getattr(self._cursor, name)

        run_script = self._run_script

        def timed(cursor: Any, script: Any, write: bool) -> Any:
            return run_script(TimedCursor(cursor), script, write)

        sqlite_store.run_script = timed

    def restore(self) -> None:
        self._module.run_script = self._run_script

    def table(self, top: int, messages: int) -> str:
        rows = sorted(self.times.items(), key=lambda item: -item[1][1])[:top]
        lines = ["| calls per message | µs per call | µs per message | statement |",
                 "| --- | --- | --- | --- |"]
        for sql, (calls, seconds) in rows:
            lines.append(f"| {calls / messages:.2f} | {seconds / calls * 1e6:.1f} | "
                         f"{seconds / messages * 1e6:.1f} | `{sql}` |")
        return "\n".join(lines)


async def one_run(kind: str, server: str, concurrency: int, messages: int,
                  conversations: int, statements: int = 0) -> dict[str, Any]:
    """
    Start a fresh store, post C{messages} with C{concurrency} posters, stop it.
    """
    directory = None
    name = None
    if kind == "sqlite":
        directory = tempfile.mkdtemp(prefix="medichat-bench-")
        store: Any = SQLiteStore(os.path.join(directory, "medichat.sqlite3"), reactor)
    else:
        name, url = create_database(server, "medichat_bench_")
        store = PostgreSQLStore(url, reactor)
    try:
        await store.start()
        hub = InProcessHub()
        presence: Any
        if kind == "sqlite":
            presence = InProcessPresence(hub)
        else:
            await store.register_node("bench-node", micros(reactor.seconds()))
            presence = ClusterPresence(store, hub, "bench-node")
        try:
            # As the server does: what this process commits is published as it commits.
            feed = EventFeed(store, hub, reactor, poll_interval=None, hand_off=True)
        except TypeError:  # a medichat from before the hand-off
            feed = EventFeed(store, hub, reactor, poll_interval=None)
        await feed.start()
        try:
            # Presence in the store: the message's transaction reads it (as the
            # PostgreSQL server does since it can).
            service = ConversationService(
                store, hub, reactor, presence, feed, presence_in_store=kind != "sqlite"
            )
        except TypeError:  # a medichat from before the one-transaction message
            service = ConversationService(store, hub, reactor, presence, feed)
        nurse = User("nurse-1", "Nora", "employee")
        await presence.session_opened("s-nurse", nurse.user_id, True)
        customers = []
        ids = []
        for i in range(conversations):
            customer = User(f"customer-{i}", f"Customer {i}", "customer")
            conversation = await service.create(customer)
            await presence.session_opened(f"s-{i}", customer.user_id, False)
            await presence.joined(f"s-{i}", conversation.id)
            await presence.joined("s-nurse", conversation.id)
            customers.append(customer)
            ids.append(conversation.id)
        # Warm up every conversation once (first-use costs are not the steady state).
        await gatherResults([
            service.post_message(customers[i], ids[i], "warm-up") for i in range(conversations)
        ])
        counting = Counting(store)
        timing = StatementTimes() if statements and kind == "sqlite" else None
        pids = backend_pids(server, name) if name is not None else []
        per_poster = messages // concurrency

        async def poster(p: int) -> None:
            for n in range(per_poster):
                i = (p + n * concurrency) % conversations
                await service.post_message(customers[i], ids[i], f"message {n} of poster {p}")

        cpu0, pg0, wall0 = own_cpu(), pids_cpu(pids), time.perf_counter()
        await gatherResults([ensureDeferred(poster(p)) for p in range(concurrency)])
        wall = time.perf_counter() - wall0
        cpu, pg = own_cpu() - cpu0, pids_cpu(pids) - pg0
        total = per_poster * concurrency
        if timing is not None:
            timing.restore()
            log(f"sqlite x{concurrency}, the database thread's CPU by statement "
                f"(the {statements} costliest):\n" + timing.table(statements, total))
        feed.stop()
        return {
            "store": kind,
            "concurrency": concurrency,
            "messages": total,
            "per_second": total / wall,
            "cpu_us_per_message": cpu / total * 1e6,
            "pg_cpu_us_per_message": pg / total * 1e6 if pids else None,
            "transactions_per_message": counting.transactions / total,
        }
    finally:
        await store.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        if name is not None:
            drop_database(server, name)


# ------------------------------------------------------------------------------ the report


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{median:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def spread2(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(results: list[dict[str, Any]], references: list[float]) -> str:
    lines = [
        "| store | posters | messages/s | CPU µs/message (this process) "
        "| PG backends µs/message | transactions/message |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["store"], r["concurrency"]) for r in results})
    for kind, concurrency in keys:
        runs = [r for r in results if (r["store"], r["concurrency"]) == (kind, concurrency)]
        pg = [r["pg_cpu_us_per_message"] for r in runs if r["pg_cpu_us_per_message"] is not None]
        lines.append(
            f"| {kind} | {concurrency} | {spread([r['per_second'] for r in runs])} "
            f"| {spread([r['cpu_us_per_message'] for r in runs])} | {spread(pg)} "
            f"| {spread2([r['transactions_per_message'] for r in runs])} |"
        )
    if references:
        lines.append("")
        lines.append(f"pgbench, 1 client, one-row INSERT: {spread(references)} transactions/s")
    return "\n".join(lines)


async def main(options: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    references: list[float] = []
    stores = options.stores.split(",")
    for repeat in range(options.repeats):
        if "postgresql" in stores and options.pgbench_seconds > 0:
            tps = pgbench_tps(options.server, options.pgbench_seconds)
            references.append(tps)
            log(f"repeat {repeat + 1}: pgbench {tps:,.0f} tps")
        for kind in stores:
            for concurrency in [int(c) for c in options.concurrency.split(",")]:
                result = await one_run(kind, options.server, concurrency,
                                       options.messages, options.conversations,
                                       options.statements)
                results.append(result)
                log(
                    f"repeat {repeat + 1}: {kind} x{concurrency}: "
                    f"{result['per_second']:,.0f} msg/s, "
                    f"{result['cpu_us_per_message']:,.0f} µs CPU/msg, "
                    f"{result['transactions_per_message']:.2f} transactions/msg"
                )
    print(table(results, references), file=sys.stderr)
    return {"results": results, "pgbench_tps": references}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help="a PostgreSQL URL whose user may create databases")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--messages", type=int, default=3000, help="per run")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pgbench-seconds", type=int, default=5)
    parser.add_argument("--statements", type=int, default=0, metavar="N",
                        help="SQLite: print the N statements that cost the database thread "
                             "the most CPU, per run (timing them adds a little to each)")
    return parser.parse_args()


def run() -> int:
    options = arguments()
    outcome: dict[str, Any] = {}

    def done(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()

    def failed(failure: Any) -> None:
        outcome["failure"] = failure
        reactor.stop()

    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(main(options)).addCallbacks(done, failed)
    )
    reactor.run()
    if "failure" in outcome:
        outcome["failure"].printTraceback()
        return 1
    print(json.dumps(outcome["result"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run())
