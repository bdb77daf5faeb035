#!/usr/bin/env python3
"""
Two medichat processes on one PostgreSQL database against one, in the same run.

Makes a PostgreSQL database for the run (dropped after it) and starts two servers, A and B,
on it, sharing one development secret.  Phase C{one}: C conversations whose customer and
employee are both subscribed on A, every message POSTed to A.  Phase C{two}: C other
conversations, the customer subscribed on A and the employee on B, the customer's messages
POSTed to A and the employee's to B, so that every message crosses to the other process.
Each phase runs at each C{--rates} (POSTs per second, round-robin over the conversations,
alternating the author) for a warm-up and C{--repeats} windows, and reports per window:
messages committed (201) per second, committed-and-delivered per second (the other
participant's socket got the C{message} event), POST-to-delivery latency p50/p99, the CPU of
each server, of the PostgreSQL backends and of the rest of the machine, and what a sampler
saw of PostgreSQL's NOTIFY queue lock (C{AccessExclusiveLock} on object 0 of class
C{pg_database}, taken by every committing transaction that sent a NOTIFY) every 10 ms.
Prints one JSON object.

    python benchmarks/cluster.py --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    CLOCK_TICKS,
    BenchClient,
    ClientSpec,
    Population,
    Server,
    idle_window,
    log,
    machine_jiffies,
    median_of,
    noise_figures,
    open_population,
    own_cpu,
    process_cpu,
    raise_nofile,
    run,
    sleep,
    subscribe_frame,
)
from conversations import Conversation, Database, Traffic, _gather, latency_figures  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet.defer import DeferredSemaphore, ensureDeferred  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

NOTIFY_LOCK = (
    "locktype = 'object' AND classid = 'pg_database'::regclass AND objid = 0"
    " AND mode = 'AccessExclusiveLock'"
)
"""The lock that PostgreSQL's PreCommit_Notify takes for the notification queue."""


class LockSampler(threading.Thread):
    """
    Samples, on a connection of its own, how many sessions hold and wait for the NOTIFY
    queue lock, and how many sessions of the database wait on any heavyweight lock.
    """

    def __init__(self, url: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        import psycopg2

        self._connection = psycopg2.connect(url)
        self._connection.autocommit = True
        self._interval = interval
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[tuple[float, int, int, int]] = []
        self._waits: list[tuple[float, dict[str, int]]] = []

    def run(self) -> None:
        with self._connection.cursor() as cursor:
            while not self._halt.is_set():
                cursor.execute(
                    f"SELECT count(*) FILTER (WHERE granted AND {NOTIFY_LOCK}),"
                    f" count(*) FILTER (WHERE NOT granted AND {NOTIFY_LOCK}),"
                    " (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    "  AND wait_event_type = 'Lock')"
                    " FROM pg_locks"
                )
                holders, waiters, lock_waits = cursor.fetchone()
                cursor.execute(
                    "SELECT wait_event, count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " GROUP BY wait_event"
                )
                waits = dict(cursor.fetchall())
                now = time.monotonic()
                with self._lock:
                    self._samples.append((now, holders, waiters, lock_waits))
                    self._waits.append((now, waits))
                self._halt.wait(self._interval)
        self._connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def between(self, start: float, end: float) -> dict[str, Any]:
        """What the samples taken between C{start} and C{end} show."""
        with self._lock:
            samples = [s for s in self._samples if start <= s[0] < end]
            waits = [w for at, w in self._waits if start <= at < end]
        if not samples:
            return {"samples": 0}
        kinds = sorted({kind for w in waits for kind in w})
        waiting = [s[2] for s in samples]
        return {
            "samples": len(samples),
            "notify_lock_held_pct": round(100 * sum(1 for s in samples if s[1]) / len(samples), 1),
            "notify_lock_waiters_max": max(waiting),
            "notify_lock_waiters_mean": round(sum(waiting) / len(samples), 3),
            "samples_with_waiters_pct": round(
                100 * sum(1 for w in waiting if w) / len(samples), 1),
            "sessions_waiting_on_any_lock_max": max(s[3] for s in samples),
            # pg_stat_activity's wait_event of sessions waiting on a heavyweight lock:
            # "object" would be the NOTIFY queue lock, "transactionid" a row lock.
            "lock_waits_by_kind": {
                kind: {"max": max(w.get(kind, 0) for w in waits),
                       "samples_pct": round(100 * sum(1 for w in waits if w.get(kind))
                                            / len(waits), 1)}
                for kind in kinds
            },
        }


