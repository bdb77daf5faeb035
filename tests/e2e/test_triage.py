"""
End to end: the employees' feed and triage against the real server, with real
STOMP-over-WebSocket clients (stomp.py) and real HTTP, on SQLite and on PostgreSQL; and the
feed across two processes on one PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import stomp.exception
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from medichat.auth.devsecret import load_or_create_dev_secret
from tests._pg import create_test_database, create_test_database_now
from tests._server import LiveServerMixin, in_thread
from tests._stompclient import disconnect_all, wait_for, wait_until, ws_connection
from tests.e2e.test_cluster import _Server

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
FEED = "/v1/topic/conversations"


def _subscribed(port: int, token: str, destination: str, clients: list[Any]) -> Any:
    """A stomp.py WebSocket client subscribed to C{destination} (with a receipt)."""
    conn, recorder = ws_connection(port, header={"Authorization": f"Bearer {token}"})
    conn.connect(wait=True)
    clients.append(conn)
    conn.subscribe(destination, id="s", receipt="r")
    assert wait_for(recorder.receipts) == "r"
    return recorder


def _next(recorder: Any) -> Any:
    """The next MESSAGE's JSON body."""
    return json.loads(wait_for(recorder.messages).body)


def _next_message(recorder: Any) -> Any:
    """The next C{message} event (presence and receipts on the way are passed over)."""
    while "message" not in (event := _next(recorder)):
        pass
    return event["message"]


class TriageFlowMixin(LiveServerMixin):
    """
    A nurse on the dashboard: sees a new conversation on the feed, claims it, answers.
    """

    @inlineCallbacks
    def test_dashboard_flow(self) -> Any:
        """Feed, claim, answer: each step is seen live, in order, by the right people."""
        port = self.server.http_port
        customer_token = self.token(CUSTOMER, "c1", "customer")
        nurse_token = self.token(NURSE, "Nurse Joy", "employee")
        dashboard = yield in_thread(_subscribed, port, nurse_token, FEED, self.clients)

        code, conversation = yield self.http("POST", "/v1/conversation", customer_token)
        self.assertEqual(code, 201)
        cid = conversation["id"]
        created = yield in_thread(_next, dashboard)
        self.assertEqual(
            created,
            {"conversationCreated": {
                "id": cid, "created": conversation["created"], "customerId": CUSTOMER,
                "customerName": "c1", "status": "open", "assigneeId": None,
                "assigneeName": None, "lastActivity": conversation["created"],
            }},
        )
        customer = yield in_thread(
            _subscribed, port, customer_token, f"/v1/topic/conversation/{cid}", self.clients
        )
        code, _ = yield self.http("POST", f"/v1/conversation/{cid}/message", customer_token,
                                  {"message": "I have a question"})
        self.assertEqual(code, 201)
        self.assertEqual((yield in_thread(_next_message, customer))["message"],
                         "I have a question")
        update = yield in_thread(_next, dashboard)
        self.assertEqual(update["conversationUpdated"]["id"], cid)

        code, claimed = yield self.http("POST", f"/v1/conversation/{cid}/claim", nurse_token)
        self.assertEqual((code, claimed["assigneeId"]), (200, NURSE))
        update = yield in_thread(_next, dashboard)
        self.assertEqual(
            (update["conversationUpdated"]["assigneeId"],
             update["conversationUpdated"]["assigneeName"]),
            (NURSE, "Nurse Joy"),
        )
        code, problem = yield self.http(
            "POST", f"/v1/conversation/{cid}/claim", self.token("nurse-2", "Olga", "employee")
        )
        self.assertEqual((code, problem["assigneeId"]), (409, NURSE))

        code, answer = yield self.http("POST", f"/v1/conversation/{cid}/message", nurse_token,
                                       {"message": "Happy to help"})
        self.assertEqual(code, 201)
        self.assertEqual((yield in_thread(_next_message, customer)), answer)
        update = yield in_thread(_next, dashboard)
        self.assertEqual(update["conversationUpdated"]["lastActivity"], answer["created"])

        code, page = yield self.http("GET", "/v1/conversation?order=-lastActivity&"
                                            "query=assigneeId==me", nurse_token)
        self.assertEqual(code, 200)
        [listed] = page["conversations"]
        self.assertEqual((listed["id"], listed["unread"], listed["lastMessage"]),
                         (cid, 1, answer))

        # The customer sees who accessed their data, newest first (NEN 7513): the claim
        # (and the other nurse's refused one), the answer, the list; never a text.
        code, log = yield self.http("GET", "/v1/me/access-log", customer_token)
        self.assertEqual(code, 200)
        seen = [(a["employeeName"], a["action"], a["conversationId"]) for a in log["accesses"]]
        self.assertEqual(
            seen,
            [("Nurse Joy", "list", cid), ("Nurse Joy", "message", cid),
             ("Olga", "claim", cid), ("Nurse Joy", "claim", cid)],
        )
        self.assertNotIn("Happy to help", json.dumps(log))
        code, _ = yield self.http("GET", "/v1/me/access-log", nurse_token)
        self.assertEqual(code, 403)

    def _customer_refused(self, token: str) -> str:
        conn, recorder = ws_connection(self.server.http_port,
                                       header={"Authorization": f"Bearer {token}"})
        conn.connect(wait=True)
        self.clients.append(conn)
        try:
            conn.subscribe(FEED, id="s")
        except stomp.exception.StompException:
            pass
        error = wait_for(recorder.errors)
        wait_until(lambda: recorder.disconnected)
        return str(error.headers.get("message"))

    @inlineCallbacks
    def test_customer_refused(self) -> Any:
        """A customer subscribing to the feed gets an ERROR and is disconnected."""
        message = yield in_thread(self._customer_refused, self.token(CUSTOMER, "c1", "customer"))
        self.assertEqual(message, "forbidden")


