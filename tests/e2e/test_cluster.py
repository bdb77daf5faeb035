"""
End to end, several real medichat processes (C{twist medichat}) on one PostgreSQL database:
presence is counted once for all of them, a process killed with C{kill -9} is cleaned up by
a survivor within C{--node-ttl}, and one stopped with SIGTERM removes its presence at once.

(Events reach the subscribers of other processes only with the hub that crosses processes;
these tests watch what each process publishes to its own subscribers, and the tables.)
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from typing import Any

import jwt
import psycopg2
from twisted.trial.unittest import SynchronousTestCase

from medichat.auth.devsecret import load_or_create_dev_secret
from tests._pg import CONNECT_TIMEOUT, create_test_database_now
from tests._stompclient import disconnect_all, wait_for, wait_until, ws_connection
from tests.e2e.test_startup import TIMEOUT, _command, _free_port, _read, _start_logged

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
TTL = 2.0


class _Server:
    """One C{twist medichat} process."""

    def __init__(self, workdir: str, data_dir: str, database: str) -> None:
        self.port = _free_port()
        self.log = os.path.join(workdir, f"medichat-{self.port}.log")
        self.process = _start_logged(
            [*_command("twist", workdir), "--data-dir", data_dir, "--database", database,
             "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--node-ttl", str(TTL), "--close-spread", "0.5"],
            workdir, self.log,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.get("/readyz")
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.kill()
                    raise AssertionError(_read(self.log)) from None
                time.sleep(0.2)

    def get(self, path: str, token: str | None = None) -> Any:
        return self.request("GET", path, token)

    def request(self, method: str, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api{path}", method=method, headers=headers,
            data=b"{}" if method == "POST" else None,
        )
        if method == "POST":
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=TIMEOUT)


class ClusterTests(SynchronousTestCase):
    """
    Two processes on one PostgreSQL database.
    """

    def setUp(self) -> None:
        self.database = create_test_database_now(self)
        self.workdir = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.workdir, "data")
        os.makedirs(self.workdir)
        self.clients: list[Any] = []
        self.addCleanup(disconnect_all, self.clients)
        # Started one after the other: the first makes the dev secret both then use.
        self.a = self.server()
        self.b = self.server()
        secret = load_or_create_dev_secret(self.data_dir)
        self.customer = jwt.encode(
            {"sub": CUSTOMER, "name": "c1", "role": "customer"}, secret, algorithm="HS256"
        )
        self.nurse = jwt.encode(
            {"sub": NURSE, "name": "nurse", "role": "employee"}, secret, algorithm="HS256"
        )

    def server(self) -> _Server:
        started = _Server(self.workdir, self.data_dir, self.database)
        self.addCleanup(started.kill)
        return started

    def query(self, text: str) -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(self.database, connect_timeout=CONNECT_TIMEOUT)
        try:
            with connection.cursor() as cursor:
                cursor.execute(text)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def subscribe(self, server: _Server, token: str, conversation_id: str) -> Any:
        conn, recorder = ws_connection(server.port, header={"Authorization": f"Bearer {token}"})
        conn.connect(wait=True)
        self.clients.append(conn)
        conn.subscribe(f"/v1/topic/conversation/{conversation_id}", id="c", receipt="r")
        self.assertEqual(wait_for(recorder.receipts), "r")
        return recorder

    def events(self, recorder: Any, seconds: float) -> list[Any]:
        """What arrives within C{seconds}."""
        seen = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(json.loads(recorder.messages.get(timeout=left).body))
            except Exception:
                break
        return seen

    def test_presence_shared_and_dead_node_removed(self) -> None:
        """A subscriber on B counts on A; B killed with -9 is removed by A within the TTL."""
        conversation = self.a.request("POST", "/v1/conversation", self.customer)["id"]
        customer = self.subscribe(self.a, self.customer, conversation)
        self.subscribe(self.b, self.nurse, conversation)
        self.assertEqual(self.query("SELECT online FROM presence_online"), [(1,)])
        self.assertEqual(len(self.query("SELECT id FROM nodes")), 2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.a.port}/api/v1/conversation/{conversation}/message",
            data=b'{"message": "hello"}', method="POST",
            headers={"Authorization": f"Bearer {self.customer}",
                     "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        received = self.a.get(f"/v1/conversation/{conversation}", self.customer)["received"]
        self.assertIn(NURSE, [r["userId"] for r in received], "the nurse on B got it")
        self.events(customer, 0.5)
        killed = time.monotonic()
        self.b.kill()
        wait_until(lambda: not customer.messages.empty(), timeout=TTL * 3)
        self.assertLess(time.monotonic() - killed, TTL * 2)
        seen = self.events(customer, TTL)
        self.assertEqual(seen, [{"userDisconnected": {"userId": NURSE}}])
        self.assertEqual(self.query("SELECT online FROM presence_online"), [(0,)])
        self.assertEqual(len(self.query("SELECT id FROM nodes")), 1)

    def test_sigterm_leaves_at_once(self) -> None:
        """SIGTERM: B closes its sessions, removes its node and presence, and exits."""
        conversation = self.a.request("POST", "/v1/conversation", self.customer)["id"]
        self.subscribe(self.a, self.customer, conversation)
        nurse = self.subscribe(self.b, self.nurse, conversation)
        self.assertEqual(
            sorted(self.query("SELECT user_id FROM presence_members")), [(CUSTOMER,), (NURSE,)]
        )
        stopped = time.monotonic()
        self.b.process.send_signal(signal.SIGTERM)
        self.b.process.wait(timeout=TIMEOUT)
        output = _read(self.b.log)
        self.assertLess(time.monotonic() - stopped, TTL + 5)
        self.assertNotIn("Traceback", output)
        self.assertIn("medichat draining", output)
        wait_until(lambda: nurse.disconnected, timeout=5)
        self.assertEqual(self.query("SELECT user_id FROM presence_members"), [(CUSTOMER,)])
        self.assertEqual(self.query("SELECT online FROM presence_online"), [(0,)])
        self.assertEqual(len(self.query("SELECT id FROM nodes")), 1)
        self.assertEqual(self.a.get("/readyz")["status"], "ready")
