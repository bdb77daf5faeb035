"""
Tests for L{medichat.store.postgres._Connection} on a L{MemoryReactor}, with a stand-in
for the psycopg2 connection: that a connection the server ended while idle is never used
again (its next statement would be sent into a socket nobody reads, and the message's
transaction would wait for ever); and on the real reactor and PostgreSQL: that a
connection the server ended during a statement leaves no descriptor watched that another
connection may reuse.
"""

from __future__ import annotations

import socket
from typing import Any

import psycopg2
import psycopg2.extensions
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from medichat.store.postgres import _Connection, _numbered, _together
from tests._pg import create_test_database


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


class _Recorder(Protocol):
    """Fires C{received} with the first bytes a client sends."""

    def __init__(self, received: Deferred[bytes]) -> None:
        self.received = received

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if not self.received.called:
            self.received.callback(data)


class ServerGoneTests(TestCase):
    """L{_Connection} on the real reactor and PostgreSQL."""

    async def test_descriptor_not_left_watched(self) -> None:
        """
        When PostgreSQL ends the connection during a statement, libpq closes its socket
        at once; the next connection the reactor accepts, which the kernel gives the same
        descriptor number, is still read.  (Before, the reactor still counted that number
        as watched, never registered the new socket, and an HTTP request on it went
        unanswered until its head deadline.)
        """
        url = await create_test_database(self)
        # Opened first, so that the only descriptor freed below is libpq's.
        admin = psycopg2.connect(url)
        admin.autocommit = True
        self.addCleanup(admin.close)
        connection = _Connection(reactor)
        await connection.connect(url)
        self.addCleanup(connection.close)
        cursor = connection.raw_cursor()
        await connection.execute(cursor, "SELECT pg_backend_pid()", None)
        (pid,) = cursor.fetchone()
        received: Deferred[bytes] = Deferred()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Recorder(received)),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.socket()
        self.addCleanup(client.close)
        sleeping = connection.execute(connection.raw_cursor(), "SELECT pg_sleep(30)", None)
        await deferToThread(admin.cursor().execute, "SELECT pg_terminate_backend(%s)", (pid,))
        with self.assertRaises(psycopg2.OperationalError):
            await sleeping
        self.assertFalse(connection.is_open)
        client.connect(("127.0.0.1", port.getHost().port))
        client.sendall(b"hello")
        # Never read before: the wait ended in a TimeoutError.
        self.assertEqual(await received.addTimeout(10, reactor), b"hello")


class NumberedTests(SynchronousTestCase):
    """L{_numbered} turns psycopg2's placeholders into PostgreSQL's, for C{PREPARE}."""

    def test_numbered(self) -> None:
        self.assertEqual(_numbered("SELECT 1"), ("SELECT 1", 0))
        self.assertEqual(_numbered("a = %s AND b IN (%s, %s)"), ("a = $1 AND b IN ($2, $3)", 3))
        self.assertEqual(_numbered("x LIKE '%%s' || %s"), ("x LIKE '%s' || $1", 1))
        self.assertEqual(_numbered("%s%%%s"), ("$1%$2", 2))


class TogetherTests(SynchronousTestCase):
    """L{_together} puts held statements before the next one, in one text."""

    def test_nothing_held(self) -> None:
        self.assertEqual(_together([], "SELECT %s", (1,)), ("SELECT %s", (1,)))

    def test_held(self) -> None:
        held = [("INSERT INTO a VALUES (%s)", (1,)), ("EXECUTE m_2 (%s, %s)", (2, "x"))]
        self.assertEqual(
            _together(held, "UPDATE b SET c = %s", (3,)),
            ("INSERT INTO a VALUES (%s); EXECUTE m_2 (%s, %s); UPDATE b SET c = %s",
             (1, 2, "x", 3)),
        )

    def test_last_without_parameters(self) -> None:
        """A literal % in a last statement without parameters is kept as one."""
        self.assertEqual(
            _together([("INSERT INTO a VALUES (%s)", (1,))], "SELECT '100%'", ()),
            ("INSERT INTO a VALUES (%s); SELECT '100%%'", (1,)),
        )
