"""
PostgreSQL for tests: a fresh database for each test that wants one, dropped after it.

The server is C{postgresql://postgres@127.0.0.1:5432/test} unless the environment variable
C{MEDICHAT_TEST_POSTGRES} names another (a libpq URL whose user may create databases).
Each test database is called C{medichat_test_<random hex>}, so test runs in parallel, and
tests of different modules, never share state.  When the server cannot be reached the test
is skipped, unless C{CI=true}, where a missing database is a broken build and fails it.

Use::

    url = await create_test_database(self)
    store = PostgreSQLStore(url, reactor)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import sql
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from medichat.store.postgres import redact

ENVIRONMENT_VARIABLE = "MEDICHAT_TEST_POSTGRES"
"""Names the server to create test databases on."""

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
"""The server used when L{ENVIRONMENT_VARIABLE} is not set."""

DATABASE_PREFIX = "medichat_test_"
"""Every test database's name starts with this."""

CONNECT_TIMEOUT = 5
"""Seconds to wait for the server."""


def server_url() -> str:
    """
    The URL of the database through which test databases are created and dropped.
    """
    return os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_URL


def database_url(server: str, name: str) -> str:
    """
    C{server}'s URL, naming database C{name} instead.
    """
    return urlsplit(server)._replace(path="/" + name).geturl()


def create_test_database_now(testcase: Any) -> str:
    """
    Like L{create_test_database}, but at once (blocking), for synchronous tests that start
    server processes: create an empty database, dropped when the test has cleaned up.

    @return: the new database's URL.
    @raise SkipTest: if the server is unreachable (a failure instead under C{CI=true}).
    """
    server = server_url()
    name = DATABASE_PREFIX + secrets.token_hex(8)
    try:
        _create(server, name)
    except psycopg2.OperationalError as e:
        message = f"PostgreSQL not reachable at {redact(server)}: {' '.join(str(e).split())}"
        if os.environ.get("CI") == "true":
            raise testcase.failureException(message) from None
        raise SkipTest(message) from None
    testcase.addCleanup(_drop, server, name)
    return database_url(server, name)


def create_test_database(testcase: TestCase) -> Deferred[str]:
    """
    Create an empty database for C{testcase} and drop it when the test has cleaned up.

    Cleanups run last-registered first, so stores that the test starts (and registers
    stops for) afterwards are stopped before the database is dropped; connections left
    open are ended by the drop anyway.

    @return: a L{Deferred} firing with the new database's URL; it fails with
        L{SkipTest} if the server is unreachable, or with C{testcase.failureException}
        instead when the environment variable C{CI} is C{true}.
    """
    server = server_url()
    name = DATABASE_PREFIX + secrets.token_hex(8)

    def created(_: None) -> str:
        testcase.addCleanup(deferToThread, _drop, server, name)
        return database_url(server, name)

    def unreachable(failure: Failure) -> Failure:
        failure.trap(psycopg2.OperationalError)
        reason = " ".join(str(failure.value).split())
        message = f"PostgreSQL not reachable at {redact(server)}: {reason}"
        if os.environ.get("CI") == "true":
            raise testcase.failureException(message + f" (CI=true; set {ENVIRONMENT_VARIABLE})")
        raise SkipTest(message)

    d: Deferred[None] = deferToThread(_create, server, name)
    return d.addCallbacks(created, unreachable)


def _create(server: str, name: str) -> None:
    with _admin_connection(server) as connection, connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop(server: str, name: str) -> None:
    with _admin_connection(server) as connection, connection.cursor() as cursor:
        statement = "DROP DATABASE IF EXISTS {}"
        if connection.server_version >= 130000:
            statement += " WITH (FORCE)"
        cursor.execute(sql.SQL(statement).format(sql.Identifier(name)))


@contextmanager
def _admin_connection(server: str) -> Iterator[Any]:
    """
    An autocommit connection (CREATE and DROP DATABASE refuse to run in a transaction),
    closed on leaving the C{with} block.
    """
    connection = psycopg2.connect(server, connect_timeout=CONNECT_TIMEOUT)
    try:
        connection.autocommit = True
        yield connection
    finally:
        connection.close()


__all__ = [
    "DATABASE_PREFIX",
    "DEFAULT_URL",
    "ENVIRONMENT_VARIABLE",
    "create_test_database",
    "database_url",
    "server_url",
]
