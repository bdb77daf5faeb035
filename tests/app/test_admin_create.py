"""
Tests for L{medichat.app.admin} on a data directory or database that holds no medichat
database: only C{migrate} or C{--create} make one; other commands refuse, so that a
mistyped C{--data-dir} is not taken for an empty server.
"""

from __future__ import annotations

import os

from medichat.store.sqlite import SQLITE_FILE_NAME
from tests._pg import create_test_database
from tests.app.test_admin import PASSWORD, AdminTestCase


class MissingDatabaseTests(AdminTestCase):
    """
    Commands on a data directory without a database (SQLite; PostgreSQL below).
    """

    async def test_refused(self) -> None:
        """Every store command but migrate fails with status 1 and one line; nothing is made."""
        for argv in (
            ["add-employee", "nurse@example.org", "--name", "Ann"],
            ["set-password", "nurse@example.org"],
            ["disable", "nurse@example.org"],
            ["enable", "nurse@example.org"],
            ["list-employees"],
        ):
            with self.subTest(argv=argv):
                self.assertEqual(await self.admin(*argv, stdin=PASSWORD + "\n"), 1)
                (line,) = self.stderr.getvalue().splitlines()
                self.assertIn("holds no medichat database", line)
                self.assertIn("medichat-admin migrate", line)
                self.assertIn("--create", line)
                self.assertEqual(self.stdout.getvalue(), "")
                if self.database is None:
                    self.assertFalse(os.path.exists(self.data_dir))

    async def test_existing_empty_directory(self) -> None:
        """An existing directory without the database file is refused too, and left alone."""
        if self.database is not None:
            return
        os.makedirs(self.data_dir)
        self.assertEqual(await self.admin("list-employees"), 1)
        self.assertEqual(os.listdir(self.data_dir), [])

    async def test_create(self) -> None:
        """--create makes the database, then the command runs."""
        status = await self.admin(
            "--create", "add-employee", "nurse@example.org", "--name", "Ann", stdin=PASSWORD
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        self.assertEqual(await self.admin("list-employees"), 0)
        self.assertIn("nurse@example.org", self.stdout.getvalue())

    async def test_migrate(self) -> None:
        """migrate makes the database without --create; other commands then work."""
        self.assertEqual(await self.admin("migrate"), 0, self.stderr.getvalue())
        if self.database is None:
            self.assertTrue(os.path.exists(os.path.join(self.data_dir, SQLITE_FILE_NAME)))
        self.assertEqual(await self.admin("list-employees"), 0, self.stderr.getvalue())


class PostgreSQLMissingDatabaseTests(MissingDatabaseTests):
    """
    The same against an empty PostgreSQL database (--database).
    """

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.database = await create_test_database(self)
