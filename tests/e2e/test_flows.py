"""
End to end: the seed's customer flow (steps 1-7) and employee flow (steps 1-6), exactly as
written, against the real server, with real STOMP-over-WebSocket clients (stomp.py) and
real HTTP (treq), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from medichat.model import parse_time
from tests._pg import create_test_database
from tests._server import LiveServerMixin, in_thread
from tests._stompclient import wait_for, ws_connection

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
OTHER_CUSTOMER = "7f1f4b1e-98a3-4d0c-9a43-3f4f5d2f6a10"


class FlowMixin(LiveServerMixin):
    """
    The seed's flows, written once, run on each store.
    """

    def _connect(self, token: str) -> Any:
        # Seed step 1: "authentication has to be done in the headers".
        conn, recorder = ws_connection(self.server.http_port,
                                       header={"Authorization": f"Bearer {token}"})
        conn.connect(wait=True)
        self.clients.append(conn)
        return conn, recorder

    def _subscribe(self, conn: Any, recorder: Any, destination: str, sub_id: str) -> None:
        conn.subscribe(destination, id=sub_id, receipt=f"r-{sub_id}")
        assert wait_for(recorder.receipts) == f"r-{sub_id}"

    def event(self, recorder: Any) -> Any:
        """The next conversation event's JSON."""
        return in_thread(lambda: json.loads(wait_for(recorder.messages).body))

    @inlineCallbacks
    def test_seed_flows(self) -> Any:
        """The customer and employee flows of the seed, step by step, with exact JSON."""
        customer_token = self.token(CUSTOMER, "c1", "customer")
        employee_token = self.token(EMPLOYEE, "nurse", "employee")

        # Customer 1: connect. Employee 1: connect.
        customer, c_events = yield in_thread(self._connect, customer_token)
        employee, e_events = yield in_thread(self._connect, employee_token)

        # Customer 2: create a conversation; an id comes back.
        code, conversation = yield self.http("POST", "/v1/conversation", customer_token)
        self.assertEqual(code, 201)
        cid = conversation["id"]
        self.assertEqual(conversation["customerId"], CUSTOMER)
        self.assertEqual(conversation["customerName"], "c1")
        self.assertEqual((conversation["messages"], conversation["read"],
                          conversation["received"]), ([], [], []))
        topic = f"/v1/topic/conversation/{cid}"

        # Customer 3 and employee 2: subscribe; each first subscription is announced.
        yield in_thread(self._subscribe, customer, c_events, topic, "c")
        self.assertEqual((yield self.event(c_events)), {"userConnected": {"userId": CUSTOMER}})
        yield in_thread(self._subscribe, employee, e_events, topic, "e")
        for events in (c_events, e_events):
            self.assertEqual((yield self.event(events)),
                             {"userConnected": {"userId": EMPLOYEE}})

        # Customer 4: send a message; both participants get the message event, the author
        # included, then the employee (subscribed) is marked received automatically.
        code, message = yield self.http("POST", f"/v1/conversation/{cid}/message",
                                        customer_token, {"message": "Hello"})
        self.assertEqual(code, 201)
        self.assertEqual(list(message), ["userId", "userName", "userRole", "id", "created",
                                         "message"])
        self.assertEqual((message["userId"], message["userName"], message["userRole"],
                          message["message"]), (CUSTOMER, "c1", "customer", "Hello"))
        for events in (c_events, e_events):
            self.assertEqual((yield self.event(events)), {"message": message})
            received = yield self.event(events)
            self.assertEqual(list(received), ["received"])
            self.assertEqual(received["received"]["userId"], EMPLOYEE)
            parse_time(received["received"]["receivedAt"])

        # Employee 3: answers.
        code, answer = yield self.http("POST", f"/v1/conversation/{cid}/message",
                                       employee_token, {"message": "How can I help?"})
        self.assertEqual(code, 201)
        self.assertEqual(answer["userRole"], "employee")
        for events in (c_events, e_events):
            self.assertEqual((yield self.event(events)), {"message": answer})
            self.assertEqual(((yield self.event(events))["received"]["userId"]), CUSTOMER)

        # Customer 5 and employee 5: mark read.
        code, _ = yield self.http("POST", f"/v1/conversation/{cid}/read", customer_token)
        self.assertIn(code, (200, 204))
        for events in (c_events, e_events):
            read = yield self.event(events)
            self.assertEqual(list(read), ["read"])
            self.assertEqual(list(read["read"]), ["userId", "readAt"])
            self.assertEqual(read["read"]["userId"], CUSTOMER)

        # Typing, both ways.
        def typing(what: str) -> None:
            customer.send(f"/v1/app/conversation/{cid}/typing/{what}", "")

        yield in_thread(typing, "start")
        for events in (c_events, e_events):
            self.assertEqual((yield self.event(events)), {"startTyping": {"userId": CUSTOMER}})
        yield in_thread(typing, "stop")
        for events in (c_events, e_events):
            self.assertEqual((yield self.event(events)), {"stopTyping": {"userId": CUSTOMER}})

        # Customer 7 and employee 6: the seed's URL as written (unencoded = and ;, trailing
        # slash), with the bounds around the messages sent.
        first = message["created"]
        url = (f"/v1/conversation/{cid}/?order=created&query=created=le=2999-01-01T00:00:00Z;"
               f"created=ge={first}")
        for token in (customer_token, employee_token):
            code, state = yield self.http("GET", url, token)
            self.assertEqual(code, 200)
            self.assertEqual(state["messages"], [message, answer])
            self.assertEqual(state["id"], cid)
        code, state = yield self.http(
            "GET", f"/v1/conversation/{cid}/?order=created&query=created=gt={first}",
            customer_token)
        self.assertEqual(state["messages"], [answer])

        # Customer 6: received by hand (as after a push notification); the GETs above
        # already marked it received for both, so no new event unless it moved forward.
        code, _ = yield self.http("POST", f"/v1/conversation/{cid}/received", customer_token)
        self.assertIn(code, (200, 204))

        # The employee goes away: the customer is told; no stopTyping is sent.
        def leave() -> None:
            employee.disconnect()

        yield in_thread(leave)
        while True:
            event = yield self.event(c_events)
            if "received" in event:
                continue  # the GETs and POST above marked received
            self.assertEqual(event, {"userDisconnected": {"userId": EMPLOYEE}})
            break

    @inlineCallbacks
    def test_other_customer_refused(self) -> Any:
        """Another customer gets 404 over REST and ERROR over STOMP."""
        owner = self.token(CUSTOMER, "c1", "customer")
        intruder = self.token(OTHER_CUSTOMER, "c2", "customer")
        code, conversation = yield self.http("POST", "/v1/conversation", owner)
        cid = conversation["id"]
        code, problem = yield self.http("GET", f"/v1/conversation/{cid}", intruder)
        self.assertEqual(code, 404)
        self.assertEqual(problem["status"], 404)
        code, _ = yield self.http("POST", f"/v1/conversation/{cid}/message", intruder,
                                  {"message": "hi"})
        self.assertEqual(code, 404)

        def subscribe() -> Any:
            conn, recorder = self._connect(intruder)
            conn.subscribe(f"/v1/topic/conversation/{cid}", id="x")
            return wait_for(recorder.errors).headers.get("message")

        message = yield in_thread(subscribe)
        self.assertEqual(message, "not found")

        def typing() -> Any:
            conn, recorder = self._connect(intruder)
            conn.send(f"/v1/app/conversation/{cid}/typing/start", "")
            return wait_for(recorder.errors).headers.get("message")

        message = yield in_thread(typing)
        self.assertEqual(message, "not found")


    @inlineCallbacks
    def test_oversized_body(self) -> Any:
        """A 1 MiB body is refused with 413 over real HTTP, and the server carries on."""
        token = self.token(CUSTOMER, "c1", "customer")
        code, conversation = yield self.http("POST", "/v1/conversation", token)
        response = yield treq.post(
            f"{self.server.base_url}/v1/conversation/{conversation['id']}/message",
            data=b'{"message": "' + b"x" * (1 << 20) + b'"}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            pool=self.pool,
        )
        self.assertEqual(response.code, 413)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/problem+json"])
        yield response.content()
        code, _ = yield self.http("POST", f"/v1/conversation/{conversation['id']}/message",
                                  token, {"message": "still here"})
        self.assertEqual(code, 201)

    @inlineCallbacks
    def test_answers_have_lengths(self) -> Any:
        """
        On one kept-alive connection, a message POST (served without Klein), a coroutine
        route's answer and a problem each say their length and come unchunked.
        """
        token = self.token(CUSTOMER, "c1", "customer")
        code, conversation = yield self.http("POST", "/v1/conversation", token)
        path = f"/api/v1/conversation/{conversation['id']}"
        body = b'{"message": "length"}'
        head = (f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n").encode()
        requests = (
            f"POST {path}/message HTTP/1.1\r\n".encode() + head
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
            + f"GET {path} HTTP/1.1\r\n".encode() + head + b"\r\n"
            + b"GET /api/v1/conversation/nothing-here HTTP/1.1\r\n" + head
            + b"Connection: close\r\n\r\n"
        )
        received = yield in_thread(_exchange, self.server.http_port, requests)
        answers = []
        while received:
            status_and_headers, _, rest = received.partition(b"\r\n\r\n")
            lines = status_and_headers.split(b"\r\n")
            headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
            self.assertNotIn(b"transfer-encoding", headers)
            length = int(headers[b"content-length"])
            answers.append((int(lines[0].split(b" ")[1]), json.loads(rest[:length])))
            received = rest[length:]
        self.assertEqual([code for code, _ in answers], [201, 200, 404])
        self.assertEqual(answers[0][1]["message"], "length")
        self.assertEqual(answers[1][1]["id"], conversation["id"])


def _exchange(port: int, requests: bytes) -> bytes:
    """Send C{requests} on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(requests)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class SQLiteFlowTests(FlowMixin, TestCase):
    """
    The flows on the embedded SQLite store.
    """


class PostgreSQLFlowTests(FlowMixin, TestCase):
    """
    The flows on PostgreSQL.
    """

    @inlineCallbacks
    def server_args(self) -> Any:
        url = yield create_test_database(self)
        return ["--database", url]
