"""
End to end, what docs/operations-accounts.md promises about C{medichat-admin disable}: run
as its own process against a running server, it ends the employee's live STOMP session
within C{--session-recheck-interval}.
"""

from __future__ import annotations

import json
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests._server import in_thread, run_admin, start_server
from tests._stompclient import disconnect_all, wait_for, ws_connection

EMAIL = "nurse@example.org"
PASSWORD = "correct horse battery"
RECHECK = 0.5


class DisableTests(TestCase):
    """
    C{medichat-admin disable} from another process, against a running server.
    """

    timeout = 60

    @inlineCallbacks
    def test_disable_ends_live_session(self) -> Any:
        """The live cookie session gets ERROR 'session revoked' within the recheck interval."""
        server = yield start_server(self, "--session-recheck-interval", str(RECHECK))
        pool = HTTPConnectionPool(reactor, persistent=False)
        clients: list[Any] = []
        self.addCleanup(in_thread, disconnect_all, clients)
        yield in_thread(run_admin, server.data_dir, "add-employee", EMAIL,
                        "--name", "Nurse Ann", stdin=PASSWORD + "\n")
        response = yield treq.post(
            f"{server.base_url}/v1/auth/login",
            data=json.dumps({"email": EMAIL, "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"}, pool=pool,
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        cookie = response.headers.getRawHeaders("set-cookie")[0].split(";")[0]

        def connect() -> Any:
            conn, recorder = ws_connection(server.http_port, header={"Cookie": cookie})
            conn.connect(wait=True)
            clients.append(conn)
            return recorder

        recorder = yield in_thread(connect)
        disabled_at = time.monotonic()
        yield in_thread(run_admin, server.data_dir, "disable", EMAIL)
        error = yield in_thread(wait_for, recorder.errors, 10.0)
        self.assertEqual(error.headers.get("message"), "session revoked")
        # The admin process itself takes a while to start; the session ends soon after.
        self.assertLess(time.monotonic() - disabled_at, 10.0)
