"""
Tests that the files holding every chat, every password hash and the development secret
are private to their owner however the process's umask is set, whoever creates them: the
server's store, C{medichat-admin}, or the development secret.
"""

from __future__ import annotations

import io
import os
import stat

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from medichat.app.admin import run
from medichat.auth.devsecret import dev_secret_path, load_or_create_dev_secret
from medichat.store import SQLiteStore
from medichat.store.sqlite import SQLITE_FILE_NAME

UMASKS = (0o022, 0o000)


def mode(path: str) -> int:
    """The permission bits of C{path}."""
    return stat.S_IMODE(os.stat(path).st_mode)


class PermissionTests(TestCase):
    """
    The data directory is made 0700, the SQLite files and the secret 0600, under any umask.
    """

    def with_umask(self, umask: int) -> None:
        """Set the process's umask for the rest of the test."""
        previous = os.umask(umask)
        self.addCleanup(os.umask, previous)

    def assertPrivate(self, data_dir: str, files: list[str]) -> None:
        self.assertEqual(oct(mode(data_dir)), oct(0o700), data_dir)
        for name in files:
            path = os.path.join(data_dir, name)
            self.assertEqual(oct(mode(path)), oct(0o600), path)

    async def test_store(self) -> None:
        """The SQLite store makes its directory 0700 and the database, WAL and SHM 0600."""
        for umask in UMASKS:
            with self.subTest(umask=oct(umask)):
                self.with_umask(umask)
                data_dir = os.path.abspath(self.mktemp())
                store = SQLiteStore(os.path.join(data_dir, SQLITE_FILE_NAME), reactor)
                await store.start()
                try:
                    await store.ping()
                    names = [SQLITE_FILE_NAME + suffix for suffix in ("", "-wal", "-shm")]
                    self.assertEqual(
                        sorted(n for n in os.listdir(data_dir) if n in names), sorted(names)
                    )
                    self.assertPrivate(data_dir, names)
                finally:
                    await store.stop()

    async def test_admin(self) -> None:
        """medichat-admin migrate makes the same private directory and database."""
        for umask in UMASKS:
            with self.subTest(umask=oct(umask)):
                self.with_umask(umask)
                data_dir = os.path.abspath(self.mktemp())
                out, err = io.StringIO(), io.StringIO()
                status = await run(
                    reactor, ["--data-dir", data_dir, "migrate"], io.StringIO(), out, err
                )
                self.assertEqual(status, 0, err.getvalue())
                self.assertPrivate(data_dir, [SQLITE_FILE_NAME])

    def test_dev_secret(self) -> None:
        """The development secret is 0600 in a 0700 directory."""
        for umask in UMASKS:
            with self.subTest(umask=oct(umask)):
                self.with_umask(umask)
                data_dir = os.path.abspath(self.mktemp())
                load_or_create_dev_secret(data_dir)
                self.assertPrivate(data_dir, [os.path.basename(dev_secret_path(data_dir))])
