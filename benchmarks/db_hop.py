#!/usr/bin/env python3
"""
What one trip to the SQLite store's database thread and back costs, by how it is made.

Runs C{SELECT 1} as one operation, one after another from the reactor (each awaited
before the next), through three ways of reaching a one-connection thread: Twisted's
C{adbapi} pool (C{cp_min=cp_max=1}), C{deferToThreadPool} on a one-thread Twisted
C{ThreadPool}, and medichat's L{DatabaseThread}.  Prints, per round, this process's CPU
(every thread) and the wall time per operation, in µs, then the spread over the rounds.
Alternating the three in each round keeps a noisy machine's drift out of the comparison.

    python benchmarks/db_hop.py --operations 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medichat.store._dbthread import DatabaseThread  # noqa: E402

reactor: Any = _reactor
WARM_UP = 200


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def timed(operations: int, one: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """CPU and wall µs per operation of C{operations} calls of C{one}, after a warm-up."""
    for _ in range(WARM_UP):
        await one()
    cpu0, wall0 = cpu(), time.perf_counter()
    for _ in range(operations):
        await one()
    return ((cpu() - cpu0) / operations * 1e6, (time.perf_counter() - wall0) / operations * 1e6)


def select_one(cursor: Any) -> list[Any]:
    cursor.execute("SELECT 1")
    return list(cursor.fetchall())


async def through_adbapi(path: str, operations: int) -> tuple[float, float]:
    pool = adbapi.ConnectionPool("sqlite3", path, check_same_thread=False,
                                 isolation_level=None, cp_min=1, cp_max=1, cp_reactor=reactor)
    pool.start()
    try:
        return await timed(operations, lambda: pool.runInteraction(select_one))
    finally:
        pool.close()


async def through_threadpool(path: str, operations: int) -> tuple[float, float]:
    pool = ThreadPool(1, 1)
    pool.start()
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    cursor = connection.cursor()
    try:
        return await timed(
            operations, lambda: deferToThreadPool(reactor, pool, select_one, cursor)
        )
    finally:
        pool.stop()
        connection.close()


async def through_database_thread(path: str, operations: int) -> tuple[float, float]:
    thread = DatabaseThread(
        reactor,
        lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None),
    )
    await thread.start()
    try:
        return await timed(operations, lambda: thread.run(select_one))
    finally:
        await thread.close()


WAYS = {
    "adbapi": through_adbapi,
    "threadpool": through_threadpool,
    "database_thread": through_database_thread,
}


async def main(options: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="medichat-hop-")
    path = os.path.join(directory, "hop.sqlite3")
    figures: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    try:
        for number in range(options.rounds):
            line = []
            for way, run in WAYS.items():
                cpu_us, wall_us = await run(path, options.operations)
                figures[way].append((cpu_us, wall_us))
                line.append(f"{way} {cpu_us:.1f} / {wall_us:.1f}")
            print(f"round {number + 1} (CPU / wall µs per operation): " + "; ".join(line))
        for way, values in figures.items():
            cpus = [c for c, _ in values]
            walls = [w for _, w in values]
            print(f"{way}: CPU {min(cpus):.1f}-{max(cpus):.1f} (median "
                  f"{statistics.median(cpus):.1f}), wall {min(walls):.1f}-{max(walls):.1f} "
                  f"µs per operation")
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=5000, help="per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    outcome: dict[str, Any] = {}

    def finished(result: object) -> None:
        outcome["result"] = result
        reactor.stop()

    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(main(options)).addBoth(finished)
    )
    reactor.run()
    result = outcome.get("result")
    if hasattr(result, "printTraceback"):
        result.printTraceback()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
