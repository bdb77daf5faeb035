"""
Integration tests of L{medichat.store.broadcast.PostgreSQLBroadcast} on a real PostgreSQL
database, with the real reactor: processes (here, broadcasts) exchange messages, big
turns are split and oversized messages refused, and a listening connection that the
server ends is replaced, listening again, with the reconnected callback told.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import psycopg2
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from medichat.pubsub.cluster import ClusterHub
from medichat.pubsub.hub import InProcessHub
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC
from medichat.store.broadcast import MAX_PAYLOAD, PostgreSQLBroadcast
from tests._pg import create_test_database
from tests._server import in_thread, start_server
from tests._stompclient import disconnect_all, wait_for, ws_connection
from tests.e2e.test_flows import CUSTOMER, EMPLOYEE
from tests.pubsub.test_hub import Keeper

WAIT = 10.0
"""Seconds any one expected thing may take before the test fails."""


class Inbox:
    """What one broadcast received, as C{(node, message)}, and how often it (re)connected."""

    def __init__(self, broadcast: PostgreSQLBroadcast) -> None:
        self.received: list[tuple[str, Any]] = []
        self.connects = 0
        broadcast.set_receiver(lambda node, message: self.received.append((node, message)))
        broadcast.set_reconnected(self._connected)

    def _connected(self) -> None:
        self.connects += 1


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (polling, bounded by L{WAIT}) until C{condition()} holds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


def _terminate(url: str, only_listening: bool = True) -> int:
    """End every other backend of the database (or only those LISTENing); return how many."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                + (" AND query LIKE 'LISTEN%%'" if only_listening else "")
            )
            (count,) = cursor.fetchone()
            return int(count)
    finally:
        connection.close()


