"""
Tests for L{medichat.app.admin}: each command run in-process against a fresh data directory.
"""

from __future__ import annotations

import io
import os
import sys

import jwt
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from medichat.app.admin import run
from medichat.auth.checkers import JWTChecker
from medichat.auth.devsecret import load_or_create_dev_secret
from medichat.domain.accounts import Accounts
from medichat.errors import Unauthorized
from medichat.model import User
from medichat.store import open_store
from medichat.store.sqlite import SQLITE_FILE_NAME
from tests._pg import create_test_database

PASSWORD = "correct horse"


class AdminTestCase(TestCase):
    """
    Runs C{medichat-admin} commands with captured streams.
    """

    database: str | None = None
    create = False
    """Pass C{--create}, so that commands other than C{migrate} make a missing database."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    async def admin(self, *argv: str, stdin: str = "") -> int:
        self.stdout.seek(0)
        self.stdout.truncate()
        self.stderr.seek(0)
        self.stderr.truncate()
        args = ["--data-dir", self.data_dir, *argv]
        if self.database is not None and argv and argv[0] != "token":
            args[2:2] = ["--database", self.database]
        if self.create and argv and argv[0] != "token":
            args[2:2] = ["--create"]
        status: int = await run(reactor, args, io.StringIO(stdin), self.stdout, self.stderr)
        return status

    async def login(self, email: str, password: str) -> User:
        """Log in on the data directory's store, as the server would."""
        store = open_store(self.database, self.data_dir, reactor)
        await store.start()
        try:
            _, user = await Accounts(store, reactor).login(email, password, "127.0.0.1")
        finally:
            await store.stop()
        return user


