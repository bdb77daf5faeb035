"""
End to end: a real STOMP client (stomp.py over WebSocket) loses its connection while
messages are posted, resubscribes with C{x-stream-offset:offset=N+1} and receives exactly
what it missed, then what comes live; on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import queue
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests._pg import create_test_database
from tests._server import LiveServerMixin, in_thread
from tests._stompclient import wait_for, ws_connection

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"


def durable(recorder: Any, count: int) -> list[tuple[int, dict[str, Any]]]:
    """The next C{count} durable events received: (x-stream-offset, JSON), skipping presence."""
    events = []
    while len(events) < count:
        frame = wait_for(recorder.messages)
        body = json.loads(frame.body)
        if "userConnected" in body or "userDisconnected" in body:
            continue
        events.append((int(frame.headers["x-stream-offset"]), body))
    return events


def nothing_more(recorder: Any) -> list[Any]:
    """Durable events that arrive within half a second (there should be none)."""
    extra = []
    try:
        while True:
            frame = recorder.messages.get(timeout=0.5)
            body = frame.body if isinstance(frame.body, str) else frame.body.decode()
            if "userConnected" not in body and "userDisconnected" not in body:
                extra.append(body)
    except queue.Empty:
        return extra


class ResumeMixin(LiveServerMixin):
    """The resume scenario, written once, run on each store."""

    def _subscribed(self, token: str, topic: str, **headers: str) -> Any:
        conn, recorder = ws_connection(self.server.http_port,
                                       header={"Authorization": f"Bearer {token}"})
        conn.connect(wait=True)
        self.clients.append(conn)
        conn.subscribe(topic, id="c", receipt="r", headers=headers)
        assert wait_for(recorder.receipts) == "r"
        return conn, recorder

    @inlineCallbacks
    def post(self, token: str, cid: str, text: str) -> Any:
        code, message = yield self.http("POST", f"/v1/conversation/{cid}/message", token,
                                        {"message": text})
        self.assertEqual(code, 201)  # type: ignore[attr-defined]
        return message

    @inlineCallbacks
    def test_resume_after_disconnect(self) -> Any:
        """After a disconnect, offset=N+1 brings exactly the missed events, then live ones."""
        customer = self.token(CUSTOMER, "c1", "customer")
        nurse = self.token(EMPLOYEE, "nurse", "employee")
        code, conversation = yield self.http("POST", "/v1/conversation", customer)
        cid = conversation["id"]
        topic = f"/v1/topic/conversation/{cid}"

        conn, recorder = yield in_thread(self._subscribed, customer, topic)
        yield self.post(customer, cid, "before")
        [(last_seen, event)] = yield in_thread(durable, recorder, 1)
        self.assertEqual(event["message"]["message"], "before")
        yield in_thread(conn.disconnect)

        missed = ["while away 1", "x" * 4000, "while away 3"]
        for text in missed:
            yield self.post(nurse if text.startswith("x") else customer, cid, text)
        code, _ = yield self.http("POST", f"/v1/conversation/{cid}/read", nurse)
        self.assertEqual(code, 204)  # type: ignore[attr-defined]

        conn, recorder = yield in_thread(
            self._subscribed, customer, topic, **{"x-stream-offset": f"offset={last_seen + 1}"}
        )
        replayed = yield in_thread(durable, recorder, 4)
        self.assertEqual(  # type: ignore[attr-defined]
            [offset for offset, _ in replayed], [last_seen + 1 + i for i in range(4)]
        )
        self.assertEqual(  # type: ignore[attr-defined]
            [e["message"]["message"] for _, e in replayed[:3]], missed
        )
        self.assertEqual(list(replayed[3][1]), ["read"])  # type: ignore[attr-defined]
        yield self.post(customer, cid, "live")
        [(offset, event)] = yield in_thread(durable, recorder, 1)
        self.assertEqual((offset, event["message"]["message"]),  # type: ignore[attr-defined]
                         (last_seen + 5, "live"))
        extra = yield in_thread(nothing_more, recorder)
        self.assertEqual(extra, [])  # type: ignore[attr-defined]

        # The REST recovery of the seed still finds the same messages.
        since = replayed[0][1]["message"]["created"]
        code, detail = yield self.http(
            "GET", f"/v1/conversation/{cid}?query=created=ge={since}", customer
        )
        self.assertEqual(  # type: ignore[attr-defined]
            [m["message"] for m in detail["messages"]], [*missed, "live"]
        )


class SQLiteResumeTests(ResumeMixin, TestCase):
    """
    Resume on the embedded SQLite store.
    """


class PostgreSQLResumeTests(ResumeMixin, TestCase):
    """
    Resume on PostgreSQL.
    """

    @inlineCallbacks
    def server_args(self) -> Any:
        url = yield create_test_database(self)
        return ["--database", url]
