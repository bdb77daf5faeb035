"""
End to end, the access log: behind a trusted proxy, an employee subscribes to a customer's
conversation with stomp.py over WebSocket and answers over HTTP; the customer reads both
accesses at C{GET /v1/me/access-log}, and the real C{medichat-admin audit} shows the
addresses the proxy forwarded.  On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests._pg import create_test_database
from tests._server import LiveServerMixin, in_thread, run_admin
from tests._stompclient import wait_for, ws_connection

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"


class AccessLogMixin(LiveServerMixin):
    """
    The scenario, written once, run on each store.
    """

    database: str | None = None

    def server_args(self) -> Any:
        return ["--trusted-proxy", "127.0.0.1"]

    @inlineCallbacks
    def test_customer_sees_the_nurse(self) -> Any:
        """A subscription and an answer by a nurse reach the customer's log and the audit."""
        customer = self.token(CUSTOMER, "c1", "customer")
        nurse = self.token(NURSE, "Nurse Ann", "employee")
        status, conversation = yield self.http("POST", "/v1/conversation", customer)
        self.assertEqual(status, 201)
        cid = conversation["id"]

        def nurse_subscribes() -> None:
            conn, recorder = ws_connection(
                self.server.http_port,
                header={"Authorization": f"Bearer {nurse}", "X-Forwarded-For": "203.0.113.50"},
            )
            conn.connect(wait=True)
            self.clients.append(conn)
            conn.subscribe(f"/v1/topic/conversation/{cid}", id="c", receipt="c")
            wait_for(recorder.receipts)

        yield in_thread(nurse_subscribes)
        response = yield treq.post(
            f"{self.server.base_url}/v1/conversation/{cid}/message",
            data=json.dumps({"message": "Hello, how can I help?"}).encode(),
            headers={"Authorization": f"Bearer {nurse}", "Content-Type": "application/json",
                     "X-Forwarded-For": "203.0.113.51"},
            pool=self.pool,
        )
        self.assertEqual(response.code, 201)
        yield response.content()

        status, page = yield self.http("GET", "/v1/me/access-log", customer)
        self.assertEqual(status, 200)
        self.assertEqual(
            [(a["employeeName"], a["action"], a["conversationId"]) for a in page["accesses"]],
            [("Nurse Ann", "message", cid), ("Nurse Ann", "subscribe", cid)],
        )
        status, _ = yield self.http("GET", "/v1/me/access-log", nurse)
        self.assertEqual(status, 403)

        printed = yield in_thread(run_admin, self.server.data_dir, "audit", "--customer",
                                  CUSTOMER, database=self.database)
        rows = json.loads(printed)
        self.assertEqual(
            [(r["action"], r["employeeId"], r["address"]) for r in rows],
            [("subscribe", NURSE, "203.0.113.50"), ("message", NURSE, "203.0.113.51")],
        )


class SQLiteAccessLogTests(AccessLogMixin, TestCase):
    """On the embedded SQLite store (medichat-admin reads the file the server writes)."""


class PostgreSQLAccessLogTests(AccessLogMixin, TestCase):
    """On PostgreSQL."""

    @inlineCallbacks
    def server_args(self) -> Any:
        self.database = yield create_test_database(self)
        return ["--trusted-proxy", "127.0.0.1", "--database", self.database]