class StoreCommandTests(AdminTestCase):
    """
    The commands that work on the store (the embedded SQLite one here; PostgreSQL below),
    each given C{--create} (see L{tests.app.test_admin_create} for commands without it).
    """

    create = True

    async def test_migrate(self) -> None:
        """migrate makes the database and says its schema version."""
        self.assertEqual(await self.admin("migrate"), 0)
        self.assertIn("database schema at version", self.stdout.getvalue())
        if self.database is None:
            self.assertTrue(os.path.exists(os.path.join(self.data_dir, SQLITE_FILE_NAME)))

    async def test_add_employee(self) -> None:
        """add-employee reads the password from standard input; the employee can log in."""
        status = await self.admin(
            "add-employee", "Nurse@Example.org", "--name", "Ann Smith", stdin=PASSWORD + "\n"
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        self.assertIn("added employee nurse@example.org", self.stdout.getvalue())
        user = await self.login("nurse@example.org", PASSWORD)
        self.assertEqual(user.user_name, "Ann Smith")

    async def test_add_employee_options_first(self) -> None:
        """Options may come before the email too."""
        status = await self.admin(
            "add-employee", "--name=Ann", "nurse@example.org", stdin=PASSWORD + "\r\n"
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        await self.login("nurse@example.org", PASSWORD)

    async def test_password_file(self) -> None:
        """--password-file gives the password on its first line."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(PASSWORD + "\nignored\n")
        status = await self.admin(
            "add-employee", "nurse@example.org", "--name", "Ann", "--password-file", path
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        await self.login("nurse@example.org", PASSWORD)

    async def test_add_employee_failures(self) -> None:
        """A taken email, a short or missing password fail with exit status 1."""
        await self.admin("add-employee", "nurse@example.org", "--name", "Ann", stdin=PASSWORD)
        status = await self.admin(
            "add-employee", "NURSE@example.org", "--name", "Bob", stdin=PASSWORD
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "medichat-admin: an employee with email nurse@example.org exists\n",
        )
        self.assertEqual(await self.admin("add-employee", "b@example.org", "--name", "B"), 1)
        self.assertIn("no password on standard input", self.stderr.getvalue())
        status = await self.admin("add-employee", "b@example.org", "--name", "B", stdin="short")
        self.assertEqual(status, 1)
        self.assertIn("at least 8 characters", self.stderr.getvalue())
        status = await self.admin(
            "add-employee", "b@example.org", "--name", "B", "--password-file", self.mktemp()
        )
        self.assertEqual(status, 1)
        self.assertIn("cannot read password file", self.stderr.getvalue())

    async def test_add_employee_usage(self) -> None:
        """add-employee without --name or without email is a usage error."""
        self.assertEqual(await self.admin("add-employee", "b@example.org", stdin=PASSWORD), 2)
        self.assertIn("--name is required", self.stderr.getvalue())
        self.assertEqual(await self.admin("add-employee", "--name", "B", stdin=PASSWORD), 2)

    async def test_set_password(self) -> None:
        """set-password replaces the password."""
        await self.admin("add-employee", "nurse@example.org", "--name", "Ann", stdin=PASSWORD)
        status = await self.admin("set-password", "nurse@example.org", stdin="battery staple\n")
        self.assertEqual(status, 0, self.stderr.getvalue())
        await self.login("nurse@example.org", "battery staple")
        with self.assertRaises(Unauthorized):
            await self.login("nurse@example.org", PASSWORD)

    async def test_unknown_account(self) -> None:
        """set-password, disable and enable of an unknown email fail with exit status 1."""
        for argv in (
            ["set-password", "x@example.org"],
            ["disable", "x@example.org"],
            ["enable", "x@example.org"],
        ):
            self.assertEqual(await self.admin(*argv, stdin=PASSWORD), 1)
            self.assertEqual(
                self.stderr.getvalue(), "medichat-admin: no employee with email x@example.org\n"
            )

    async def test_disable_enable_list(self) -> None:
        """list-employees shows accounts and their state, never a password hash."""
        await self.admin("add-employee", "b@example.org", "--name", "Bob", stdin=PASSWORD)
        await self.admin("add-employee", "a@example.org", "--name", "Ann", stdin=PASSWORD)
        self.assertEqual(await self.admin("disable", "B@example.org"), 0)
        with self.assertRaises(Unauthorized):
            await self.login("b@example.org", PASSWORD)
        await self.login("a@example.org", PASSWORD)
        self.assertEqual(await self.admin("list-employees"), 0)
        lines = self.stdout.getvalue().splitlines()
        self.assertEqual(lines[0], "email\tname\tstatus\tlast login")
        self.assertEqual(lines[2], "b@example.org\tBob\tdisabled\tnever")
        email, name, status, last_login = lines[1].split("\t")
        self.assertEqual((email, name, status), ("a@example.org", "Ann", "enabled"))
        self.assertTrue(last_login.endswith("Z"))
        self.assertNotIn("argon2", self.stdout.getvalue())
        self.assertEqual(await self.admin("enable", "b@example.org"), 0)
        await self.login("b@example.org", PASSWORD)

    async def test_unusable_database(self) -> None:
        """A database that cannot be opened or reached fails with exit status 1."""
        if self.database is None:
            blocker = self.mktemp()
            with open(blocker, "w") as f:
                f.write("not a directory")
            self.data_dir = os.path.join(blocker, "data")
        else:
            self.database = "postgresql://postgres@127.0.0.1:1/unreachable"
        self.assertEqual(await self.admin("list-employees"), 1)
        self.assertIn("cannot open the database", self.stderr.getvalue())
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)

    async def test_usage_errors(self) -> None:
        """No command, an unknown command or a bad --database are usage errors."""
        self.assertEqual(await self.admin(), 2)
        self.assertIn("a command is required", self.stderr.getvalue())
        self.assertEqual(await self.admin("frobnicate"), 2)
        self.assertEqual(await self.admin("--database", "mysql://db/x", "migrate"), 2)
        self.assertIn("postgresql://", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.data_dir))

    async def test_help(self) -> None:
        """--help exits with status 0."""
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(await self.admin("--help"), 0)


class TokenTests(AdminTestCase):
    """
    The token command.
    """

    def verify(self, token: str, secret: bytes) -> User:
        clock = Clock()
        clock.advance(reactor.seconds())
        return JWTChecker(secret=secret, clock=clock).verify(token)

    async def test_token(self) -> None:
        """token mints an HS256 JWT with the development secret, valid for an hour."""
        secret = load_or_create_dev_secret(self.data_dir)
        status = await self.admin("token", "--user-id", "cust-1", "--name", "Ada")
        self.assertEqual(status, 0, self.stderr.getvalue())
        token = self.stdout.getvalue().strip()
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")
        user = self.verify(token, secret)
        self.assertEqual(
            (user.user_id, user.user_name, user.user_role), ("cust-1", "Ada", "customer")
        )
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        self.assertEqual(claims["exp"] - claims["iat"], 3600)

    async def test_options(self) -> None:
        """--role, --ttl, --issuer, --audience and --secret-file shape the token."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"k" * 32 + b"\n")
        status = await self.admin(
            "token",
            "--user-id",
            "n-1",
            "--name",
            "Ann",
            "--role",
            "employee",
            "--ttl",
            "60",
            "--secret-file",
            path,
            "--issuer",
            "https://idp.example/",
            "--audience",
            "medichat",
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        claims = jwt.decode(
            self.stdout.getvalue().strip(),
            b"k" * 32,
            algorithms=["HS256"],
            audience="medichat",
            issuer="https://idp.example/",
        )
        self.assertEqual(claims["role"], "employee")
        self.assertEqual(claims["exp"] - claims["iat"], 60)

    async def test_no_secret(self) -> None:
        """Without a development secret, token refuses (status 2) and creates nothing."""
        status = await self.admin("token", "--user-id", "cust-1", "--name", "Ada")
        self.assertEqual(status, 2)
        self.assertEqual(self.stdout.getvalue(), "")
        self.assertIn("no development secret", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.data_dir))

    async def test_bad_secret_file(self) -> None:
        """An unreadable --secret-file is refused with status 2."""
        status = await self.admin(
            "token", "--user-id", "u", "--name", "U", "--secret-file", self.mktemp()
        )
        self.assertEqual(status, 2)
        self.assertIn("cannot read secret file", self.stderr.getvalue())

    async def test_usage(self) -> None:
        """A bad role, a bad ttl or a missing claim are usage errors."""
        load_or_create_dev_secret(self.data_dir)
        for argv in (
            ["--user-id", "u", "--name", "U", "--role", "admin"],
            ["--user-id", "u", "--name", "U", "--ttl", "soon"],
            ["--user-id", "u", "--name", "U", "--ttl", "0"],
            ["--name", "U"],
            ["--user-id", "u"],
        ):
            self.assertEqual(await self.admin("token", *argv), 2, argv)
            self.assertEqual(self.stdout.getvalue(), "")
        await self.admin("token", "--user-id", "u", "--name", "U", "--role", "admin")
        self.assertIn("--role must be one of customer, employee", self.stderr.getvalue())


class PostgreSQLStoreCommandTests(StoreCommandTests):
    """
    The same commands against PostgreSQL (--database).
    """

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        self.database = await create_test_database(self)
