"""
One SQLite connection in one thread of its own, driven from the reactor.

The SQLite store has exactly one connection, used by one thread, one operation after
another: all that a pool is for is moot.  Twisted's C{adbapi} pool (through
C{twisted.python.threadpool}) hands each operation to that thread through its team's
coordinator, its context propagation and a cursor wrapper, which cost about as much per
operation as the hop itself (C{docs/benchmarks.md}, tenth session).  This thread takes
operations from a queue in the order they were given, runs each as one transaction on the
connection, and hands the outcome back with C{callFromThread}.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from queue import SimpleQueue
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
    """

    def __init__(self, reactor: Any, connect: Callable[[], sqlite3.Connection],
                 name: str = "medichat-sqlite") -> None:
        self._reactor = reactor
        self._connect = connect
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._opened: Deferred[None] = Deferred()
        self._closed: Deferred[None] = Deferred()
        self._closing = False

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
        self._queue.put((interaction, args, done))
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
                interaction, args, done = item
                cursor = connection.cursor()
                try:
                    result = interaction(cursor, *args)
                    connection.commit()
                except BaseException:
                    failure = Failure()
                    try:
                        connection.rollback()
                    except BaseException:
                        pass  # the operation's own error is what its caller hears
                    call(done.errback, failure)
                else:
                    call(done.callback, result)
                finally:
                    cursor.close()
        finally:
            connection.close()
            call(self._ended)

    def _ended(self) -> None:
        # The thread's last act was to ask for this call: the join returns at once.
        self._thread.join()
        self._closed.callback(None)