class SpreadTraffic(Traffic):
    """L{Traffic} whose POSTs go to the process that each author is connected to."""

    bases: dict[BenchClient, str]

    async def _post(self, record: Any, conversation_id: str, token: str) -> None:
        self.base = self.bases[record.author]
        await super()._post(record, conversation_id, token)


class Meter:
    """CPU counters of the servers, the database backends, the generator and the machine."""

    def __init__(self, servers: dict[str, int], backends: tuple[int, ...]) -> None:
        self.at = time.monotonic()
        self.servers = {name: process_cpu(pid) for name, pid in servers.items()}
        self.backends = 0.0
        for pid in backends:
            try:
                self.backends += process_cpu(pid)
            except OSError:
                pass
        self.generator = own_cpu()
        self.busy = machine_jiffies()[0]


def cpu_figures(a: Meter, b: Meter) -> dict[str, Any]:
    seconds = b.at - a.at
    servers = {name: b.servers[name] - a.servers[name] for name in a.servers}
    backends = b.backends - a.backends
    generator = b.generator - a.generator
    machine = (b.busy - a.busy) / CLOCK_TICKS / seconds
    return {
        "seconds": round(seconds, 3),
        **{f"server_{name}_cpu_pct_of_core": round(100 * cpu / seconds, 1)
           for name, cpu in servers.items()},
        "servers_cpu_pct_of_core": round(100 * sum(servers.values()) / seconds, 1),
        "postgres_backends_cpu_pct_of_core": round(100 * backends / seconds, 1),
        "generator_cpu_pct_of_core": round(100 * generator / seconds, 1),
        "machine_busy_cores": round(machine, 3),
        "other_processes_busy_cores": round(
            machine - (sum(servers.values()) + backends + generator) / seconds, 3),
    }


