"""
End to end, the employee's way in: an operator adds the employee with the real
C{medichat-admin} command, the employee logs in over HTTP, connects the WebSocket with the
session cookie exactly as the seed's employee flow says, is counted online, and answers a
customer.  Cross-site protection of the handshake.  On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests._pg import create_test_database
from tests._server import in_thread, run_admin, start_server
from tests._stompclient import disconnect_all, wait_for, wait_until, ws_connection

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
EMAIL = "nurse@example.org"
PASSWORD = "correct horse battery"


class EmployeeMixin:
    """
    The employee's flow, written once, run on each store.
    """

    timeout = 90
    server: Any
    database: str | None = None

    def database_url(self) -> Any:
        return None

    @inlineCallbacks
    def setUp(self) -> Any:
        self.database = yield self.database_url()
        args = ["--allowed-origin", "https://dashboard.example"]
        if self.database:
            args += ["--database", self.database]
        self.server = yield start_server(self, *args)  # type: ignore[arg-type]
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.clients: list[Any] = []
        self.addCleanup(in_thread, disconnect_all, self.clients)  # type: ignore[attr-defined]
        # The operator adds the employee while the server runs.
        yield in_thread(run_admin, self.server.data_dir, "add-employee", EMAIL,
                        "--name", "Nurse Ann", database=self.database, stdin=PASSWORD + "\n")

    @inlineCallbacks
    def login(self, origin: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if origin:
            headers["Origin"] = origin
        response = yield treq.post(
            f"{self.server.base_url}/v1/auth/login",
            data=json.dumps({"email": EMAIL, "password": PASSWORD}).encode(),
            headers=headers, pool=self.pool,
        )
        body = yield response.json()
        cookies = response.headers.getRawHeaders("set-cookie") or []
        return response.code, body, cookies

    def _connect(self, cookie: str) -> Any:
        conn, recorder = ws_connection(self.server.http_port, header={"Cookie": cookie})
        conn.connect(wait=True)
        self.clients.append(conn)
        return conn, recorder

    @inlineCallbacks
    def test_employee_answers_customer(self) -> Any:
        """Added by medichat-admin, logged in, connected by cookie, counted, answering."""
        code, me, cookies = yield self.login()
        self.assertEqual(code, 200)
        self.assertEqual((me["userName"], me["userRole"]), ("Nurse Ann", "employee"))
        self.assertEqual(len(cookies), 1)
        attributes = [a.strip().lower() for a in cookies[0].split(";")]
        self.assertIn("httponly", attributes)
        self.assertIn("samesite=lax", attributes)
        self.assertIn("path=/api", attributes)
        cookie = cookies[0].split(";")[0]

        customer_token = jwt.encode({"sub": CUSTOMER, "name": "c1"}, self.server.secret,
                                    algorithm="HS256")
        response = yield treq.post(f"{self.server.base_url}/v1/conversation",
                                   headers={"Authorization": f"Bearer {customer_token}"},
                                   pool=self.pool)
        conversation = yield response.json()
        cid = conversation["id"]

        def customer_watches() -> Any:
            conn, recorder = ws_connection(
                self.server.http_port, header={"Authorization": f"Bearer {customer_token}"})
            conn.connect(wait=True)
            self.clients.append(conn)
            conn.subscribe("/v1/topic/online-employees", id="online")
            assert json.loads(wait_for(recorder.messages).body) == {"online": 0}
            conn.subscribe(f"/v1/topic/conversation/{cid}", id="c", receipt="c")
            wait_for(recorder.receipts)
            wait_for(recorder.messages)  # userConnected (the customer)
            return recorder

        c_events = yield in_thread(customer_watches)

        # Employee flow 1-2: connect with the cookie, subscribe to the conversation.
        def employee_joins() -> Any:
            conn, recorder = self._connect(cookie)
            conn.subscribe(f"/v1/topic/conversation/{cid}", id="e", receipt="e")
            wait_for(recorder.receipts)
            return conn, recorder

        employee, e_events = yield in_thread(employee_joins)
        seen = []
        for _ in range(2):
            frame = yield in_thread(wait_for, c_events.messages)
            seen.append(json.loads(frame.body))
        self.assertIn({"online": 1}, seen)
        self.assertIn({"userConnected": {"userId": me["userId"]}}, seen)

        # Employee flow 3: answer over HTTP with the cookie (no Origin: a backend tool).
        response = yield treq.post(
            f"{self.server.base_url}/v1/conversation/{cid}/message",
            data=json.dumps({"message": "Hello, how can I help?"}).encode(),
            headers={"Content-Type": "application/json", "Cookie": cookie}, pool=self.pool)
        self.assertEqual(response.code, 201)
        answer = yield response.json()
        self.assertEqual(answer["userRole"], "employee")
        while True:
            frame = yield in_thread(wait_for, c_events.messages)
            event = json.loads(frame.body)
            if "message" in event:
                self.assertEqual(event, {"message": answer})
                break

        # Logging out ends the employee's live session and the count drops.
        response = yield treq.post(f"{self.server.base_url}/v1/auth/logout",
                                   headers={"Cookie": cookie}, pool=self.pool)
        self.assertIn(response.code, (200, 204))
        yield response.content()
        error = yield in_thread(wait_for, e_events.errors)
        self.assertEqual(error.headers["message"], "session revoked")
        yield in_thread(wait_until, lambda: not employee.is_connected())

    @inlineCallbacks
    def test_foreign_origin_refused(self) -> Any:
        """A valid cookie from a foreign Origin is refused; an allowed Origin works."""
        _code, _me, cookies = yield self.login(origin="https://dashboard.example")
        cookie = cookies[0].split(";")[0]

        def handshake(origin: str) -> Any:
            import websocket

            try:
                ws = websocket.create_connection(self.server.ws_url, timeout=5,
                                                 cookie=cookie, origin=origin)
            except websocket.WebSocketBadStatusException as e:
                return e.status_code
            ws.close()
            return 101

        self.assertEqual((yield in_thread(handshake, "https://evil.example")), 403)
        self.assertEqual((yield in_thread(handshake, "https://dashboard.example")), 101)

        def stomp_from_allowed_origin() -> Any:
            # stomp.py always sends its own Origin, so speak STOMP over websocket-client.
            import websocket

            ws = websocket.create_connection(
                self.server.ws_url, timeout=5, cookie=cookie,
                origin="https://dashboard.example", subprotocols=["v12.stomp"])
            try:
                ws.send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
                connected = ws.recv()
                ws.send("SUBSCRIBE\nid:o\ndestination:/v1/topic/online-employees\n\n\x00")
                message = ws.recv()
            finally:
                ws.close()
            return connected, message

        connected, message = yield in_thread(stomp_from_allowed_origin)
        self.assertTrue(connected.startswith("CONNECTED\n"), connected)
        self.assertTrue(message.startswith("MESSAGE\n"), message)
        self.assertTrue(message.endswith('\n\n{"online":1}\x00'), message)

        # A cookie-authenticated change from a foreign Origin is refused too.
        response = yield treq.post(f"{self.server.base_url}/v1/auth/logout",
                                   headers={"Cookie": cookie, "Origin": "https://evil.example"},
                                   pool=self.pool)
        self.assertEqual(response.code, 403)
        yield response.content()


class SQLiteEmployeeTests(EmployeeMixin, TestCase):
    """
    On the embedded SQLite store (medichat-admin writes the same file the server uses).
    """


class PostgreSQLEmployeeTests(EmployeeMixin, TestCase):
    """
    On PostgreSQL.
    """

    def database_url(self) -> Any:
        return create_test_database(self)
