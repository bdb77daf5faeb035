#!/usr/bin/env python3
"""
The capacity of the message path: how many chat messages per second one server takes
while the other participant still sees each within 50 ms (p99) and none is lost.

Starts the real server (SQLite in a fresh data directory, or a PostgreSQL database made
for the run and dropped after it), opens C conversations, each with a customer and an
employee subscribed over STOMP-over-WebSocket, then POSTs messages open-loop (at the
scheduled time, whether or not earlier ones are answered) over a fixed number of keep-alive
HTTP connections, round-robin over the conversations and alternating the author.  The rate
steps up until the p99 from sending a POST to its C{message} event at the other
participant passes C{--p99-limit}, or a message is lost (not answered 201, or not
delivered).  Per step: the rate achieved, POST and delivery p50/p99, losses, the server's
CPU per message (C{/proc}), its RSS, its garbage-collection pauses (the server writes them
when C{MEDICHAT_GC_PAUSES} is set, see C{medichat/_gcpauses.py}), and with PostgreSQL the
single-client single-row INSERT transactions per second C{pgbench} gets on the same
database in the same run; with C{--metrics-scrape}, the messages per store transaction
(the mean group commit, from the server's C{/metrics}) and, on SQLite, the database
thread's figures: the share of the step it was busy, and per transaction the time it
waited to start (for the thread to wake and take the GIL), ran, and spent on the CPU.
Prints one JSON object.

    python benchmarks/msgpath.py
    python benchmarks/msgpath.py --database postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/msgpath.py --metrics-scrape 600 --server-option=--group-window=2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    Population,
    Server,
    Snapshot,
    common_arguments,
    gc_pauses,
    group_figures,
    idle_window,
    log,
    metric_values,
    noise_figures,
    open_population,
    raise_nofile,
    request_bytes,
    run,
    sleep,
    window_figures,
)
from _harness import server_options as common_server_options  # noqa: E402
from conversations import (  # noqa: E402
    Conversation,
    Database,
    Sent,
    Traffic,
    latency_figures,
    subscriber_specs,
)
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.protocol import ClientFactory, Protocol  # noqa: E402

MESSAGE_TEXT = "how are you feeling today?"


# ------------------------------------------------------------------------------ HTTP client


class _Pending:
    __slots__ = ("record", "data", "done")

    def __init__(self, record: Sent | None, data: bytes, done: Deferred[Any] | None) -> None:
        self.record = record
        self.data = data
        self.done = done


class _Connection(Protocol):
    """
    One keep-alive HTTP/1.1 connection that sends one request at a time and reads only
    the status, the framing (C{Content-Length} or chunked) and the body.
    """

    pool: HTTPPool

    def __init__(self) -> None:
        self.buffer = b""
        self.current: _Pending | None = None

    def connectionMade(self) -> None:
        self.pool.connected(self)

    def send(self, pending: _Pending) -> None:
        self.current = pending
        if pending.record is not None:
            # On the wire: a POST still unanswered when the step's tally is made is lost
            # (its status stays "sent"); one never sent was the generator's backlog.
            pending.record.status = "sent"
        self.transport.write(pending.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.current is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            if match:
                stop = end + 4 + int(match.group(1))
                if len(self.buffer) < stop:
                    return
                body = self.buffer[end + 4:stop]
            elif b"transfer-encoding: chunked" in head:
                # A JSON body never holds a raw CR LF, so this is the last chunk.
                last = self.buffer.find(b"0\r\n\r\n", end + 4)
                if last < 0:
                    return
                stop = last + 5
                body = _dechunk(self.buffer[end + 4:stop])
            else:
                stop = end + 4
                body = b""
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[stop:]
            pending, self.current = self.current, None
            self.pool.answered(self, pending, status, body)

    def connectionLost(self, reason: Any = None) -> None:
        self.pool.lost(self)


def _dechunk(data: bytes) -> bytes:
    """The body of a complete chunked transfer."""
    body = b""
    while True:
        line_end = data.index(b"\r\n")
        size = int(data[:line_end].split(b";")[0], 16)
        if size == 0:
            return body
        body += data[line_end + 2:line_end + 2 + size]
        data = data[line_end + 4 + size:]


class HTTPPool(ClientFactory):
    """A fixed number of keep-alive connections and a queue of requests waiting for one."""

    protocol = _Connection
    noisy = False

    def __init__(self, reactor: Any, port: int, size: int) -> None:
        self.reactor = reactor
        self.port = port
        self.size = size
        self.idle: list[_Connection] = []
        self.queue: deque[_Pending] = deque()
        self.in_flight = 0
        self.lost_connections = 0
        self._ready: Deferred[None] | None = None
        self._connected = 0

    def buildProtocol(self, addr: Any) -> _Connection:
        connection = _Connection()
        connection.pool = self
        return connection

    def open(self) -> Deferred[None]:
        self._ready = Deferred()
        for _ in range(self.size):
            self.reactor.connectTCP("127.0.0.1", self.port, self, timeout=10)
        return self._ready

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if self._ready is not None:
            ready, self._ready = self._ready, None
            ready.errback(reason)

    def connected(self, connection: _Connection) -> None:
        self._connected += 1
        self._next(connection)
        if self._connected == self.size and self._ready is not None:
            ready, self._ready = self._ready, None
            ready.callback(None)

    def request(self, method: str, path: str, token: str, body: bytes | None,
                record: Sent | None = None) -> Deferred[tuple[int, bytes]] | None:
        """Queue a request; with no C{record}, returns a Deferred of (status, body)."""
        data = request_bytes(self.port, method, path, token, body)
        done: Deferred[tuple[int, bytes]] | None = None if record is not None else Deferred()
        pending = _Pending(record, data, done)
        self.in_flight += 1
        if self.idle:
            self.idle.pop().send(pending)
        else:
            self.queue.append(pending)
        return done

    def answered(self, connection: _Connection, pending: _Pending, status: int,
                 body: bytes) -> None:
        self.in_flight -= 1
        record = pending.record
        if record is not None:
            record.status = status
            record.responded = time.monotonic()
        elif pending.done is not None:
            pending.done.callback((status, body))
        self._next(connection)

    def _next(self, connection: _Connection) -> None:
        if self.queue:
            connection.send(self.queue.popleft())
        else:
            self.idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        self.lost_connections += 1
        if connection in self.idle:
            self.idle.remove(connection)
        pending = connection.current
        if pending is not None:
            self.in_flight -= 1
            if pending.record is not None:
                pending.record.status = "connection lost"
                pending.record.responded = time.monotonic()
            elif pending.done is not None:
                pending.done.errback(RuntimeError("connection lost"))

    def close(self) -> None:
        for connection in list(self.idle):
            connection.transport.loseConnection()  # type: ignore[union-attr]


class Load(Traffic):
    """L{Traffic}'s schedule and matching, with the POSTs sent through an L{HTTPPool}."""

    def __init__(self, reactor: Any, base_path: str, pool: HTTPPool,
                 conversations: list[Conversation]) -> None:
        super().__init__(reactor, base_path, None, conversations)  # type: ignore[arg-type]
        self.pool = pool

    def _post_next(self) -> None:
        conversation, record, token = self._next_post()
        body = json.dumps({"message": f"bench#{record.seq}# {MESSAGE_TEXT}"}).encode()
        self.pool.request("POST", f"{self.base}/v1/conversation/{conversation.id}/message",
                          token, body, record)

    async def drain(self, reactor: Any, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.pool.in_flight and not any(
                r.status == 201 and r.delivered is None for r in self.pending()
            ):
                return
            await sleep(reactor, 0.05)

    def pending(self) -> list[Sent]:
        """The records of the current step (the dict is cleared between steps)."""
        return list(self.sent.values())


# ------------------------------------------------------------------------------ pgbench


def pgbench_insert_tps(database: Database, seconds: float) -> dict[str, Any]:
    """
    C{pgbench} with one client doing single-row INSERT transactions into a table of its
    own in the run's database, for C{seconds}.
    """
    import psycopg2

    args = dict(database._connect_args, dbname=database.name)
    connection = psycopg2.connect(**{k: v for k, v in args.items() if v is not None})
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS bench_pgbench_insert "
                "(id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), "
                "body text NOT NULL)"
            )
    finally:
        connection.close()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(f"INSERT INTO bench_pgbench_insert (body) VALUES ('{MESSAGE_TEXT}');\n")
    command = ["pgbench", "-n", "-c", "1", "-j", "1", "-T", str(max(1, int(seconds))),
               "-f", script.name, "-h", str(args["host"]), "-p", str(args["port"])]
    if args.get("user"):
        command += ["-U", str(args["user"])]
    command.append(database.name)
    env = dict(os.environ)
    if args.get("password"):
        env["PGPASSWORD"] = str(args["password"])
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                timeout=seconds + 30)
    finally:
        os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if result.returncode != 0 or not match:
        return {"error": (result.stderr or result.stdout)[-500:]}
    tps = float(match.group(1))
    log(f"pgbench, 1 client, single-row INSERT: {tps:.0f} transactions/s")
    return {"tps": round(tps, 1), "seconds": seconds}


