"""
End to end, three real medichat processes (C{twist medichat}) A, B and C on one fresh
PostgreSQL database: a customer subscribed on A, an employee subscribed on B, messages
posted through C's REST API.  Every durable event reaches both subscribers exactly once,
in commit order, with C{x-stream-offset} rising by one; presence is published once for the
cluster; B killed with C{kill -9} is cleaned up within C{--node-ttl}; LISTEN connections
(and then every backend) ended by the server lose nothing committed meanwhile; a 16 KB
message arrives whole; SIGTERM drains; and a resume with C{x-stream-offset:offset=N}
brings exactly what was missed, then live events.

Every wait is bounded; every process is ended by its PID in the test's cleanup.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
import psycopg2
import websocket
from stomp.exception import ConnectFailedException
from twisted.trial.unittest import SynchronousTestCase

from medichat.auth.devsecret import load_or_create_dev_secret
from tests._pg import CONNECT_TIMEOUT, create_test_database_now
from tests._stompclient import disconnect_all, wait_for, ws_connection
from tests.e2e.test_startup import TIMEOUT, _command, _free_port, _read, _start_logged

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
TTL = 2.0
"""C{--node-ttl} of every process: how soon a killed process is noticed."""
SHUTDOWN_TIMEOUT = 8.0
"""C{--shutdown-timeout} of every process."""
WAIT = 10.0
"""Seconds any one expected event may take before the test fails."""
PRESENCE = ("userConnected", "userDisconnected")


class _Process:
    """One C{twist medichat} process on a free loopback port."""

    def __init__(self, workdir: str, data_dir: str, database: str) -> None:
        self.port = _free_port()
        self.log = os.path.join(workdir, f"medichat-{self.port}.log")
        self.process = _start_logged(
            [*_command("twist", workdir), "--data-dir", data_dir, "--database", database,
             "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--node-ttl", str(TTL), "--close-spread", "0.3",
             "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)],
            workdir, self.log,
        )

    def output(self) -> str:
        """What the process has written so far."""
        return _read(self.log)

    def wait_ready(self) -> None:
        """Return once C{/readyz} answers 200; fail with the process's output otherwise."""
        deadline = time.monotonic() + TIMEOUT
        while self.status("/readyz")[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise AssertionError(self.output())
            time.sleep(0.1)

    def status(self, path: str) -> tuple[int, Any]:
        """C{GET path}: (status, JSON body), or (0, None) when nothing answers."""
        try:
            return self.request("GET", path)
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return 0, None

    def request(self, method: str, path: str, token: str | None = None,
                body: Any = None) -> tuple[int, Any]:
        """An HTTP request to C{/api{path}}; errors (4xx, 5xx, refused) raise."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if method == "POST":
            data = json.dumps(body or {}).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api{path}",
                                         method=method, headers=headers, data=data)
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read() or b"null")

    def kill(self) -> None:
        """End the process with SIGKILL, by its PID, if it still runs."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=TIMEOUT)


class ThreeProcessTests(SynchronousTestCase):
    """
    Three processes on one PostgreSQL database: a customer on A, a nurse on B, posts via C.
    """

    def setUp(self) -> None:
        self.database = create_test_database_now(self)
        self.workdir = os.path.abspath(self.mktemp())
        self.data_dir = os.path.join(self.workdir, "data")
        os.makedirs(self.workdir)
        self.clients: list[Any] = []
        self.addCleanup(disconnect_all, self.clients)
        # A first: it makes the development secret and the schema; B and C start together.
        self.a = self.process()
        self.a.wait_ready()
        self.b, self.c = self.process(), self.process()
        self.b.wait_ready()
        self.c.wait_ready()
        secret = load_or_create_dev_secret(self.data_dir)
        self.customer = jwt.encode(
            {"sub": CUSTOMER, "name": "c1", "role": "customer"}, secret, algorithm="HS256"
        )
        self.nurse = jwt.encode(
            {"sub": NURSE, "name": "nurse", "role": "employee"}, secret, algorithm="HS256"
        )
        self.cid = self.c.request("POST", "/v1/conversation", self.customer)[1]["id"]
        self.topic = f"/v1/topic/conversation/{self.cid}"

    def process(self) -> _Process:
        started = _Process(self.workdir, self.data_dir, self.database)
        self.addCleanup(started.kill)
        return started

    def query(self, text: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of C{text} on the test database."""
        connection = psycopg2.connect(self.database, connect_timeout=CONNECT_TIMEOUT)
        try:
            with connection.cursor() as cursor:
                cursor.execute(text, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def subscribe(self, server: _Process, token: str, **headers: str) -> tuple[Any, Any]:
        """A stomp.py WebSocket client on C{server}, subscribed to the conversation."""
        conn, recorder = ws_connection(server.port, header={"Authorization": f"Bearer {token}"})
        try:
            conn.connect(wait=True)
        except ConnectFailedException:
            errors = []
            while not recorder.errors.empty():
                frame = recorder.errors.get()
                errors.append((frame.headers, frame.body))
            raise AssertionError(
                f"no CONNECTED from the process on port {server.port}; ERROR frames: "
                f"{errors}; its output:\n{server.output()[-4000:]}"
            ) from None
        self.clients.append(conn)
        conn.subscribe(self.topic, id="c", receipt="r", headers=headers)
        self.assertEqual(wait_for(recorder.receipts), "r")
        return conn, recorder

    def post(self, server: _Process, text: str, token: str | None = None) -> dict[str, Any]:
        """Post C{text} through C{server}'s REST API; the created message."""
        code, message = server.request("POST", f"/v1/conversation/{self.cid}/message",
                                       token or self.customer, {"message": text})
        self.assertEqual(code, 201)
        return message  # type: ignore[no-any-return]

    def durable(self, recorder: Any, count: int) -> list[tuple[int, dict[str, Any]]]:
        """The next C{count} durable events: (x-stream-offset, JSON), presence set aside."""
        events = []
        deadline = time.monotonic() + WAIT + count * 0.05
        while len(events) < count:
            try:
                frame = recorder.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{len(events)} of {count} durable events arrived: "
                                     f"{events}") from None
            body = json.loads(frame.body)
            if next(iter(body)) in PRESENCE:
                recorder.presence.append(body)
                continue
            events.append((int(frame.headers["x-stream-offset"]), body))
        return events

    def rest(self, recorder: Any, seconds: float) -> list[dict[str, Any]]:
        """Every event that arrives within C{seconds} (presence included)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(json.loads(recorder.messages.get(timeout=left).body))
            except queue.Empty:
                break
        return seen

    def both(self) -> tuple[Any, Any]:
        """
        The customer subscribed on A and the nurse on B, once A's subscriber was told that
        the nurse came (presence events are set aside in C{presence}).
        """
        _, customer = self.subscribe(self.a, self.customer)
        _, nurse = self.subscribe(self.b, self.nurse)
        for recorder in (customer, nurse):
            recorder.presence = []
        came = {"userConnected": {"userId": NURSE}}
        while came not in customer.presence:
            body = json.loads(wait_for(customer.messages).body)
            self.assertIn(next(iter(body)), PRESENCE)
            customer.presence.append(body)
        return customer, nurse

    def stream(self, recorder: Any, texts: list[str]) -> list[tuple[int, dict[str, Any]]]:
        """
        Durable events until the messages C{texts} have all arrived and a second more has
        passed with nothing else: (x-stream-offset, JSON) in the order received.
        """
        events: list[tuple[int, dict[str, Any]]] = []
        while sorted(b["message"]["message"] for _, b in events if "message" in b) != sorted(texts):
            events += self.durable(recorder, 1)
            self.assertLessEqual(len(events), 3 * len(texts) + 10, events)
        events += [
            (int(frame.headers["x-stream-offset"]), json.loads(frame.body))
            for frame in self.frames(recorder, 1.2)
            if next(iter(json.loads(frame.body))) not in PRESENCE
        ]
        return events

    def frames(self, recorder: Any, seconds: float) -> list[Any]:
        """Every frame that arrives within C{seconds}."""
        seen: list[Any] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(recorder.messages.get(timeout=left))
            except queue.Empty:
                break
        return seen

    def outbox(self, first: int) -> list[tuple[int, dict[str, Any]]]:
        """The conversation's committed events from offset C{first} on, in commit order."""
        return [
            (int(offset), json.loads(body)) for offset, body in self.query(
                "SELECT stream_offset, body FROM events WHERE conversation_id = %s"
                " AND stream_offset >= %s ORDER BY stream_offset", self.cid, first)
        ]

    def assert_exactly_committed(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        """C{events} are the committed ones from their first on: once, in order, +1 each."""
        self.assertEqual(events, self.outbox(events[0][0]))
        offsets = [offset for offset, _ in events]
        self.assertEqual(offsets, list(range(offsets[0], offsets[0] + len(offsets))))

    def test_every_event_once_in_order(self) -> None:
        """Posts via C reach A and B once each, in commit order, offsets +1; 16 KB whole."""
        customer, nurse = self.both()
        big = "\U0001F600" * 4000
        texts = [f"m{i}" for i in range(30)] + [big]
        for i, text in enumerate(texts):
            self.post(self.c, text, self.nurse if i % 3 == 0 else self.customer)
        got_customer = self.stream(customer, texts)
        got_nurse = self.stream(nurse, texts)
        self.assert_exactly_committed(got_customer)
        self.assert_exactly_committed(got_nurse)
        messages = [b["message"]["message"] for _, b in got_customer if "message" in b]
        self.assertEqual(messages, texts)
        self.assertEqual(len(messages[-1].encode()), 16000)

    def test_presence_once(self) -> None:
        """userConnected once per user, though the nurse opens a second tab on C."""
        _, customer = self.subscribe(self.a, self.customer)
        _, nurse = self.subscribe(self.b, self.nurse)
        second, _ = self.subscribe(self.c, self.nurse)
        second.disconnect()
        seen = self.rest(customer, 1.5)
        self.assertEqual(seen, [{"userConnected": {"userId": CUSTOMER}},
                                {"userConnected": {"userId": NURSE}}])
        self.assertNotIn({"userDisconnected": {"userId": NURSE}}, self.rest(nurse, 0.1))
        self.assertEqual(self.query("SELECT online FROM presence_online"), [(1,)])

    def test_kill_9_within_ttl(self) -> None:
        """B killed with -9: within the TTL A's subscriber gets one userDisconnected."""
        customer, _ = self.both()
        killed = time.monotonic()
        self.b.kill()
        first = json.loads(wait_for(customer.messages, timeout=TTL * 3).body)
        self.assertLess(time.monotonic() - killed, TTL * 2)
        self.assertEqual(first, {"userDisconnected": {"userId": NURSE}})
        self.assertEqual(self.rest(customer, TTL), [])

    def _terminate(self, only_listening: bool) -> int:
        """End the LISTEN backends (or every other backend) of the database."""
        connection = psycopg2.connect(self.database, connect_timeout=CONNECT_TIMEOUT)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    + (" AND query LIKE 'LISTEN%%'" if only_listening else "")
                )
                return int(cursor.fetchone()[0])
        finally:
            connection.close()

    def _post_through_failover(self, text: str) -> None:
        """Post via C, retrying while its pool reconnects; a failed try committed nothing."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.post(self.c, text)
                return
            except urllib.error.HTTPError as e:
                if e.code < 500 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def test_listen_connections_killed(self) -> None:
        """Ended LISTEN connections, then every backend: nothing committed meanwhile is lost."""
        customer, nurse = self.both()
        self.post(self.c, "before")
        sent = ["before"]
        self.assertEqual(self._terminate(only_listening=True), 3)
        for i in range(5):
            sent.append(f"listen-down {i}")
            self.post(self.c, sent[-1])
        self.assertGreater(self._terminate(only_listening=False), 3)
        for i in range(5):
            sent.append(f"all-down {i}")
            self._post_through_failover(sent[-1])
        for recorder in (customer, nurse):
            events = self.stream(recorder, sent)
            self.assert_exactly_committed(events)
            # A retried POST may have committed twice: then both arrive, in their order.
            messages = [b["message"]["message"] for _, b in events if "message" in b]
            self.assertEqual(sorted(set(messages)), sorted(sent))
        for server in (self.a, self.b, self.c):
            self.assertEqual(server.status("/readyz")[0], 200)

    def arriving(self, server: _Process, path: str) -> socket.socket:
        """A connection whose C{GET path} has begun to arrive: headers not yet ended."""
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        self.addCleanup(connection.close)
        connection.sendall(f"GET /api{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        return connection

    def answer(self, connection: socket.socket) -> tuple[int, Any]:
        """End the request begun on C{connection}; its (status, JSON body)."""
        connection.sendall(b"Connection: close\r\n\r\n")
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, json.loads(response.read())

    def test_sigterm_drains(self) -> None:
        """SIGTERM of B: /readyz 503 at once, /livez 200, close 1001, others told, clean exit."""
        customer, _ = self.both()
        tab = websocket.create_connection(
            f"ws://127.0.0.1:{self.b.port}/api/v1/chat", timeout=WAIT,
            header=[f"Authorization: Bearer {self.nurse}"], subprotocols=["v12.stomp"],
        )
        self.addCleanup(tab.close)
        tab.send("CONNECT\naccept-version:1.2\nhost:127.0.0.1\n\n\x00")
        self.assertTrue(tab.recv().startswith("CONNECTED"))
        # The listener closes at once; requests already arriving get their real answers.
        arriving = {path: self.arriving(self.b, path) for path in ("/readyz", "/livez")}
        time.sleep(0.3)  # B has read those first bytes: they are requests in flight.
        stopped = time.monotonic()
        self.b.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.assertEqual(self.answer(arriving["/readyz"]), (503, {"status": "draining"}))
        self.assertEqual(self.answer(arriving["/livez"])[0], 200)
        self.assertLess(time.monotonic() - stopped, 1.0)
        self.assertEqual(self.b.status("/readyz")[0], 0, "no longer accepting")
        # An ERROR frame first, then the close, with code 1001 ("going away").
        opcode, data = tab.recv_data(control_frame=True)
        self.assertEqual(opcode, websocket.ABNF.OPCODE_TEXT)
        self.assertTrue(data.startswith(b"ERROR\n"), data)
        opcode, data = tab.recv_data(control_frame=True)
        self.assertEqual(opcode, websocket.ABNF.OPCODE_CLOSE)
        self.assertEqual(struct.unpack("!H", data[:2])[0], 1001)
        first = json.loads(wait_for(customer.messages, timeout=TTL / 2).body)
        self.assertEqual(first, {"userDisconnected": {"userId": NURSE}})
        self.assertLess(time.monotonic() - stopped, TTL)
        self.b.process.wait(timeout=SHUTDOWN_TIMEOUT + 2)
        output = self.b.output()
        # Twisted ends a process stopped by a signal with that signal, once it has stopped
        # cleanly (as tests/e2e/test_startup.py checks): the status a supervisor expects.
        self.assertEqual(self.b.process.returncode, -signal.SIGTERM, output)
        self.assertLess(time.monotonic() - stopped, SHUTDOWN_TIMEOUT)
        self.assertNotIn("Traceback", output)
        self.assertEqual(self.rest(customer, 0.5), [])

    def test_resume_on_another_process(self) -> None:
        """Offset=N after a disconnect (posts via C meanwhile): exactly the missed, then live."""
        conn, customer = self.subscribe(self.a, self.customer)
        customer.presence = []
        self.post(self.c, "before")
        [(last, _)] = self.durable(customer, 1)
        conn.disconnect()
        missed = ["away 1", "\U0001F600" * 4000, "away 3"]
        for text in missed:
            self.post(self.c, text, self.nurse)
        resume = {"x-stream-offset": f"offset={last + 1}"}
        _, again = self.subscribe(self.b, self.customer, **resume)
        again.presence = []
        replayed = self.stream(again, missed)
        self.assertEqual(replayed[0][0], last + 1)
        self.post(self.a, "live")
        live = self.stream(again, ["live"])
        self.assert_exactly_committed(replayed + live)
        messages = [b["message"]["message"] for _, b in replayed + live if "message" in b]
        self.assertEqual(messages, [*missed, "live"])
