"""
End to end: the per-user limits are options of C{twistd medichat} that reach the running
server.
"""

from __future__ import annotations

import socket
from typing import Any

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests._server import in_thread, start_server

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"


def _connect(port: int, token: str) -> tuple[socket.socket, bytes]:
    """Open a STOMP/TCP connection, CONNECT, and return it with the server's first frame."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"CONNECT\naccept-version:1.2\nAuthorization:Bearer %s\n\n\x00" % token.encode()
    )
    data = b""
    while b"\x00" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return sock, data


class OptionsTests(TestCase):
    """
    C{--max-sessions-per-user} and C{--conversation-rate} take effect.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(
            self, "--max-sessions-per-user", "1", "--conversation-rate", "1"
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.token = jwt.encode({"sub": CUSTOMER, "name": "c1", "role": "customer"},
                                self.server.secret, algorithm="HS256")

    @inlineCallbacks
    def test_max_sessions_per_user(self) -> Any:
        """With --max-sessions-per-user 1 a user's second live session is refused."""
        first, connected = yield in_thread(_connect, self.server.stomp_port, self.token)
        self.addCleanup(first.close)
        self.assertTrue(connected.startswith(b"CONNECTED\n"), connected)
        second, refused = yield in_thread(_connect, self.server.stomp_port, self.token)
        self.addCleanup(second.close)
        self.assertTrue(refused.startswith(b"ERROR\n"), refused)
        self.assertIn(b"\nmessage:too many sessions\n", refused)

    @inlineCallbacks
    def test_conversation_rate(self) -> Any:
        """With --conversation-rate 1 a user's second conversation within a minute is 429."""
        codes = []
        for _ in range(2):
            response = yield treq.post(
                self.server.base_url + "/v1/conversation",
                headers={"Authorization": f"Bearer {self.token}"},
                pool=self.pool,
            )
            yield response.content()
            codes.append(response.code)
        self.assertEqual(codes, [201, 429])
