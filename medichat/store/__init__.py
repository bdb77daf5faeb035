"""
Durable state behind L{medichat.interfaces.IStore}: SQLite (embedded, the default) or
PostgreSQL (shared by any number of medichat processes).

Only this package imports sqlite3, txpostgres or psycopg2.  See docs/storage.md.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from medichat.interfaces import IStore
from medichat.store.postgres import PostgreSQLStore
from medichat.store.sqlite import SQLITE_FILE_NAME, SQLiteStore

POSTGRESQL_SCHEMES = ("postgresql", "postgres")
"""URL schemes that select the PostgreSQL store (both are libpq's)."""


def open_store(
    database: str | None, data_dir: str, reactor: Any, *, create: bool = True
) -> IStore:
    """
    The store that C{--database} and C{--data-dir} name, not yet started.

    @param database: L{None} for SQLite in C{data_dir}, or a PostgreSQL URL
        (C{postgresql://user@host:port/dbname}, C{postgres://} too).
    @param data_dir: where the SQLite file (L{SQLITE_FILE_NAME}) lives; created at
        C{start} if missing.
    @param reactor: the reactor; the stores read its time, run SQLite's thread or watch
        txpostgres's sockets with it.
    @param create: let C{start} make the database (the SQLite file and its directory, or
        medichat's tables); if C{False}, C{start} fails with
        L{medichat.errors.MissingDatabase} where medichat never made one.
    @raise ValueError: if C{database} is not a PostgreSQL URL; the message says what is
        expected and never repeats a password.
    """
    if database is None:
        return SQLiteStore(os.path.join(data_dir, SQLITE_FILE_NAME), reactor, create=create)
    scheme, separator, _ = database.partition("://")
    if separator and scheme.lower() in POSTGRESQL_SCHEMES:
        try:
            urlsplit(database).port  # noqa: B018 - only to validate it
        except ValueError as e:
            raise ValueError(
                f"malformed PostgreSQL URL ({e}): expected postgresql://user@host:port/dbname"
            ) from None
        return PostgreSQLStore(database, reactor, create=create)
    if separator and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        what = f"a {scheme!r} URL"
    elif database.strip():
        what = "not a URL"
    else:
        what = "empty"
    raise ValueError(
        f"unsupported --database ({what}): expected postgresql://user@host:port/dbname, or "
        "no --database for the embedded SQLite store in --data-dir"
    )


__all__ = ["POSTGRESQL_SCHEMES", "SQLITE_FILE_NAME", "PostgreSQLStore", "SQLiteStore", "open_store"]
