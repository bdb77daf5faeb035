"""
One SQLite connection in one thread of its own, driven from the reactor.

The SQLite store has exactly one connection, used by one thread, one operation after
another: all that a pool is for is moot.  Twisted's C{adbapi} pool (through
C{twisted.python.threadpool}) hands each operation to that thread through its team's
coordinator, its context propagation and a cursor wrapper, which cost about as much per
operation as the hop itself (C{docs/benchmarks.md}, tenth session).  This thread takes
operations from a queue in the order they were given, runs each as one transaction on the
connection, and hands the outcome back with C{callFromThread}.

It counts what it does (L{DatabaseThread.operations}) and, when asked (C{timed}: the
server has metrics), the seconds beside it: how busy the thread is, and how long an
operation waits to start.  Under load the wait is more than the operations queued before
it: the thread, once woken, must take the GIL back from the reactor thread, which releases
it at each system call and takes it again before a waiting thread has woken up
(C{docs/benchmarks.md}, fourteenth session).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from queue import SimpleQueue
from time import perf_counter, thread_time
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

_STOP = object()
"""What L{DatabaseThread.close} queues: the thread closes the connection and ends."""


class DatabaseThread:
    """
    A thread holding one C{sqlite3} connection, running operations in order.

    @param reactor: provides C{IReactorThreads}: outcomes are delivered on its thread.
    @param connect: makes the connection (called in the new thread).
    @param name: the thread's name.
    @param timed: keep L{waited}, L{busy} and L{cpu} (two clock reads and two of the
        thread's CPU time per operation); they stay 0 otherwise.

    @ivar operations: operations run so far, committed or rolled back.
    @ivar waited: seconds those operations spent from L{run} to their start in the thread:
        behind the ones queued before them, then for the thread to wake and take the GIL.
    @ivar busy: seconds the thread spent running them, their commits and rollbacks
        included: over a span of time, how busy it was.
    @ivar cpu: CPU seconds the thread spent on them; C{busy - cpu} is what they waited
        for inside (the disk's C{fdatasync}, the GIL after each call into SQLite).

    Only the thread writes them; the reactor thread reads them (a scrape), each an
    up-to-date number, though not always of the same operation as the others.
    """

    def __init__(self, reactor: Any, connect: Callable[[], sqlite3.Connection],
                 name: str = "medichat-sqlite", *, timed: bool = False) -> None:
        self._reactor = reactor
        self._connect = connect
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._opened: Deferred[None] = Deferred()
        self._closed: Deferred[None] = Deferred()
        self._closing = False
        self.timed = timed
        self.operations = 0
        self.waited = 0.0
        self.busy = 0.0
        self.cpu = 0.0

    def start(self) -> Deferred[None]:
        """
        Start the thread and open the connection in it; fires once it is open, or fails
        with what opening it raised (the thread has ended then).
        """
        self._thread.start()
        return self._opened

    def run(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run C{interaction(cursor, *args)} in the thread as one transaction: commit when it
        returns, roll back when it raises.

        @return: fires on the reactor thread with what it returned, or fails with what it
            (or the commit) raised.
        """
        if self._closing:
            raise RuntimeError("the database thread is closed")
        done: Deferred[T] = Deferred()
        self._queue.put((interaction, args, done, perf_counter() if self.timed else None))
        return done

    def close(self) -> Deferred[None]:
        """
        Run what was queued before, then close the connection and end the thread.

        @return: fires once the thread has ended.
        """
        if not self._closing:
            self._closing = True
            self._queue.put(_STOP)
        return self._closed

    def _run(self) -> None:
        call = self._reactor.callFromThread
        try:
            connection = self._connect()
        except BaseException:
            call(self._opened.errback, Failure())
            call(self._ended)
            return
        call(self._opened.callback, None)
        get = self._queue.get
        try:
            while True:
                item = get()
                if item is _STOP:
                    break
                interaction, args, done, queued = item
                if queued is not None:
                    started = perf_counter()
                    cpu = thread_time()
                cursor = connection.cursor()
                try:
                    outcome = interaction(cursor, *args)
                    connection.commit()
                    deliver = done.callback
                except BaseException:
                    outcome = Failure()
                    deliver = done.errback
                    try:
                        connection.rollback()
                    except BaseException:
                        pass  # the operation's own error is what its caller hears
                finally:
                    cursor.close()
                # Counted before its caller hears of it: whoever reads the counts then
                # finds the operation in them.
                if queued is not None:
                    self.cpu += thread_time() - cpu
                    ended = perf_counter()
                    self.busy += ended - started
                    self.waited += started - queued
                self.operations += 1
                call(deliver, outcome)
        finally:
            connection.close()
            call(self._ended)

    def _ended(self) -> None:
        # The thread's last act was to ask for this call: the join returns at once.
        self._thread.join()
        self._closed.callback(None)
