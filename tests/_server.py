"""
Test helper: the real medichat server, assembled by L{medichat.app.tap.makeService}, on
loopback ports of the real reactor.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import treq
from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from medichat.app.tap import MedichatService, Options, makeService
from medichat.auth.devsecret import load_or_create_dev_secret
from tests._stompclient import disconnect_all


@frozen
class RunningServer:
    """
    Where a test server listens, and the means to make credentials for it.
    """

    service: MedichatService
    http_port: int
    stomp_port: int
    data_dir: str
    secret: bytes

    @property
    def base_url(self) -> str:
        """The HTTP base, including the base path."""
        return f"http://127.0.0.1:{self.http_port}/api"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint."""
        return f"ws://127.0.0.1:{self.http_port}/api/v1/chat"


@inlineCallbacks
def start_server(testcase: TestCase, *args: str) -> Any:
    """
    Start a server with C{args} as extra options; stopped in the test's cleanup.

    @return: a L{Deferred} firing with a L{RunningServer}.
    """
    data_dir = testcase.mktemp()
    options = Options()
    options.parseOptions(
        [
            "--data-dir", data_dir,
            "--listen", "tcp:0:interface=127.0.0.1",
            "--stomp-listen", "tcp:0:interface=127.0.0.1",
            *args,
        ]
    )
    service: Any = makeService(options, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    yield service.ready
    http, stomp = (listener.port.getHost().port for listener in service.listeners)
    secret = load_or_create_dev_secret(data_dir)
    return RunningServer(service, http, stomp, data_dir, secret)


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run a blocking client function in a thread, off the reactor that serves it."""
    from twisted.internet.threads import deferToThread

    return deferToThread(fn, *args, **kwargs)


def run_admin(data_dir: str, *argv: str, database: str | None = None, stdin: str = "") -> str:
    """
    Run the real C{medichat-admin} command (installed, or from this checkout) and return
    what it printed; fails the calling test if it exits non-zero.  It blocks: call it from
    a thread (L{in_thread}) while a server runs.
    """
    import os
    import subprocess
    import sys

    import medichat

    root = os.path.dirname(os.path.dirname(os.path.abspath(medichat.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    args = [sys.executable, "-m", "medichat.app.admin", "--data-dir", data_dir]
    if database:
        args += ["--database", database]
    result = subprocess.run([*args, *argv], input=stdin, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


class LiveServerMixin:
    """
    For end-to-end tests: the real server (L{start_server}, with L{server_args}), a
    pool for HTTP, stomp.py clients disconnected at cleanup, and helpers for tokens and
    JSON requests.  Mix into a L{TestCase}.
    """

    timeout = 90
    server: Any

    def server_args(self) -> Any:
        """Extra options (a Deferred may be returned)."""
        return []

    @inlineCallbacks
    def setUp(self) -> Any:
        args = yield self.server_args()
        self.server = yield start_server(self, *args)  # type: ignore[arg-type]
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.clients: list[Any] = []
        self.addCleanup(in_thread, disconnect_all, self.clients)  # type: ignore[attr-defined]

    def token(self, sub: str, name: str, role: str) -> str:
        """A JWT for this server, signed with its development secret."""
        return jwt.encode({"sub": sub, "name": name, "role": role}, self.server.secret,
                          algorithm="HS256")

    @inlineCallbacks
    def http(self, method: str, path: str, token: str, body: Any = None) -> Any:
        """C{(status, JSON or None)} of a request with a bearer token."""
        headers = {"Authorization": f"Bearer {token}"}
        kwargs: dict[str, Any] = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
            kwargs["data"] = json.dumps(body).encode()
        response = yield treq.request(method, self.server.base_url + path, headers=headers,
                                      pool=self.pool, **kwargs)
        text = yield response.text()
        return response.code, (json.loads(text) if text else None)
