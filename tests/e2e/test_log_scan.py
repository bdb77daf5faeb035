"""
End to end, what the logs keep: a real server, a customer and an employee doing what they
do (logins good and bad, messages, errors, bad tokens, a foreign origin, a STOMP flood),
and then every line it logged, as JSON and as text, is scanned for the tokens, cookies,
passwords and message texts that went by.  None may appear; every JSON line must parse on
its own; the access log names users by id and role, and the security events are there.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEventAsClassicLogText, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from medichat.app.logs import json_line
from tests._server import in_thread, run_admin, start_server
from tests._stompclient import disconnect_all, wait_for, ws_connection

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
EMAIL = "nurse@example.org"
PASSWORD = "Pass-Word-Never-Logged-31"
WRONG_PASSWORD = "Wrong-Pass-Never-Logged-77"
TEXT = "Recognisable-Text-Zq81x"
BAD_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.Bad-Signature-Never-Logged"


class LogScanTests(TestCase):
    """
    One full run, then the scan.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.lines: list[str] = []
        self.texts: list[str] = []

        def observer(event: Any) -> None:
            # As the JSON and text observers write them, when they are emitted.
            self.lines.append(json_line(dict(event)))
            self.texts.append(formatEventAsClassicLogText(event) or "")

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.server = yield start_server(self, "--send-rate", "1",
                                         "--allowed-origin", "https://dashboard.example")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.clients: list[Any] = []
        self.addCleanup(in_thread, disconnect_all, self.clients)
        yield in_thread(run_admin, self.server.data_dir, "add-employee", EMAIL,
                        "--name", "Nurse Ann", stdin=PASSWORD + "\n")

    @inlineCallbacks
    def call(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        all_headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        response = yield treq.request(method, self.server.base_url + path, data=data,
                                      headers=all_headers, pool=self.pool)
        yield response.content()
        return response

    @inlineCallbacks
    def test_no_secret_in_logs(self) -> Any:
        """No token, cookie, password or message text is logged; JSON lines parse."""
        token = jwt.encode({"sub": CUSTOMER, "name": "c1"}, self.server.secret,
                           algorithm="HS256")
        bearer = {"Authorization": f"Bearer {token}"}

        # Employee: a failed login, a good one.
        response = yield self.call("POST", "/v1/auth/login",
                                   body={"email": EMAIL, "password": WRONG_PASSWORD})
        self.assertEqual(response.code, 401)
        response = yield self.call("POST", "/v1/auth/login",
                                   body={"email": EMAIL, "password": PASSWORD})
        self.assertEqual(response.code, 200)
        cookie = response.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        cookie_value = cookie.partition("=")[2]

        # Customer: a conversation, a message, and errors around it.
        response = yield treq.post(self.server.base_url + "/v1/conversation", headers=bearer,
                                   pool=self.pool)
        cid = (yield response.json())["id"]
        path = f"/v1/conversation/{cid}/message"
        response = yield self.call("POST", path, body={"message": TEXT}, headers=bearer)
        self.assertEqual(response.code, 201)
        response = yield self.call("POST", path, body={"message": TEXT * 400}, headers=bearer)
        self.assertEqual(response.code, 400)
        response = yield self.call("POST", path, raw=b'{"message": "' + TEXT.encode(),
                                   headers=bearer)
        self.assertEqual(response.code, 400)
        response = yield self.call("POST", path, body={"message": [TEXT]}, headers=bearer)
        self.assertEqual(response.code, 400)
        response = yield self.call("GET", f"/v1/conversation/{cid}", headers=bearer)
        self.assertEqual(response.code, 200)

        # Bad and misplaced tokens.
        response = yield self.call("GET", "/v1/me",
                                   headers={"Authorization": f"Bearer {BAD_TOKEN}"})
        self.assertEqual(response.code, 401)
        response = yield self.call("GET", f"/v1/me?access_token={token}&password={PASSWORD}")
        self.assertEqual(response.code, 401)

        # The employee: reads and answers with the cookie; a foreign origin is refused.
        employee = {"Cookie": cookie}
        response = yield self.call("GET", f"/v1/conversation/{cid}", headers=employee)
        self.assertEqual(response.code, 200)
        response = yield self.call("POST", path, body={"message": TEXT}, headers=employee)
        self.assertEqual(response.code, 201)
        response = yield self.call("POST", f"/v1/conversation/{cid}/read",
                                   headers={**employee, "Origin": "https://evil.example"})
        self.assertEqual(response.code, 403)

        # STOMP: a bad passcode, a SEND with the text to a bad destination, a flood.
        def stomp_run() -> None:
            conn, recorder = ws_connection(self.server.http_port)
            self.clients.append(conn)
            conn.connect(passcode=BAD_TOKEN, wait=False)
            assert "message" in wait_for(recorder.errors).headers
            conn, recorder = ws_connection(self.server.http_port)
            self.clients.append(conn)
            conn.connect(passcode=token, wait=True)
            conn.send(f"/v1/topic/conversation/{cid}", TEXT)
            wait_for(recorder.errors)
            conn, recorder = ws_connection(self.server.http_port,
                                           header={"Authorization": f"Bearer {token}"})
            self.clients.append(conn)
            conn.connect(wait=True)
            for _ in range(30):
                conn.send(f"/v1/app/conversation/{cid}/typing/start", "")
            assert wait_for(recorder.errors).headers["message"] == "rate limit exceeded"

        yield in_thread(stomp_run)
        response = yield self.call("POST", "/v1/auth/logout", headers=employee)
        self.assertEqual(response.code, 204)

        # The scan.
        secrets = {
            "customer token": token,
            "token signature": token.rsplit(".", 1)[1],
            "bad token": BAD_TOKEN,
            "session cookie": cookie_value,
            "password": PASSWORD,
            "wrong password": WRONG_PASSWORD,
            "message text": TEXT,
        }
        for kind, value in secrets.items():
            for line in self.lines + self.texts:
                self.assertNotIn(value, line, f"a {kind} was logged: {line[:300]}")

        events = []
        for line in self.lines:
            self.assertEqual(line.count("\n"), 1)
            self.assertTrue(line.endswith("\n"))
            events.append(json.loads(line))

        access = [e for e in events if e["log_namespace"] == "medichat.http.access"]
        self.assertIn((f"/api/v1/conversation/{cid}/message", 201, CUSTOMER, "customer"),
                      [(e["path"], e["status"], e["user_id"], e["user_role"]) for e in access])
        self.assertIn(("employee", 201), [(e["user_role"], e["status"]) for e in access])
        self.assertIn(("/api/v1/chat", 101), [(e["path"], e["status"]) for e in access])
        for event in events:
            self.assertIn("log_level", event)
            self.assertIn("log_namespace", event)

        def one(text: str) -> dict[str, Any]:
            found = [e for e in events if text in e.get("log_format", "")]
            self.assertTrue(found, text)
            return found[0]

        self.assertEqual(one("login failed for")["log_level"]["name"], "info")
        self.assertIn("request_id", one("login failed for"))
        self.assertIn("request_id", one("not allowed"))
        self.assertEqual(one("revoked ({reason})")["reason"], "logout")
        abuse = [e for e in events if e.get("error") == "rate limit exceeded"]
        self.assertTrue(abuse)
        self.assertIn(abuse[0]["log_level"]["name"], ("info", "warn"))
        self.assertIn("session", abuse[0])


class AccessLogOffTests(TestCase):
    """
    C{--access-log off} on a real server.
    """

    timeout = 60

    @inlineCallbacks
    def test_off(self) -> Any:
        """No access line is logged; requests still get their ids."""
        events: list[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = yield start_server(self, "--access-log", "off")
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.get(server.base_url + "/livez", pool=pool)
        yield response.content()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("x-request-id"))
        self.assertEqual(
            [e for e in events if e.get("log_namespace") == "medichat.http.access"], []
        )
