"""
The lock that keeps a second server process off an SQLite data directory.

SQLite serves one medichat process: its hub, presence and rate limits live in that process,
so a second one on the same file would silently split them.  The server therefore holds an
exclusive C{flock} on C{medichat.lock} in the data directory for as long as it runs; the
kernel releases it when the process ends, however it ends (C{kill -9} included), so a
stale lock file never keeps a server from starting.  C{medichat-admin} does not take it:
its commands are short transactions that SQLite serialises with the server's.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["LOCK_FILE_NAME", "DataDirectoryLock", "LockedError"]

LOCK_FILE_NAME = "medichat.lock"
"""The lock file in the data directory."""


class LockedError(Exception):
    """
    The data directory is locked by another process; the message says so in one line.
    """


class DataDirectoryLock:
    """
    An exclusive, non-blocking C{flock} on L{LOCK_FILE_NAME} in a data directory.

    @ivar path: the lock file.
    """

    def __init__(self, data_dir: str) -> None:
        self._data_dir = data_dir
        self.path = os.path.join(data_dir, LOCK_FILE_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """C{True} while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """
        Take the lock (making the directory, mode 0700, and the file, mode 0600, if
        missing) and write this process's id into the file, for operators.

        @raise LockedError: if another process holds it.
        @raise OSError: if the directory or file cannot be made or opened.
        """
        if self._fd is not None:
            return
        os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            by = f" by process {holder}" if holder else ""
            raise LockedError(
                f"the SQLite store in {self._data_dir} is in use{by} (lock {self.path}); "
                "SQLite serves one medichat process: stop the other, or use --database "
                "postgresql://... to run several"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (closing the file releases it); a lock not held is ignored."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
