"""
End to end, the logs of real processes: C{twistd -n}, a C{twistd} daemon and C{twist},
each with C{--log-format json}, write one JSON object per line (no record separator) that
parses on its own, beginning with medichat's start line and with an access line per
request that names its request id; C{twistd -n} without the option stays text; and
C{twistd medichat --version} / C{medichat-admin --version} say medichat's version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from twisted.trial.unittest import SynchronousTestCase

from medichat import __version__
from tests.e2e.test_startup import TIMEOUT, _command, _env, _free_port


class JSONLogTests(SynchronousTestCase):
    """
    C{--log-format json} under each runner.
    """

    def run_server(self, mode: str, *options: str) -> str:
        """
        Start medichat in C{mode}, make two requests, stop it with SIGTERM; return what
        it logged.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = _free_port()
        args = [*_command(mode, workdir), "--data-dir", os.path.join(workdir, "data"),
                "--listen", f"tcp:{port}:interface=127.0.0.1", *options]
        process = subprocess.Popen(args, cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        pidfile = os.path.join(workdir, "twistd.pid")
        self.addCleanup(self.kill, process, pidfile)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                urlopen(f"http://127.0.0.1:{port}/api/livez", timeout=5).close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the server did not start")
                time.sleep(0.2)
        bad = Request(f"http://127.0.0.1:{port}/api/v1/me",
                      headers={"Authorization": "Bearer not-a-token-xyz"})
        with self.assertRaises(HTTPError):
            urlopen(bad, timeout=5)
        if mode == "twistd":
            daemon = process.communicate(timeout=TIMEOUT)[0]
            with open(pidfile) as f:
                os.kill(int(f.read()), signal.SIGTERM)
            while os.path.exists(pidfile):
                self.assertLess(time.monotonic(), deadline, "the daemon did not stop")
                time.sleep(0.1)
            with open(os.path.join(workdir, "twistd.log")) as f:
                return daemon + f.read()
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=TIMEOUT)[0]

    def kill(self, process: subprocess.Popen[str], pidfile: str) -> None:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
        try:
            with open(pidfile) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def assertJSONLog(self, output: str) -> list[dict[str, Any]]:
        self.assertNotIn("\x1e", output)
        events = [json.loads(line) for line in output.splitlines() if line.strip()]
        ours = [e for e in events if e["log_namespace"].startswith("medichat")]
        self.assertTrue(ours[0]["log_format"].startswith("{version} starting"), ours[0])
        self.assertEqual(ours[0]["medichat_version"], __version__)
        access = [e for e in events if e["log_namespace"] == "medichat.http.access"]
        self.assertEqual([(e["path"], e["status"]) for e in access],
                         [("/api/livez", 200), ("/api/v1/me", 401)])
        self.assertTrue(all(e["request_id"] != "-" for e in access))
        self.assertTrue(all("log_level" in e for e in events))
        self.assertNotIn("not-a-token-xyz", output)
        return events

    def test_twistd_nodaemon(self) -> None:
        """twistd -n: JSON lines on standard output."""
        self.assertJSONLog(self.run_server("twistd -n", "--log-format", "json"))

    def test_twistd_daemon(self) -> None:
        """A twistd daemon: JSON lines in its log file."""
        self.assertJSONLog(self.run_server("twistd", "--log-format", "json"))

    def test_twist(self) -> None:
        """twist: JSON lines, with no record separator, whether asked or by default."""
        self.assertJSONLog(self.run_server("twist", "--log-format", "json"))
        self.assertJSONLog(self.run_server("twist"))  # no terminal: twist's own JSON

    def test_twistd_text(self) -> None:
        """twistd -n without the option: text lines, with the start line and access lines."""
        output = self.run_server("twistd -n")
        self.assertIn(f"[medichat.app.tap#info] medichat {__version__} (Twisted ", output)
        self.assertIn("[medichat.http.access#info] GET /api/livez 200 ", output)
        self.assertRaises(ValueError, json.loads, output.splitlines()[0])


class VersionTests(SynchronousTestCase):
    """
    The real commands print medichat's version.
    """

    def test_versions(self) -> None:
        """twistd medichat --version and medichat-admin --version, exit status 0."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        for args in ([*_command("twistd -n", workdir), "--version"],
                     [sys.executable, "-m", "medichat.app.admin", "--version"]):
            result = subprocess.run(args, cwd=workdir, env=_env(), capture_output=True,
                                    text=True, timeout=TIMEOUT)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(result.stdout.startswith(f"medichat {__version__} (Twisted "),
                            result.stdout)
