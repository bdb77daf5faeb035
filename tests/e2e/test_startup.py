"""
End to end, a server that cannot start: a port taken, a database unreachable, a TLS key
that cannot be read.  Run as an operator runs it, as real processes (C{twistd -n},
C{twistd} as a daemon, and C{twist}), each must exit non-zero with one clear line and no
traceback.  And one that can start still does, and stops on SIGTERM as Twisted makes it
(by the signal, re-raised).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.request import urlopen

from twisted.trial.unittest import SynchronousTestCase

import medichat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(medichat.__file__)))
TIMEOUT = 60
MODES = ("twistd -n", "twistd", "twist")


def _command(mode: str, workdir: str) -> list[str]:
    """The command line that starts medichat in C{mode}, up to its own options."""
    if mode == "twist":
        return [sys.executable, "-m", "twisted", "medichat"]
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    files = [
        "--pidfile", os.path.join(workdir, "twistd.pid"),
        "--logfile", os.path.join(workdir, "twistd.log"),
    ]
    if mode == "twistd -n":
        return [*twistd, "-n", "--pidfile", os.path.join(workdir, "twistd.pid"), "medichat"]
    return [*twistd, *files, "medichat"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def _taken_port() -> Iterator[int]:
    """A loopback port that something else listens on."""
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        yield blocker.getsockname()[1]
    finally:
        blocker.close()


def _start_logged(args: list[str], workdir: str, log: str) -> subprocess.Popen[bytes]:
    """
    Start a process that runs while the test does, its output (stdout and stderr) going
    to the file C{log}: not to a pipe, which nobody reads meanwhile and which, once full
    (64 KiB of log lines), would stop the process at its next write.
    """
    with open(log, "w") as output:
        return subprocess.Popen(args, cwd=workdir, env=_env(), stdout=output,
                                stderr=subprocess.STDOUT)


def _read(path: str) -> str:
    """The text of a file (a process's log so far)."""
    with open(path) as f:
        return f.read()


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


class StartupFailureTests(SynchronousTestCase):
    """
    Each way of running medichat exits non-zero, with one clear line, when it cannot start.
    """

    def run_medichat(self, mode: str, *options: str) -> tuple[int, str]:
        """
        Run medichat until it exits; return its status and everything it wrote (its
        log file's too, for a daemon).
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        args = [*_command(mode, workdir), "--data-dir", os.path.join(workdir, "data"), *options]
        self.addCleanup(self.kill_daemon, os.path.join(workdir, "twistd.pid"))
        result = subprocess.run(
            args, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
        )
        output = result.stdout + result.stderr
        log = os.path.join(workdir, "twistd.log")
        if mode == "twistd" and os.path.exists(log):
            # The daemon reports to its log file; give it a moment to finish writing.
            time.sleep(0.5)
            with open(log) as f:
                output += f.read()
        return result.returncode, output

    def kill_daemon(self, pidfile: str) -> None:
        """End a daemon that a failed test left running."""
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def assertClearFailure(self, status: int, output: str, *reasons: str) -> None:
        self.assertNotEqual(status, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("twisted.python.failure", output)
        lines = [line for line in output.splitlines() if all(r in line for r in reasons)]
        self.assertTrue(lines, output)

    def test_port_taken(self) -> None:
        """A port that is taken: non-zero, and the line says which and why."""
        for mode in MODES:
            with self.subTest(mode=mode), _taken_port() as port:
                status, output = self.run_medichat(
                    mode, "--listen", f"tcp:{port}:interface=127.0.0.1"
                )
                self.assertClearFailure(status, output, "cannot start", "Address already in use")

    def test_database_unreachable(self) -> None:
        """An unreachable PostgreSQL: non-zero, with libpq's reason."""
        for mode in MODES:
            with self.subTest(mode=mode):
                status, output = self.run_medichat(
                    mode,
                    "--listen", f"tcp:{_free_port()}:interface=127.0.0.1",
                    "--database", "postgresql://postgres@127.0.0.1:1/nothing",
                )
                self.assertClearFailure(status, output, "cannot start", "Connection refused")

    def test_bad_tls_files(self) -> None:
        """A TLS key or certificate that cannot be read is a usage error naming --listen."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        garbage = os.path.join(workdir, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a PEM file\n")
        missing = os.path.join(workdir, "missing.pem")
        for mode in MODES:
            for key in (missing, garbage):
                with self.subTest(mode=mode, key=key):
                    status, output = self.run_medichat(
                        mode, "--listen", f"ssl:0:privateKey={key}:certKey={key}"
                    )
                    self.assertClearFailure(status, output, "--listen")


class StartupSuccessTests(SynchronousTestCase):
    """
    A server that can start, starts: the start-up checks do not get in the way.
    """

    def test_twist_starts_and_stops(self) -> None:
        """twist medichat answers /health, and ends by SIGTERM without a traceback."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = _free_port()
        args = [
            *_command("twist", workdir),
            "--data-dir", os.path.join(workdir, "data"),
            "--listen", f"tcp:{port}:interface=127.0.0.1",
        ]
        process = subprocess.Popen(
            args, cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        self.addCleanup(self.kill, process)
        deadline = time.monotonic() + TIMEOUT
        body = b""
        while time.monotonic() < deadline:
            try:
                with urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
                    body = response.read()
                break
            except OSError:
                time.sleep(0.2)
        self.assertEqual(body, b'{"status":"ok","store":"ok"}')
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT)
        self.assertEqual(process.returncode, -signal.SIGTERM, output)
        self.assertNotIn("Traceback", output)

    def test_second_process_on_sqlite_refused(self) -> None:
        """A second server on an SQLite data directory exits 1 with one line; admin runs."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        data_dir = os.path.join(workdir, "data")
        port = _free_port()
        process = subprocess.Popen(
            [*_command("twist", workdir), "--data-dir", data_dir,
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        self.addCleanup(self.kill, process)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                urlopen(f"http://127.0.0.1:{port}/api/readyz", timeout=5).close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.2)
        for mode in ("twistd -n", "twist"):
            second = subprocess.run(
                [*_command(mode, workdir), "--data-dir", data_dir,
                 "--listen", f"tcp:{_free_port()}:interface=127.0.0.1"],
                cwd=workdir, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
            )
            output = second.stdout + second.stderr
            self.assertEqual(second.returncode, 1, output)
            self.assertNotIn("Traceback", output)
            lines = [line for line in output.splitlines()
                     if "medichat cannot start" in line and "is in use by process" in line]
            self.assertEqual(len(lines), 1, output)
        admin = subprocess.run(
            [sys.executable, "-m", "medichat.app.admin", "--data-dir", data_dir, "migrate"],
            cwd=workdir, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
        )
        self.assertEqual(admin.returncode, 0, admin.stdout + admin.stderr)
        with urlopen(f"http://127.0.0.1:{port}/api/readyz", timeout=5) as response:
            self.assertEqual(json.loads(response.read())["status"], "ready")

    def kill(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=TIMEOUT)