def statuses(records: list[Any]) -> dict[str, int]:
    """How many POSTs got each answer (an HTTP status, or the client's exception)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[str(record.status)] = counts.get(str(record.status), 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="postgresql://user@host:port[/db]: the run's database "
                             "medichat_bench_<hex> is made there and dropped afterwards "
                             "(default %(default)s)")
    parser.add_argument("--conversations", type=int, default=50,
                        help="conversations per phase (default %(default)s)")
    parser.add_argument("--rates", default="500",
                        help="comma-separated POST rates per second (default %(default)s)")
    parser.add_argument("--phases", default="one,two",
                        help="which phases to run, in order: one (every session and POST on "
                             "A) and two (customers on A, employees on B) "
                             "(default %(default)s)")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds to wait after each rate's load for the POSTs still "
                             "unanswered and events still undelivered (default %(default)s)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of each measured window (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measured windows per rate and phase (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of load before the first window (default %(default)s)")
    parser.add_argument("--idle-window", type=float, default=3.0,
                        help="seconds of machine noise measured with no load "
                             "(default %(default)s)")
    parser.add_argument("--http-connections", type=int, default=16,
                        help="persistent HTTP connections kept per process "
                             "(default %(default)s)")
    parser.add_argument("--timeout", type=float, default=400.0,
                        help="hard limit on the whole run, in seconds (default %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the servers' data directories and logs")
    options = parser.parse_args()
    rates = [float(r) for r in options.rates.split(",")]
    chosen = options.phases.split(",")
    if not chosen or set(chosen) - {"one", "two"}:
        parser.error("--phases: a comma-separated list of one and two")
    options.settle = 1.0
    report: dict[str, Any] = {
        "benchmark": "cluster",
        "conversations": options.conversations,
        "rates_per_s": rates,
        "generator_open_files": raise_nofile(),
    }
    database = Database(options.database)
    database.create()
    report["database"] = database.redacted
    # The per-user message rate limit is lifted: 500 msg/s over 100 users is 5/s each.
    server_options = ["--database", database.url, "--message-rate", "1000000"]
    a = Server(server_options, keep=options.keep)
    b = Server(server_options, keep=options.keep)
    # One secret for both, as a cluster's processes share their --auth.
    with open(os.path.join(b.data_dir, "jwt-dev.secret"), "wb") as f:
        f.write(a.secret + b"\n")
    b.secret = a.secret

    async def measure(reactor: Any, report: dict[str, Any]) -> None:
        b.start()
        report["servers"] = {"a": a.pid, "b": b.pid}
        await sleep(reactor, options.settle)
        report["noise"] = noise_figures(await idle_window(reactor, a, options.idle_window))
        sampler = LockSampler(database.url)
        sampler.start()
        http: dict[str, HTTPClient] = {}
        pools = []
        for name in ("a", "b"):
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = options.http_connections
            pool.retryAutomatically = False
            pools.append(pool)
            http[name] = HTTPClient(Agent(reactor, pool=pool))
        base = {"a": f"http://127.0.0.1:{a.port}/api", "b": f"http://127.0.0.1:{b.port}/api"}
        phases: dict[str, Any] = report.setdefault("phases", {})
        try:
            for phase in chosen:
                employees_on = {"one": "a", "two": "b"}[phase]
                phases[phase] = await run_phase(
                    reactor, phase, employees_on, a, b, http, base, database, sampler, rates)
        finally:
            sampler.stop()
            for pool in pools:
                await pool.closeCachedConnections()

    async def run_phase(reactor: Any, phase: str, employees_on: str, a: Server, b: Server,
                        http: dict[str, HTTPClient], base: dict[str, str], database: Database,
                        sampler: LockSampler, rates: list[float]) -> dict[str, Any]:
        log(f"phase {phase}: employees on {employees_on.upper()}")
        conversations: list[Conversation] = []
        limit = DeferredSemaphore(10)

        async def create(number: int) -> None:
            customer = a.token(str(uuid.uuid4()), f"customer-{number}", "customer")
            employee = a.token(str(uuid.uuid4()), f"nurse-{number}", "employee")
            response = await http["a"].post(
                f"{base['a']}/v1/conversation", headers={"Authorization": f"Bearer {customer}"})
            body = await response.json()
            if response.code != 201:
                raise RuntimeError(f"POST /v1/conversation: {response.code} {body}")
            conversations.append(Conversation(body["id"], customer, employee))

        await _gather([limit.run(lambda n=n: ensureDeferred(create(n)))
                       for n in range(options.conversations)])
        populations = {"a": Population(reactor, a.port), "b": Population(reactor, b.port)}
        specs: dict[str, list[ClientSpec]] = {"a": [], "b": []}
        for number, conversation in enumerate(conversations):
            topic = subscribe_frame(f"/v1/topic/conversation/{conversation.id}")
            specs["a"].append(ClientSpec(conversation.customer_token, 0, (topic,),
                                         (number, "customer")))
            specs[employees_on].append(ClientSpec(conversation.employee_token, 0, (topic,),
                                                  (number, "employee")))
        traffic = SpreadTraffic(reactor, base["a"], http["a"], conversations)
        traffic.bases = {}
        for name, population in populations.items():
            if not specs[name]:
                continue
            population.message_handler = traffic.on_message
            await open_population(reactor, population, specs[name], a if name == "a" else b)
            if population.failures:
                raise RuntimeError(f"{population.failures} sessions failed on {name}: "
                                   f"{population.failure_reasons} {population.errors}")
            for client in population.clients:
                number, role = client.spec.tag
                setattr(conversations[number], role, client)
                traffic.bases[client] = base[name]
        await sleep(reactor, 1.0)
        results = []
        for rate in rates:
            log(f"  {rate:g} POSTs/s, warm-up {options.warmup:g}s")
            traffic.sent.clear()
            traffic.start(rate)
            await sleep(reactor, options.warmup)
            backends = database.backend_pids()
            servers = {"a": a.pid, "b": b.pid}
            edges = [Meter(servers, backends)]
            for _ in range(options.repeats):
                await sleep(reactor, options.duration)
                edges.append(Meter(servers, backends))
            traffic.stop()
            stopped = time.monotonic()
            deadline = stopped + options.drain
            while time.monotonic() < deadline and (traffic.outstanding or any(
                    r.status == 201 and r.delivered is None for r in traffic.sent.values())):
                await sleep(reactor, 0.1)
            windows = []
            for start, end in zip(edges, edges[1:], strict=False):
                records = [r for r in traffic.sent.values() if start.at <= r.sent < end.at]
                committed = [r for r in records if r.status == 201]
                delivered = [r for r in committed if r.delivered is not None]
                seconds = end.at - start.at
                delivery = latency_figures([r.delivered - r.sent for r in delivered])
                response = latency_figures([r.responded - r.sent for r in committed])
                every = traffic.sent.values()
                figures = {
                    # Throughput: what finished inside the window, whenever it was sent.
                    "answered_201_in_window_per_s": round(sum(
                        1 for r in every if r.status == 201 and r.responded is not None
                        and start.at <= r.responded < end.at) / seconds, 1),
                    "delivered_in_window_per_s": round(sum(
                        1 for r in every if r.delivered is not None
                        and start.at <= r.delivered < end.at) / seconds, 1),
                    "posted": len(records),
                    "committed_per_s": round(len(committed) / seconds, 1),
                    "delivered_per_s": round(len(delivered) / seconds, 1),
                    "not_delivered": len(committed) - len(delivered),
                    "failed_posts": len(records) - len(committed),
                    "statuses": statuses(records),
                    "delivery_p50_ms": delivery["p50_ms"],
                    "delivery_p99_ms": delivery["p99_ms"],
                    "delivery_max_ms": delivery["max_ms"],
                    "post_response_p50_ms": response["p50_ms"],
                    "post_response_p99_ms": response["p99_ms"],
                    **cpu_figures(start, end),
                    "notify_lock": sampler.between(start.at, end.at),
                }
                windows.append(figures)
                log(f"    {figures['delivered_in_window_per_s']} delivered/s, p50 "
                    f"{figures['delivery_p50_ms']} ms, p99 {figures['delivery_p99_ms']} ms, "
                    f"servers {figures['servers_cpu_pct_of_core']}% of a core, notify "
                    f"waiters max {figures['notify_lock'].get('notify_lock_waiters_max')}")
            keys = ["answered_201_in_window_per_s", "delivered_in_window_per_s",
                    "committed_per_s", "delivered_per_s", "delivery_p50_ms", "delivery_p99_ms",
                    "servers_cpu_pct_of_core", "postgres_backends_cpu_pct_of_core",
                    "machine_busy_cores", "other_processes_busy_cores"]
            results.append({
                "rate_per_s": rate,
                "drained_in_s": round(time.monotonic() - stopped, 1),
                "windows": windows,
                "median": {key: median_of(windows, key) for key in keys},
            })
            await sleep(reactor, 1.0)
        for population in populations.values():
            for client in population.clients:
                client.sendClose()
        await sleep(reactor, 1.0)
        return {"employees_on": employees_on, "rates": results}

    def cleanup() -> None:
        b.stop()
        report["server_b_log"] = b.log_summary()
        database.drop()

    options.no_fast_paths = False
    return run(options, a, measure, report, cleanup=cleanup)


if __name__ == "__main__":
    sys.exit(main())