# ------------------------------------------------------------------------------ measuring


def _thread_text(figures: dict[str, Any] | None) -> str:
    """The SQLite database thread's figures of a step, for the log line ("" without)."""
    if not figures:
        return ""
    return (f"; database thread busy {figures['busy_share']}, per transaction "
            f"{figures['wait_ms']} ms waiting to start, {figures['run_ms']} ms running "
            f"({figures['cpu_ms']} ms CPU)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--conversations", type=int, default=200,
                        help="conversations, each with a customer and an employee "
                             "(default %(default)s)")
    parser.add_argument("--rates", default="100,200,300,400,500,600,800,1000,1500,2000",
                        help="message POSTs per second of each step, in order "
                             "(default %(default)s)")
    parser.add_argument("--database", default=None,
                        help="postgresql://user@host:port[/db]: run on PostgreSQL, in a "
                             "database medichat_bench_<hex> created and dropped for the "
                             "run; default: SQLite")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of each step's load before its window "
                             "(default %(default)s)")
    parser.add_argument("--http-connections", type=int, default=16,
                        help="keep-alive HTTP connections (default %(default)s)")
    parser.add_argument("--p99-limit", type=float, default=50.0,
                        help="the last step is the first whose POST-to-delivery p99 "
                             "exceeds this many ms (default %(default)s)")
    parser.add_argument("--all-steps", action="store_true",
                        help="run every step, even past the limit")
    parser.add_argument("--pgbench-seconds", type=float, default=3.0,
                        help="length of each pgbench run, before and after the steps "
                             "(default %(default)s)")
    parser.add_argument("--label", default=None, help="a name for this run in the JSON")
    common_arguments(parser, duration=3.0, timeout=400.0)
    options = parser.parse_args()
    rates = [float(r) for r in options.rates.split(",") if r.strip()]
    if options.conversations < 1 or not rates or min(rates) <= 0:
        parser.error("--conversations and every rate must be positive")
    report: dict[str, Any] = {
        "benchmark": "msgpath",
        "label": options.label,
        "store": "postgresql" if options.database else "sqlite",
        "server_tree": os.path.abspath(options.server_tree) if options.server_tree else None,
        "conversations": options.conversations,
        "http_connections": options.http_connections,
        "generator_open_files": raise_nofile(),
    }
    database = Database(options.database) if options.database else None
    # The per-user limit of 20 messages per 10 s would refuse most of the load.
    server_options = ["--message-rate", "100000000"]
    if database is not None:
        try:
            database.create()
        except Exception as e:
            report["error"] = f"cannot create the PostgreSQL database: {e}"
            print(json.dumps(report, indent=2))
            return 1
        server_options += ["--database", database.url]
        report["database"] = database.redacted
    # With --metrics-scrape, each step also says how many messages a transaction took.
    server_options += common_server_options(options)
    gc_file = tempfile.NamedTemporaryFile(prefix="medichat-gc-", suffix=".log", delete=False)
    gc_file.close()
    server = Server(server_options, keep=options.keep, repo=options.server_tree,
                    env={"MEDICHAT_GC_PAUSES": gc_file.name})

    async def measure(reactor: Any, report: dict[str, Any]) -> None:
        await sleep(reactor, options.settle)
        idle = await idle_window(reactor, server, options.idle_window)
        report["noise"] = noise_figures(idle)
        if database is not None:
            report["pgbench_before"] = pgbench_insert_tps(database, options.pgbench_seconds)

        assert server.port is not None
        setup = HTTPPool(reactor, server.port, 1)
        await setup.open()
        base = "/api"
        log(f"creating {options.conversations} conversations")
        conversations: list[Conversation] = []
        for number in range(options.conversations):
            customer = server.token(str(uuid.uuid4()), f"customer-{number}", "customer")
            employee = server.token(str(uuid.uuid4()), f"nurse-{number}", "employee")
            done = setup.request("POST", f"{base}/v1/conversation", customer, None)
            assert done is not None
            status, body = await done
            if status != 201:
                raise RuntimeError(f"POST /v1/conversation: {status} {body[:300]!r}")
            conversations.append(Conversation(json.loads(body)["id"], customer, employee))
        setup.close()

        # The load's connections are opened once the sessions are: opened earlier, they
        # would sit idle through the sessions' opening and the settling, close to the
        # server's keep-alive limit (--request-head-timeout, 10 s), and one closed by the
        # server just as a POST went out on it would count as a message lost.
        pool = HTTPPool(reactor, server.port, options.http_connections)
        population = Population(reactor, server.port, concurrency=options.concurrency)
        load = Load(reactor, base, pool, conversations)
        population.message_handler = load.on_message
        specs = subscriber_specs(conversations)
        log(f"opening {len(specs)} subscribed sessions")
        report["open"] = await open_population(reactor, population, specs, server)
        if population.failures:
            raise RuntimeError(f"{population.failures} sessions failed to open: "
                               f"{population.failure_reasons} {population.errors}")
        for client in population.clients:
            number, role = client.spec.tag
            setattr(conversations[number], role, client)
        population.start_heartbeats(population.client_send_interval(10000))
        await sleep(reactor, options.settle)
        await pool.open()

        pids = database.backend_pids() if database is not None else ()
        extra = "postgres_backends" if database is not None else None
        steps: list[dict[str, Any]] = []
        report["steps"] = steps
        for rate in rates:
            load.sent.clear()
            log(f"step {rate:g} messages/s: {options.warmup:g}s warm-up, "
                f"{options.duration:g}s measured")
            load.start(rate)
            await sleep(reactor, options.warmup)
            # With metrics, the groups the store committed (read just outside the window).
            port = server.metrics_port
            metrics_a = await metric_values(reactor, port) if port is not None else None
            metrics_a_at = time.monotonic()
            a, wall_a = Snapshot(server.pid, pids), time.time()
            await sleep(reactor, options.duration)
            b, wall_b = Snapshot(server.pid, pids), time.time()
            metrics_b = await metric_values(reactor, port) if port is not None else None
            metrics_seconds = time.monotonic() - metrics_a_at
            load.stop()
            await load.drain(reactor)
            step = _step_figures(rate, load, a, b, extra)
            step["gc"] = gc_pauses(gc_file.name, wall_a, wall_b)
            if metrics_a is not None and metrics_b is not None:
                step["groups"] = group_figures(metrics_a, metrics_b, metrics_seconds)
            steps.append(step)
            log(f"  {step['answered_per_s']}/s answered; POST p50/p99 "
                f"{step['post_p50_ms']}/{step['post_p99_ms']} ms; delivery p50/p99 "
                f"{step['delivery_p50_ms']}/{step['delivery_p99_ms']} ms; lost "
                f"{step['lost']}"
                + (f" (and {step['unsent']} never sent: the generator's backlog)"
                   if step["unsent"] else "")
                + f"; {step['server_cpu_us_per_message']} us CPU/message; "
                f"rss {step['server_rss_kib']} KiB; gc max {step['gc'].get('max_ms')} ms "
                f"(cpu {step['gc'].get('max_cpu_ms')} ms) "
                f"({step['gc'].get('over_5ms')} over 5 ms); other processes "
                f"{step['other_processes_busy_cores']} cores"
                + (f"; {step['groups']['messages_per_transaction']} messages per transaction"
                   if step.get("groups") else "")
                + _thread_text(step.get("groups", {}).get("store_thread")))
            if not options.all_steps and (
                step["lost"] or step["unsent"] or step["delivery_p99_ms"] is None
                or step["delivery_p99_ms"] > options.p99_limit
            ):
                break
        if database is not None:
            report["pgbench_after"] = pgbench_insert_tps(database, options.pgbench_seconds)
        population.stop_heartbeats()
        good = [s for s in steps if not s["lost"] and not s["unsent"]
                and s["delivery_p99_ms"] is not None
                and s["delivery_p99_ms"] <= options.p99_limit]
        report["sustained_per_s"] = max((s["answered_per_s"] for s in good), default=None)
        report["clients"] = population.summary()
        pool.close()

    def cleanup() -> None:
        if database is not None:
            database.drop()
        if not options.keep:
            os.unlink(gc_file.name)

    return run(options, server, measure, report, cleanup=cleanup)


