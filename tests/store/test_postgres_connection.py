"""
Tests for L{medichat.store.postgres._Connection} on a L{MemoryReactor}, with a stand-in
for the psycopg2 connection: that a connection the server ended while idle is never used
again (its next statement would be sent into a socket nobody reads, and the message's
transaction would wait for ever).
"""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from medichat.store.postgres import _Connection


class _Driver:
    """A psycopg2 connection as far as L{_Connection} uses it."""

    def __init__(self, states: list[Any]) -> None:
        self.states = states
        self.closed = 0
        self.notifies: list[Any] = []

    def poll(self) -> int:
        state = self.states.pop(0)
        if isinstance(state, Exception):
            raise state
        return int(state)

    def fileno(self) -> int:
        return 7

    def close(self) -> None:
        self.closed = 1


class ConnectionTests(SynchronousTestCase):
    def connection(self, states: list[Any]) -> tuple[_Connection, MemoryReactor]:
        reactor = MemoryReactor()
        connection = _Connection(reactor)
        connection._connection = _Driver(states)
        return connection, reactor

    def test_lost_while_idle_is_closed(self) -> None:
        """
        A read error while idle (the server ended the connection, psycopg2 may not have
        marked it closed yet) closes it, so that its next use opens a new one rather than
        sending a statement nobody will answer.
        """
        error = psycopg2.OperationalError("terminating connection due to administrator command")
        connection, reactor = self.connection([error])
        reactor.addReader(connection)
        connection.doRead()
        self.assertFalse(connection.is_open)
        self.assertNotIn(connection, reactor.getReaders())
        self.flushLoggedErrors()
