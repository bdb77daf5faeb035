#!/usr/bin/env python3
"""
Chat traffic through the medichat server: message POSTs committed, and how soon the other
participant sees them.

Starts the real server (SQLite in a fresh data directory, or a PostgreSQL database made for
the run and dropped after it), opens C conversations, each with a customer and an employee
subscribed over STOMP-over-WebSocket to C{/v1/topic/conversation/{id}}, then POSTs messages
at a steady rate, round-robin over the conversations and alternating the author within
each.  Measures messages committed per second (201s), the time from sending a POST until
its C{message} event reaches the other participant's socket (p50/p99), and the server's
CPU per delivered event, over a few windows.  Prints one JSON object.

    python benchmarks/conversations.py --duration 10
    python benchmarks/conversations.py --duration 10 \\
        --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import sys
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    BenchClient,
    ClientSpec,
    Population,
    Server,
    Snapshot,
    common_arguments,
    idle_window,
    log,
    median_of,
    noise_figures,
    open_population,
    percentile,
    raise_nofile,
    run,
    sleep,
    subscribe_frame,
    window_figures,
)
from _harness import server_options as common_server_options  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

MARKER = b"bench#"


class Sent:
    """One message POST and what became of it."""

    __slots__ = ("seq", "sent", "responded", "status", "author", "recipient", "delivered")

    def __init__(self, seq: int, author: BenchClient, recipient: BenchClient) -> None:
        self.seq = seq
        self.sent = time.monotonic()
        self.responded: float | None = None
        self.status: int | str | None = None
        self.author = author
        self.recipient = recipient
        self.delivered: float | None = None


class Conversation:
    __slots__ = ("id", "customer_token", "employee_token", "customer", "employee", "posts")

    def __init__(self, conversation_id: str, customer_token: str, employee_token: str) -> None:
        self.id = conversation_id
        self.customer_token = customer_token
        self.employee_token = employee_token
        self.customer: BenchClient | None = None
        self.employee: BenchClient | None = None
        self.posts = 0


class Traffic:
    """Sends the messages and matches their events as they arrive."""

    def __init__(self, reactor: Any, base: str, http: HTTPClient,
                 conversations: list[Conversation]) -> None:
        self.reactor = reactor
        self.base = base
        self.http = http
        self.conversations = conversations
        self.sent: dict[int, Sent] = {}
        self.events = 0
        self.outstanding = 0
        self._sequence = itertools.count(1)
        self._next_conversation = 0
        self._ticker: LoopingCall | None = None
        self._started = 0.0
        self._count = 0
        self.rate = 0.0

    # -- events

    def on_message(self, client: BenchClient, payload: bytes, now: float) -> None:
        self.events += 1
        start = payload.find(MARKER)
        if start < 0:
            return
        start += len(MARKER)
        try:
            seq = int(payload[start:payload.find(b"#", start)])
        except ValueError:
            return
        record = self.sent.get(seq)
        if record is not None and client is record.recipient and record.delivered is None:
            record.delivered = now

    # -- load

    def start(self, rate: float) -> None:
        self.rate = rate
        self._started = time.monotonic()
        self._count = 0
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._ticker.start(min(0.01, 1.0 / rate), now=True)

    async def drain(self, reactor: Any, seconds: float = 10.0) -> None:
        """
        Wait (at most C{seconds}) until every POST is answered and every committed
        message delivered, so that late ones count in no window.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pending = self.outstanding + sum(
                1 for r in self.sent.values() if r.status == 201 and r.delivered is None
            )
            if not pending:
                return
            await sleep(reactor, 0.1)

    def stop(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()

    def _tick(self) -> None:
        due = int((time.monotonic() - self._started) * self.rate) - self._count
        # After a stall, catch up by at most one second's worth.
        for _ in range(min(due, max(1, int(self.rate)))):
            self._count += 1
            self._post_next()
        if due > self.rate:
            self._count += due - int(self.rate)

    def _next_post(self) -> tuple[Conversation, Sent, str]:
        """
        The next message to send: round-robin over the conversations, the author
        alternating between customer and employee; recorded in L{sent}.

        @return: its conversation, its record and its author's token.
        """
        conversation = self.conversations[self._next_conversation]
        self._next_conversation = (self._next_conversation + 1) % len(self.conversations)
        by_customer = conversation.posts % 2 == 0
        conversation.posts += 1
        assert conversation.customer is not None and conversation.employee is not None
        if by_customer:
            author, recipient = conversation.customer, conversation.employee
            token = conversation.customer_token
        else:
            author, recipient = conversation.employee, conversation.customer
            token = conversation.employee_token
        record = Sent(next(self._sequence), author, recipient)
        self.sent[record.seq] = record
        return conversation, record, token

    def _post_next(self) -> None:
        conversation, record, token = self._next_post()
        self.outstanding += 1
        d = ensureDeferred(self._post(record, conversation.id, token))
        d.addErrback(lambda f: log(f"POST bookkeeping failed: {f.getErrorMessage()}"))

    async def _post(self, record: Sent, conversation_id: str, token: str) -> None:
        text = f"bench#{record.seq}# how are you feeling today?"
        try:
            response = await self.http.post(
                f"{self.base}/v1/conversation/{conversation_id}/message",
                json={"message": text},
                headers={"Authorization": f"Bearer {token}"},
            )
            await response.content()
            record.status = response.code
        except Exception as e:
            record.status = type(e).__name__
        finally:
            record.responded = time.monotonic()
            self.outstanding -= 1


def subscriber_specs(conversations: list[Conversation]) -> list[ClientSpec]:
    """
    The sessions to open: each conversation's customer and employee, subscribed to its
    topic, with heart-beats of 10 s; tagged C{(number, role)}.
    """
    specs = []
    for number, conversation in enumerate(conversations):
        topic = subscribe_frame(f"/v1/topic/conversation/{conversation.id}")
        specs.append(ClientSpec(conversation.customer_token, 10000, (topic,),
                                (number, "customer")))
        specs.append(ClientSpec(conversation.employee_token, 10000, (topic,),
                                (number, "employee")))
    return specs


class Database:
    """A PostgreSQL database made for one run and dropped after it."""

    def __init__(self, url: str) -> None:
        import psycopg2

        self._psycopg2 = psycopg2
        parts = urlsplit(url)
        self.name = f"medichat_bench_{secrets.token_hex(4)}"
        self._connect_args = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 5432,
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            # The URL's database is only where to connect to create and drop ours.
            "dbname": parts.path.lstrip("/") or "postgres",
        }
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, "", ""))
        self.redacted = urlunsplit(
            (parts.scheme, parts.netloc.rpartition("@")[2], "/" + self.name, "", "")
        )
        self.created = False

    def _admin(self) -> Any:
        connection = self._psycopg2.connect(
            **{k: v for k, v in self._connect_args.items() if v is not None}
        )
        connection.autocommit = True
        return connection

    def create(self) -> None:
        connection = self._admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.name}"')
            self.created = True
        finally:
            connection.close()
        log(f"created database {self.name}")

    def backend_pids(self) -> tuple[int, ...]:
        connection = self._admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
                )
                return tuple(row[0] for row in cursor.fetchall())
        finally:
            connection.close()

    def drop(self) -> None:
        if not self.created:
            return
        connection = self._admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
        finally:
            connection.close()
        log(f"dropped database {self.name}")