def _step_figures(rate: float, load: Load, a: Snapshot, b: Snapshot,
                  extra: str | None) -> dict[str, Any]:
    records = [r for r in load.sent.values() if a.at <= r.sent < b.at]
    committed = [r for r in records if r.status == 201]
    answered = [r for r in load.sent.values() if r.status == 201
                and r.responded is not None and a.at <= r.responded < b.at]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    figures = window_figures(a, b, extra)
    seconds = figures["seconds"]
    delivery = latency_figures(
        [r.delivered - r.sent for r in committed if r.delivered is not None])
    response = latency_figures(
        [r.responded - r.sent for r in committed if r.responded is not None])
    not_delivered = sum(1 for r in committed if r.delivered is None)
    # Still queued in the generator when the drain ended: never written to a connection,
    # so not lost by the server, but a sign of overload (the step fails all the same).
    unsent = sum(1 for r in records if r.status is None)
    server_cpu = figures["server_cpu_s"]
    result = {
        "rate_per_s": rate,
        "posted": len(records),
        "statuses": statuses,
        "answered_per_s": round(len(answered) / seconds, 1),
        "lost": (len(records) - len(committed) - unsent) + not_delivered,
        "not_delivered": not_delivered,
        "unsent": unsent,
        "post_p50_ms": response["p50_ms"],
        "post_p99_ms": response["p99_ms"],
        "delivery_p50_ms": delivery["p50_ms"],
        "delivery_p99_ms": delivery["p99_ms"],
        "delivery_max_ms": delivery["max_ms"],
        "server_cpu_us_per_message": (
            round(server_cpu * 1e6 / len(answered), 1) if answered else None),
        "server_reactor_thread_cpu_us_per_message": (
            round(figures["server_reactor_thread_cpu_s"] * 1e6 / len(answered), 1)
            if answered else None),
        **figures,
    }
    if extra:
        result[f"{extra}_cpu_us_per_message"] = (
            round(figures[f"{extra}_cpu_s"] * 1e6 / len(answered), 1) if answered else None)
    return result


if __name__ == "__main__":
    sys.exit(main())