class BroadcastTests(TestCase):
    """
    Two broadcasts on one database act as two processes of a cluster.
    """

    timeout = 60

    async def _broadcast(self, url: str, node_id: str, **kwargs: Any) -> PostgreSQLBroadcast:
        broadcast = PostgreSQLBroadcast(url, reactor, node_id=node_id, **kwargs)
        self.addCleanup(broadcast.stop)
        return broadcast

    def test_exchange(self) -> Deferred[None]:
        """Each message reaches every process (the sender too), in order, tagged with its node."""

        async def run() -> None:
            url = await create_test_database(self)
            a = await self._broadcast(url, "a")
            b = await self._broadcast(url, "b")
            inbox_a, inbox_b = Inbox(a), Inbox(b)
            await b.start()
            # Sent in the turn a starts, so before its sending connection is open.
            starting = a.start()
            self.assertTrue(a.send("early"))
            await starting
            self.assertTrue(a.connected and b.connected)
            self.assertEqual((inbox_a.connects, inbox_b.connects), (1, 1))
            await until(lambda: len(inbox_b.received) == 1, "the early message")
            for i in range(5):
                self.assertTrue(a.send({"n": i, "text": "é"}))
            self.assertTrue(b.send("from b"))
            await until(lambda: len(inbox_b.received) == 7, "seven messages at b")
            # a may or may not have been listening already when its early message left.
            await until(
                lambda: len([m for _, m in inbox_a.received if m != "early"]) == 6,
                "six messages at a",
            )
            if ("a", "early") in inbox_a.received:
                inbox_a.received.remove(("a", "early"))
            from_a = [(n, m) for n, m in inbox_b.received if n == "a"]
            expected = [("a", {"n": i, "text": "é"}) for i in range(5)]
            self.assertEqual(from_a, [("a", "early"), *expected])
            inbox_b.received.remove(("a", "early"))
            self.assertIn(("b", "from b"), inbox_a.received)
            self.assertEqual(sorted(inbox_a.received, key=repr), sorted(inbox_b.received, key=repr))

        return Deferred.fromCoroutine(run())

    def test_split_and_refuse(self) -> Deferred[None]:
        """A turn over the payload limit is split and arrives whole; an oversized one is refused."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        async def run() -> None:
            url = await create_test_database(self)
            a = await self._broadcast(url, "a")
            b = await self._broadcast(url, "b")
            inbox = Inbox(b)
            await a.start()
            await b.start()
            self.assertFalse(a.send("x" * MAX_PAYLOAD))
            errors = [e for e in logged if e["log_level"] == LogLevel.error]
            self.assertEqual(len(errors), 1)
            self.assertEqual(errors[0]["size"], MAX_PAYLOAD + 2)
            connection = a._sender._connection
            assert connection is not None
            sent: list[str] = []
            execute = connection.execute

            def counted(cursor: Any, sql: str, params: Any) -> Deferred[None]:
                sent.append(sql)
                return execute(cursor, sql, params)

            connection.execute = counted  # type: ignore[method-assign]
            chunks = [f"{i:04d}" + "ü" * 1000 for i in range(40)]  # 2 KB each, 80 KB in all
            for chunk in chunks:
                self.assertTrue(a.send(chunk))
            await until(lambda: len(inbox.received) == len(chunks), "every chunk")
            self.assertEqual([m for _, m in inbox.received], chunks)
            # The turn's several payloads, in one transaction, in one round trip.
            self.assertEqual(len(sent), 1)
            self.assertTrue(sent[0].startswith("BEGIN; SELECT pg_notify("))
            self.assertTrue(sent[0].endswith("; COMMIT"))
            self.assertGreater(sent[0].count("pg_notify"), 1)

        return Deferred.fromCoroutine(run())

    def test_reconnect(self) -> Deferred[None]:
        """An ended LISTEN backend is replaced: down meanwhile, then told; messages flow again."""

        async def run() -> None:
            url = await create_test_database(self)
            a = await self._broadcast(url, "a")
            b = await self._broadcast(url, "b", keepalive=60.0)
            inbox = Inbox(b)
            await a.start()
            await b.start()
            listener = b._listener
            assert listener is not None
            parameters = listener.get_dsn_parameters()
            self.assertEqual(
                [parameters.get(k) for k in ("keepalives", "keepalives_idle", "keepalives_count")],
                ["1", "60", "3"],
            )
            a.send("before")
            await until(lambda: ("a", "before") in inbox.received, "the first message")
            self.assertEqual((a.reconnects, b.reconnects), (0, 0))
            # What b says of itself at the moment it reports the loss.
            seen: list[bool] = []
            nodes = {"a": a, "b": b}

            def observe(event: dict[str, Any]) -> None:
                if "LISTEN connection of node" in event.get("log_format", ""):
                    seen.append(nodes[event["node"]].connected)

            globalLogPublisher.addObserver(observe)
            self.addCleanup(globalLogPublisher.removeObserver, observe)
            self.assertEqual(_terminate(url), 2)
            await until(lambda: len(seen) == 2, "both to notice")
            self.assertEqual(seen, [False, False])
            await until(lambda: b.connected and a.connected, "both to listen again")
            self.assertEqual(inbox.connects, 2)
            self.assertEqual((a.reconnects, b.reconnects), (1, 1))
            a.send("after")
            await until(lambda: ("a", "after") in inbox.received, "a message after")

        return Deferred.fromCoroutine(run())

    def test_failover(self) -> Deferred[None]:
        """When every connection is ended at once, as by a fail-over, messages flow again."""

        async def run() -> None:
            url = await create_test_database(self)
            a = await self._broadcast(url, "a")
            b = await self._broadcast(url, "b")
            inbox_a, inbox = Inbox(a), Inbox(b)
            await a.start()
            await b.start()
            a.send("before")
            await until(lambda: ("a", "before") in inbox.received, "the first message")
            # Two listening and two sending connections.
            self.assertEqual(_terminate(url, only_listening=False), 4)
            await until(lambda: (inbox_a.connects, inbox.connects) == (2, 2), "new LISTENs")
            self.assertTrue(a.connected and b.connected)
            a.send("after")
            await until(lambda: ("a", "after") in inbox.received, "a message after")

        return Deferred.fromCoroutine(run())

    def test_probe_finds_silent_loss(self) -> Deferred[None]:
        """A LISTEN connection that answers no probe in time is dropped and replaced."""

        async def run() -> None:
            url = await create_test_database(self)
            b = await self._broadcast(url, "b", keepalive=0.2, probe_timeout=0.5)
            inbox = Inbox(b)
            await b.start()
            listener = b._listener
            assert listener is not None
            # The socket stays open but nothing it receives is read: a half-open socket.
            reactor.removeReader(listener)
            original = listener.runQuery
            listener.runQuery = lambda *args: Deferred()  # type: ignore[method-assign]
            self.addCleanup(setattr, listener, "runQuery", original)
            await until(lambda: not b.connected, "the probe to fail")
            await until(lambda: b.connected, "a new connection")
            self.assertIsNot(b._listener, listener)
            self.assertEqual(inbox.connects, 2)

        return Deferred.fromCoroutine(run())

    def test_send_timeout(self) -> Deferred[None]:
        """A NOTIFY that gets no answer in time is given up and logged; later turns still go out."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        async def run() -> None:
            url = await create_test_database(self)
            a = await self._broadcast(url, "a", send_timeout=0.5)
            b = await self._broadcast(url, "b")
            inbox = Inbox(b)
            await a.start()
            await b.start()
            sender = a._sender
            original = sender.run_script
            hung: list[Deferred[None]] = []

            def hang(*args: Any) -> Deferred[None]:
                sender.run_script = original  # type: ignore[method-assign]
                hung.append(Deferred())
                return hung[0]

            sender.run_script = hang  # type: ignore[method-assign]
            a.send("lost")
            await until(lambda: a._in_flight is not None, "the turn to leave")
            await until(lambda: a._in_flight is None, "the turn to be given up")
            warnings = [e for e in logged if "cannot NOTIFY" in e["log_format"]]
            self.assertEqual(len(warnings), 1)
            a.send("after")
            await until(lambda: ("a", "after") in inbox.received, "a later message")
            self.assertNotIn(("a", "lost"), inbox.received)

        return Deferred.fromCoroutine(run())

    def test_unreachable(self) -> Deferred[None]:
        """Starting against an unreachable server returns, not connected, and keeps trying."""

        async def run() -> None:
            b = await self._broadcast(
                "postgresql://postgres@127.0.0.1:1/none", "b", connect_timeout=2.0
            )
            await b.start()
            self.assertFalse(b.connected)
            self.assertIsNotNone(b._retry)

        return Deferred.fromCoroutine(run())