def latency_figures(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1000 * value, 2)

    return {
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--conversations", type=int, default=50,
                        help="conversations, each with a customer and an employee "
                             "(default %(default)s)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="message POSTs per second, all conversations together "
                             "(default %(default)s)")
    parser.add_argument("--database", default=None,
                        help="postgresql://user@host:port[/db]: run on PostgreSQL, in a "
                             "database medichat_bench_<hex> created on that server and "
                             "dropped afterwards (the URL's db is only used to connect for "
                             "that); default: SQLite")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of load before the first window (default %(default)s)")
    parser.add_argument("--http-connections", type=int, default=16,
                        help="persistent HTTP connections kept (default %(default)s)")
    common_arguments(parser, duration=10.0, timeout=300.0)
    options = parser.parse_args()
    if options.conversations < 1 or options.rate <= 0:
        parser.error("--conversations and --rate must be positive")
    report: dict[str, Any] = {
        "benchmark": "conversations",
        "store": "postgresql" if options.database else "sqlite",
        "conversations": options.conversations,
        "rate_per_s": options.rate,
        "generator_open_files": raise_nofile(),
    }
    database = Database(options.database) if options.database else None
    server_options = []
    if database is not None:
        try:
            database.create()
        except Exception as e:
            report["error"] = f"cannot create the PostgreSQL database: {e}"
            print(json.dumps(report, indent=2))
            return 1
        server_options = ["--database", database.url]
        report["database"] = database.redacted
    server_options.extend(common_server_options(options))
    report["fast_paths"] = not options.no_fast_paths
    server = Server(server_options, keep=options.keep, repo=options.server_tree)

    async def measure(reactor: Any, report: dict[str, Any]) -> None:
        await sleep(reactor, options.settle)
        idle = await idle_window(reactor, server, options.idle_window)
        report["noise"] = noise_figures(idle)

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = options.http_connections
        pool.retryAutomatically = False
        http = HTTPClient(Agent(reactor, pool=pool))
        base = f"http://127.0.0.1:{server.port}/api"

        log(f"creating {options.conversations} conversations")
        conversations: list[Conversation] = []
        limit = DeferredSemaphore(10)

        async def create(number: int) -> None:
            customer = server.token(str(uuid.uuid4()), f"customer-{number}", "customer")
            employee = server.token(str(uuid.uuid4()), f"nurse-{number}", "employee")
            response = await http.post(
                f"{base}/v1/conversation", headers={"Authorization": f"Bearer {customer}"}
            )
            body = await response.json()
            if response.code != 201:
                raise RuntimeError(f"POST /v1/conversation: {response.code} {body}")
            conversations.append(Conversation(body["id"], customer, employee))

        await _gather([
            limit.run(lambda n=n: ensureDeferred(create(n)))
            for n in range(options.conversations)
        ])

        population = Population(reactor, server.port, concurrency=options.concurrency)
        traffic = Traffic(reactor, base, http, conversations)
        population.message_handler = traffic.on_message
        specs = subscriber_specs(conversations)
        log(f"opening {len(specs)} subscribed sessions")
        report["open"] = await open_population(reactor, population, specs, server)
        if population.failures:
            raise RuntimeError(
                f"{population.failures} sessions failed to open: {population.failure_reasons}"
                f" {population.errors}"
            )
        for client in population.clients:
            number, role = client.spec.tag
            setattr(conversations[number], role, client)
        population.start_heartbeats(population.client_send_interval(10000))
        await sleep(reactor, 1.0)

        log(f"load: {options.rate:g} messages/s over {len(conversations)} conversations; "
            f"warm-up {options.warmup:g}s")
        traffic.start(options.rate)
        await sleep(reactor, options.warmup)
        pids = database.backend_pids() if database is not None else ()
        extra = "postgres_backends" if database is not None else None
        edges = [(Snapshot(server.pid, pids), traffic.events)]
        for number in range(options.repeats):
            log(f"window {number + 1}/{options.repeats}: {options.duration:g}s")
            await sleep(reactor, options.duration)
            edges.append((Snapshot(server.pid, pids), traffic.events))
        traffic.stop()

        log("draining")
        await traffic.drain(reactor)
        population.stop_heartbeats()

        windows = []
        for (a, events_a), (b, events_b) in zip(edges, edges[1:], strict=False):
            records = [r for r in traffic.sent.values() if a.at <= r.sent < b.at]
            committed = [r for r in records if r.status == 201]
            statuses: dict[str, int] = {}
            for r in records:
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            figures = window_figures(a, b, extra)
            seconds = figures["seconds"]
            events = events_b - events_a
            delivery = latency_figures(
                [r.delivered - r.sent for r in committed if r.delivered is not None]
            )
            response = latency_figures(
                [r.responded - r.sent for r in committed if r.responded is not None]
            )
            figures.update({
                "posted": len(records),
                "statuses": statuses,
                "committed": len(committed),
                "committed_per_s": round(len(committed) / seconds, 2),
                "not_delivered_to_other": sum(1 for r in committed if r.delivered is None),
                "post_to_delivery_p50_ms": delivery["p50_ms"],
                "post_to_delivery_p99_ms": delivery["p99_ms"],
                "post_to_delivery_max_ms": delivery["max_ms"],
                "post_response_p50_ms": response["p50_ms"],
                "post_response_p99_ms": response["p99_ms"],
                "events_delivered": events,
                "server_cpu_us_per_event": (
                    round(figures["server_cpu_s"] * 1e6 / events, 1) if events else None
                ),
                "server_cpu_us_per_committed_message": (
                    round(figures["server_cpu_s"] * 1e6 / len(committed), 1)
                    if committed else None
                ),
            })
            windows.append(figures)
            log(f"  {figures['committed_per_s']} committed/s, delivery p50 "
                f"{delivery['p50_ms']} ms p99 {delivery['p99_ms']} ms, "
                f"{figures['server_cpu_us_per_event']} us server CPU per event, "
                f"server {figures['server_cpu_pct_of_core']}% of a core; other processes "
                f"{figures['other_processes_busy_cores']} cores")
        report["windows"] = windows
        keys = ["committed_per_s", "post_to_delivery_p50_ms", "post_to_delivery_p99_ms",
                "post_response_p50_ms", "post_response_p99_ms", "server_cpu_us_per_event",
                "server_cpu_us_per_committed_message", "server_cpu_pct_of_core",
                "other_processes_busy_cores"]
        if extra:
            keys.append(f"{extra}_cpu_s")
        report["median"] = {key: median_of(windows, key) for key in keys}
        report["postgres_backends_measured"] = len(pids) if database is not None else None
        report["clients"] = population.summary()
        await pool.closeCachedConnections()

    return run(options, server, measure, report,
               cleanup=database.drop if database is not None else None)


def _gather(deferreds: list[Any]) -> Any:
    d = gatherResults(deferreds, consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure if hasattr(f.value, "subFailure") else f)
    return d


if __name__ == "__main__":
    sys.exit(main())