class SQLiteTriageFlowTests(TriageFlowMixin, TestCase):
    """The dashboard flow on the embedded SQLite store."""


class PostgreSQLTriageFlowTests(TriageFlowMixin, TestCase):
    """The dashboard flow on PostgreSQL."""

    @inlineCallbacks
    def server_args(self) -> Any:
        url = yield create_test_database(self)
        return ["--database", url]


class ReassignTests(LiveServerMixin, TestCase):
    """C{--allow-reassign} on the command line lets an employee take a conversation over."""

    def server_args(self) -> Any:
        return ["--allow-reassign"]

    @inlineCallbacks
    def test_take_over(self) -> Any:
        """A second employee's claim wins, and release is then theirs alone."""
        cid = (yield self.http("POST", "/v1/conversation",
                               self.token(CUSTOMER, "c1", "customer")))[1]["id"]
        first = self.token(NURSE, "Nurse Joy", "employee")
        second = self.token("nurse-2", "Olga", "employee")
        code, _ = yield self.http("POST", f"/v1/conversation/{cid}/claim", first)
        self.assertEqual(code, 200)
        code, taken = yield self.http("POST", f"/v1/conversation/{cid}/claim", second)
        self.assertEqual((code, taken["assigneeId"]), (200, "nurse-2"))
        code, problem = yield self.http("POST", f"/v1/conversation/{cid}/release", first)
        self.assertEqual((code, problem["assigneeName"]), (409, "Olga"))


class ClusterFeedTests(SynchronousTestCase):
    """
    Two processes on one PostgreSQL database: the feed crosses between them.
    """

    def setUp(self) -> None:
        database = create_test_database_now(self)
        workdir = os.path.abspath(self.mktemp())
        data_dir = self.data_dir = os.path.join(workdir, "data")
        os.makedirs(workdir)
        self.clients: list[Any] = []
        self.addCleanup(disconnect_all, self.clients)
        self.a = _Server(workdir, data_dir, database)
        self.addCleanup(self.a.kill)
        self.b = _Server(workdir, data_dir, database)
        self.addCleanup(self.b.kill)
        secret = load_or_create_dev_secret(data_dir)
        self.customer = jwt.encode({"sub": CUSTOMER, "name": "c1", "role": "customer"}, secret,
                                   algorithm="HS256")
        self.nurse = jwt.encode({"sub": NURSE, "name": "Nurse Joy", "role": "employee"},
                                secret, algorithm="HS256")

    def test_feed_across_processes(self) -> None:
        """A dashboard on A sees, in commit order, what is created and claimed on B."""
        dashboard = _subscribed(self.a.port, self.nurse, FEED, self.clients)
        cid = self.b.request("POST", "/v1/conversation", self.customer)["id"]
        self.b.request("POST", f"/v1/conversation/{cid}/claim", self.nurse)
        self.b.request("POST", f"/v1/conversation/{cid}/resolve", self.nurse)
        events = [_next(dashboard) for _ in range(3)]
        self.assertEqual(
            [(next(iter(e)), e[next(iter(e))]["id"]) for e in events],
            [("conversationCreated", cid), ("conversationUpdated", cid),
             ("conversationUpdated", cid)],
        )
        self.assertEqual(events[1]["conversationUpdated"]["assigneeId"], NURSE)
        self.assertEqual(events[2]["conversationUpdated"]["status"], "resolved")

    def test_concurrent_claims_across_processes(self) -> None:
        """Twelve employees claim at once through both processes: one 200, eleven 409."""
        cid = self.a.request("POST", "/v1/conversation", self.customer)["id"]
        secret = load_or_create_dev_secret(self.data_dir)
        nurses = [
            jwt.encode({"sub": f"nurse-{i}", "name": f"Nurse {i}", "role": "employee"}, secret,
                       algorithm="HS256")
            for i in range(12)
        ]

        def claim(i: int) -> tuple[int, Any]:
            server = self.a if i % 2 else self.b
            try:
                return 200, server.request("POST", f"/v1/conversation/{cid}/claim", nurses[i])
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        with ThreadPoolExecutor(max_workers=12) as pool:
            outcomes = list(pool.map(claim, range(12)))
        won = [body for code, body in outcomes if code == 200]
        lost = [body for code, body in outcomes if code == 409]
        self.assertEqual((len(won), len(lost)), (1, 11))
        self.assertEqual({body["assigneeId"] for body in lost}, {won[0]["assigneeId"]})