class ServiceTests(TestCase):
    """
    C{twistd medichat} with PostgreSQL runs a L{ClusterHub} over a started broadcast;
    with SQLite, the in-process hub alone.
    """

    timeout = 60

    def test_two_servers(self) -> Deferred[None]:
        """An event published on one server reaches a subscriber of another on the database."""

        async def run() -> None:
            url = await create_test_database(self)
            a = await start_server(self, "--database", url, "--listen-keepalive", "5")
            b = await start_server(self, "--database", url)
            for server in (a, b):
                self.assertIsInstance(server.service.hub, ClusterHub)
                self.assertTrue(server.service.broadcast.connected)
            self.assertEqual(a.service.broadcast._keepalive, 5.0)
            keeper = Keeper()
            a.service.hub.subscribe(ONLINE_EMPLOYEES_TOPIC, keeper)
            b.service.hub.publish(ONLINE_EMPLOYEES_TOPIC, {"online": 7})
            await until(lambda: len(keeper.publications) == 1, "the event on a")
            self.assertEqual(keeper.publications[0].body, b'{"online":7}')
            await b.service.stopService()
            self.assertFalse(b.service.broadcast.connected)

        return Deferred.fromCoroutine(run())

    def test_typing_across_servers(self) -> Deferred[None]:
        """STOMP clients on two servers see each other's typing and arrival, each once."""

        async def run() -> None:
            url = await create_test_database(self)
            a = await start_server(self, "--database", url)
            b = await start_server(self, "--database", url)
            clients: list[Any] = []
            self.addCleanup(in_thread, disconnect_all, clients)

            def token(server: Any, sub: str, role: str) -> str:
                claims = {"sub": sub, "name": role, "role": role}
                return jwt.encode(claims, server.secret, algorithm="HS256")

            def connect(server: Any, bearer: str) -> Any:
                conn, recorder = ws_connection(
                    server.http_port, header={"Authorization": f"Bearer {bearer}"}
                )
                conn.connect(wait=True)
                clients.append(conn)
                return conn, recorder

            customer_token = token(a, CUSTOMER, "customer")
            response = await treq.post(
                a.base_url + "/v1/conversation",
                headers={"Authorization": f"Bearer {customer_token}"},
                pool=HTTPConnectionPool(reactor, persistent=False),
            )
            self.assertEqual(response.code, 201)
            topic = f"/v1/topic/conversation/{(await response.json())['id']}"
            customer, on_a = await in_thread(connect, a, customer_token)
            employee, on_b = await in_thread(connect, b, token(b, EMPLOYEE, "employee"))

            def subscribe(conn: Any, recorder: Any, sub_id: str) -> None:
                conn.subscribe(topic, id=sub_id, receipt=f"r-{sub_id}")
                assert wait_for(recorder.receipts) == f"r-{sub_id}"

            def next_event(recorder: Any) -> Any:
                return json.loads(wait_for(recorder.messages).body)

            def nothing_more(recorder: Any) -> bool:
                # No echo and no duplicate arrives.
                time.sleep(0.3)
                return recorder.messages.empty()

            # Each step waits until the other server has its broadcast, so that the order
            # of what each client sees is fixed.
            seen_on_b = Keeper()
            b.service.hub.subscribe(topic, seen_on_b)
            await in_thread(subscribe, customer, on_a, "c")
            self.assertEqual(
                await in_thread(next_event, on_a), {"userConnected": {"userId": CUSTOMER}}
            )
            await until(lambda: len(seen_on_b.publications) == 1, "the customer's arrival on b")
            await in_thread(subscribe, employee, on_b, "e")
            for recorder in (on_b, on_a):
                self.assertEqual(
                    await in_thread(next_event, recorder),
                    {"userConnected": {"userId": EMPLOYEE}},
                )
            await in_thread(
                customer.send, topic.replace("/topic/", "/app/") + "/typing/start", ""
            )
            for recorder in (on_a, on_b):
                self.assertEqual(
                    await in_thread(next_event, recorder), {"startTyping": {"userId": CUSTOMER}}
                )
            for recorder in (on_a, on_b):
                self.assertTrue(await in_thread(nothing_more, recorder))

        return Deferred.fromCoroutine(run())

    def test_sqlite(self) -> Deferred[None]:
        """With SQLite there is no broadcast, and the hub is the in-process one."""

        async def run() -> None:
            server = await start_server(self)
            self.assertIsNone(server.service.broadcast)
            self.assertIsInstance(server.service.hub, InProcessHub)

        return Deferred.fromCoroutine(run())
