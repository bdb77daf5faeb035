#!/usr/bin/env python3
"""
One abusive customer against everyone else: how much the limits of issue 8 (items 1-4)
protect other customers' latency.

Starts the real server (SQLite in a fresh data directory), opens V victim conversations,
each with a customer and an employee subscribed over STOMP-over-WebSocket (each employee
also watches the abuser's conversation, as a nurse's dashboard would), and POSTs messages at
a steady rate, alternating the author.  Measured windows alternate: C{idle} (no abuse) and
C{abuse}, during which a child process, all as one customer, floods the server: transactions
held open with ACKs carrying 16 KiB bodies and SENDs with 8 KB destinations,
SUBSCRIBE/UNSUBSCRIBE loops on its own conversation, C{POST /v1/conversation} at the rate
the audit saw, and more sessions than it may hold, reconnecting whenever the server ends
one.  For each window: the victims' message POST response time and POST-to-MESSAGE delivery
time (p50/p99), server CPU and memory, and the machine's noise.  Prints one JSON object.

    python benchmarks/abuse.py --duration 10 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    ClientSpec,
    Population,
    Server,
    Snapshot,
    common_arguments,
    gc_pauses,
    idle_window,
    log,
    noise_figures,
    open_population,
    process_cpu,
    raise_nofile,
    run,
    server_options,
    sleep,
    subscribe_frame,
    window_figures,
)
from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from conversations import Conversation, Traffic, latency_figures  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

ABUSER = "a6b5e1d2-0c0f-4e7e-9d1b-abadc0ffee00"
PATTERNS = ("transactions", "subscribe", "hold")


# ------------------------------------------------------------------------------ the abuser


class AbuseClient(WebSocketClientProtocol):
    """
    One of the abuser's STOMP sessions: once connected it runs its pattern every tick
    until the server ends the session, then its L{Abuse} reconnects it.
    """

    abuse: Abuse
    pattern: str
    _loop: LoopingCall | None = None
    _closed = False

    def onOpen(self) -> None:
        self.abuse.count("ws_opened")
        self.sendMessage(self.abuse.connect_frame)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload.startswith(b"CONNECTED\n"):
            self.abuse.count("connected")
            self._start()
        elif payload.startswith(b"ERROR\n"):
            match = re.search(rb"\nmessage:([^\n]*)", payload)
            message = match.group(1).decode("utf-8", "replace") if match else "?"
            self.abuse.count(f"error: {message}")
        elif payload.startswith(b"MESSAGE\n"):
            self.abuse.count("messages_received")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.abuse.count("closed")
        self.abuse.reconnect(self.pattern)

    def _start(self) -> None:
        abuse = self.abuse
        if self.pattern == "hold":
            return
        if self.pattern == "transactions":
            self.sendMessage(b"".join(
                b"BEGIN\ntransaction:t%d\n\n\x00" % i for i in range(10)
            ))
        self._loop = LoopingCall(self._tick)
        self._loop.clock = abuse.reactor
        self._loop.start(abuse.tick, now=True)

    def _tick(self) -> None:
        abuse = self.abuse
        if self.state != self.STATE_OPEN:
            # The server has ended the session; onClose follows and reconnects.
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            return
        if self.pattern == "transactions":
            for i in range(abuse.frames_per_tick):
                if i % 4 == 3:
                    self.sendMessage(abuse.send_frames[i % 10])
                else:
                    self.sendMessage(abuse.ack_frames[i % 10])
            abuse.count("frames_sent", abuse.frames_per_tick)
        else:
            self.sendMessage(abuse.subscribe_batch)
            abuse.count("frames_sent", 2 * abuse.frames_per_tick)


class _AbuseFactory(WebSocketClientFactory):
    protocol = AbuseClient

    def __init__(self, abuse: Abuse, pattern: str, url: str) -> None:
        super().__init__(url, protocols=["v12.stomp"])
        self.abuse = abuse
        self.pattern = pattern
        self.setProtocolOptions(openHandshakeTimeout=30, closeHandshakeTimeout=1,
                                utf8validateIncoming=False, failByDrop=False)

    def buildProtocol(self, addr: Any) -> AbuseClient:
        protocol: AbuseClient = super().buildProtocol(addr)
        protocol.abuse = self.abuse
        protocol.pattern = self.pattern
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.abuse.count("tcp_connect_failed")
        self.abuse.reconnect(self.pattern)


class Abuse:
    """
    Everything one abusive customer does at once, bounded in rate and in connections.
    """

    def __init__(self, reactor: Any, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.port = options.port
        self.token = options.token
        self.tick = 0.01
        self.frames_per_tick = options.frames_per_tick
        self.reconnect_delay = options.reconnect_delay
        self.counts: dict[str, int] = {}
        self.stopping = False
        self.connect_frame = (
            b"CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer %s\n\n\x00"
            % self.token.encode("ascii")
        )
        body = b"x" * 16384
        self.ack_frames = [
            b"ACK\nid:m\ntransaction:t%d\ncontent-length:%d\n\n%s\x00" % (i, len(body), body)
            for i in range(10)
        ]
        destination = b"/v1/app/" + b"y" * 8000
        self.send_frames = [
            b"SEND\ndestination:%s\ntransaction:t%d\n\n\x00" % (destination, i)
            for i in range(10)
        ]
        topic = f"/v1/topic/conversation/{options.conversation}".encode()
        self.subscribe_batch = (
            b"SUBSCRIBE\nid:s\ndestination:%s\n\n\x00UNSUBSCRIBE\nid:s\n\n\x00" % topic
        ) * self.frames_per_tick
        url = f"ws://127.0.0.1:{self.port}/api/v1/chat"
        self.factories = {p: _AbuseFactory(self, p, url) for p in PATTERNS}
        self.sessions = options.sessions
        self.http_rate = options.http_rate
        self.http_in_flight = 0
        self.http_max_in_flight = options.http_in_flight
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = options.http_in_flight
        pool.retryAutomatically = False
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.pool = pool
        self._http_loop: LoopingCall | None = None
        self._http_started = 0.0
        self._http_count = 0

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def start(self) -> None:
        for number in range(self.sessions):
            self.connect(PATTERNS[number % len(PATTERNS)])
        self._http_started = time.monotonic()
        self._http_loop = LoopingCall(self._http_tick)
        self._http_loop.clock = self.reactor
        self._http_loop.start(self.tick, now=True)

    def connect(self, pattern: str) -> None:
        if self.stopping:
            return
        self.count("connect_attempts")
        self.reactor.connectTCP("127.0.0.1", self.port, self.factories[pattern], timeout=30)

    def reconnect(self, pattern: str) -> None:
        if not self.stopping:
            self.reactor.callLater(self.reconnect_delay, self.connect, pattern)

    def _http_tick(self) -> None:
        due = int((time.monotonic() - self._http_started) * self.http_rate) - self._http_count
        for _ in range(max(0, min(due, int(self.http_rate)))):
            self._http_count += 1
            if self.http_in_flight >= self.http_max_in_flight:
                self.count("http_skipped_in_flight_cap")
                continue
            self.http_in_flight += 1
            d = self.http.post(f"http://127.0.0.1:{self.port}/api/v1/conversation",
                               headers={"Authorization": f"Bearer {self.token}"})
            d.addCallback(self._http_done)
            d.addErrback(lambda f: self._http_failed(f))
        if due > self.http_rate:
            self._http_count += due - int(self.http_rate)

    def _http_done(self, response: Any) -> Any:
        self.count(f"http_{response.code}")
        d = response.content()
        d.addBoth(self._http_finished)
        return d

    def _http_failed(self, failure: Any) -> None:
        self.count(f"http_failed: {type(failure.value).__name__}")
        self._http_finished(None)

    def _http_finished(self, _: object) -> None:
        self.http_in_flight -= 1

    def stop(self) -> None:
        self.stopping = True
        if self._http_loop is not None and self._http_loop.running:
            self._http_loop.stop()


def abuser_main(options: argparse.Namespace) -> int:
    """The child process: abuse until SIGTERM (or --seconds), then write the counts."""
    from twisted.internet import reactor

    abuse = Abuse(reactor, options)
    started = time.monotonic()

    def write_counts() -> None:
        # The reactor's own SIGTERM handler stops it; the counts are written on the way.
        abuse.stop()
        counts = dict(sorted(abuse.counts.items()))
        counts["seconds"] = round(time.monotonic() - started, 2)
        with open(options.report, "w") as f:
            json.dump(counts, f)

    reactor.addSystemEventTrigger("before", "shutdown", write_counts)  # type: ignore[attr-defined]
    reactor.callWhenRunning(abuse.start)  # type: ignore[attr-defined]
    reactor.callLater(options.seconds, reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


class Abuser:
    """The abusive customer as a child process of the benchmark."""

    def __init__(self, server: Server, conversation: str, options: argparse.Namespace) -> None:
        self.report_path = os.path.join(server.directory, f"abuser-{uuid.uuid4().hex}.json")
        self.command = [
            sys.executable, os.path.abspath(__file__), "--abuser",
            "--port", str(server.port),
            "--token", server.token(ABUSER, "abuser", "customer"),
            "--conversation", conversation,
            "--report", self.report_path,
            "--seconds", str(options.timeout),
            "--sessions", str(options.abuse_sessions),
            "--frames-per-tick", str(options.abuse_frames_per_tick),
            "--reconnect-delay", str(options.abuse_reconnect_delay),
            "--http-rate", str(options.abuse_http_rate),
            "--http-in-flight", str(options.abuse_http_in_flight),
        ]
        niceness = options.abuser_nice
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
        )
        log(f"abuser pid {self.process.pid} (nice +{niceness})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        try:
            return process_cpu(self.pid)
        except OSError:
            return 0.0

    async def stop(self, reactor: Any) -> dict[str, Any]:
        """SIGTERM, wait (without blocking the reactor) and return its counts."""
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.process.poll() is None and time.monotonic() < deadline:
            await sleep(reactor, 0.1)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
            return {"error": "the abuser did not stop within 15 s of SIGTERM"}
        try:
            with open(self.report_path) as f:
                counts: dict[str, Any] = json.load(f)
                return counts
        except (OSError, ValueError) as e:
            return {"error": f"no counts from the abuser: {e}"}


# ------------------------------------------------------------------------------ measuring


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--victims", type=int, default=5,
                        help="victim conversations, each a customer and an employee "
                             "(default %(default)s)")
    parser.add_argument("--rate", type=float, default=15.0,
                        help="victim message POSTs per second in all; keep it under the "
                             "per-user limit of 2/s per participant (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of victim traffic before the first window, and of "
                             "abuse before each abuse window (default %(default)s)")
    parser.add_argument("--abuse-sessions", type=int, default=24,
                        help="STOMP sessions the abuser keeps trying to hold; a third each "
                             "flood transactions, loop SUBSCRIBE/UNSUBSCRIBE, or just hold "
                             "(default %(default)s, over the 20 allowed)")
    parser.add_argument("--abuse-frames-per-tick", type=int, default=20,
                        help="frames (or SUBSCRIBE/UNSUBSCRIBE pairs) each flooding session "
                             "sends every 10 ms (default %(default)s)")
    parser.add_argument("--abuse-reconnect-delay", type=float, default=0.1,
                        help="seconds before the abuser reopens a session the server ended "
                             "(default %(default)s)")
    parser.add_argument("--abuse-http-rate", type=float, default=750.0,
                        help="POST /v1/conversation per second (default %(default)s: the "
                             "audit's 6,013 in 8 s)")
    parser.add_argument("--abuse-http-in-flight", type=int, default=32,
                        help="those requests in flight at most (default %(default)s)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the server (all its threads), this generator and the "
                             "abuser at this nice value, e.g. -10 to shield the measurement "
                             "from other work on a shared machine (needs the privilege; "
                             "default %(default)s: unchanged)")
    parser.add_argument("--abuser-nice", type=int, default=0,
                        help="run the abuser child at this (positive) nice value: it stands "
                             "for clients on other machines, and on a 2-core box its own CPU "
                             "otherwise competes with the server's (default %(default)s)")
    parser.add_argument("--http-connections", type=int, default=8,
                        help="the victims' persistent HTTP connections (default %(default)s)")
    common_arguments(parser, duration=10.0, timeout=240.0)
    # The child process's own arguments.
    parser.add_argument("--abuser", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--conversation", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frames-per-tick", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reconnect-delay", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--http-rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--http-in-flight", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.abuser:
        return abuser_main(options)
    if options.victims < 1 or options.rate <= 0 or options.repeats < 1:
        parser.error("--victims, --rate and --repeats must be positive")
    report: dict[str, Any] = {
        "benchmark": "abuse",
        "victims": options.victims,
        "victim_rate_per_s": options.rate,
        "abuse": {
            "sessions": options.abuse_sessions,
            "patterns": list(PATTERNS),
            "frames_per_tick": options.abuse_frames_per_tick,
            "reconnect_delay_s": options.abuse_reconnect_delay,
            "http_rate_per_s": options.abuse_http_rate,
            "abuser_nice": options.abuser_nice,
        },
        "generator_open_files": raise_nofile(),
    }
    gc_log = tempfile.NamedTemporaryFile(prefix="medichat-gc-", suffix=".log", delete=False)
    gc_log.close()
    server = Server(server_options(options), keep=options.keep, repo=options.server_tree,
                    env={"MEDICHAT_GC_PAUSES": gc_log.name})
    abusers: list[Abuser] = []

    def cleanup() -> None:
        for abuser in abusers:
            if abuser.process.poll() is None:
                abuser.process.kill()
                abuser.process.wait(5)
        if not options.keep:
            os.unlink(gc_log.name)

    async def measure(reactor: Any, report: dict[str, Any]) -> None:
        if options.nice:
            report["nice"] = renice(server.pid, options.nice)
        await sleep(reactor, options.settle)
        idle = await idle_window(reactor, server, options.idle_window)
        report["noise"] = noise_figures(idle)

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = options.http_connections
        pool.retryAutomatically = False
        http = HTTPClient(Agent(reactor, pool=pool))
        base = f"http://127.0.0.1:{server.port}/api"

        async def create(token: str) -> str:
            response = await http.post(f"{base}/v1/conversation",
                                       headers={"Authorization": f"Bearer {token}"})
            body = await response.json()
            if response.code != 201:
                raise RuntimeError(f"POST /v1/conversation: {response.code} {body}")
            conversation_id: str = body["id"]
            return conversation_id

        abuser_conversation = await create(server.token(ABUSER, "abuser", "customer"))
        watched = f"/v1/topic/conversation/{abuser_conversation}"
        conversations = []
        specs = []
        for number in range(options.victims):
            customer = server.token(str(uuid.uuid4()), f"customer-{number}", "customer")
            employee = server.token(str(uuid.uuid4()), f"nurse-{number}", "employee")
            conversation = Conversation(await create(customer), customer, employee)
            conversations.append(conversation)
            topic = f"/v1/topic/conversation/{conversation.id}"
            specs.append(ClientSpec(customer, 10000, (subscribe_frame(topic),),
                                    (number, "customer")))
            specs.append(ClientSpec(employee, 10000, (
                subscribe_frame(watched, "w", None), subscribe_frame(topic)), (number, "employee")))
        population = Population(reactor, server.port, concurrency=options.concurrency)
        traffic = Traffic(reactor, base, http, conversations)
        population.message_handler = traffic.on_message
        report["open"] = await open_population(reactor, population, specs, server)
        if population.failures:
            raise RuntimeError(f"victim sessions failed to open: {population.failure_reasons}")
        for client in population.clients:
            number, role = client.spec.tag
            setattr(conversations[number], role, client)
        population.start_heartbeats(population.client_send_interval(10000))

        log(f"victims: {options.rate:g} message POSTs/s over {options.victims} conversations")
        traffic.start(options.rate)
        await sleep(reactor, options.warmup)
        edges: list[tuple[str, Snapshot, Snapshot, float, dict[str, Any] | None]] = []
        waits: dict[int, float] = {}
        walls: dict[int, tuple[float, float]] = {}
        for repeat in range(options.repeats):
            for phase in ("idle", "abuse"):
                abuser = None
                if phase == "abuse":
                    abuser = Abuser(server, abuser_conversation, options)
                    abusers.append(abuser)
                    await sleep(reactor, options.warmup)
                log(f"window {repeat + 1}/{options.repeats} {phase}: {options.duration:g}s")
                cpu_before = abuser.cpu() if abuser else 0.0
                waited = run_queue_wait(server.pid)
                a, wall_a = Snapshot(server.pid), time.time()
                await sleep(reactor, options.duration)
                b, wall_b = Snapshot(server.pid), time.time()
                walls[len(edges)] = (wall_a, wall_b)
                waits[len(edges)] = run_queue_wait(server.pid) - waited
                abuser_cpu = (abuser.cpu() - cpu_before) if abuser else 0.0
                counts = await abuser.stop(reactor) if abuser else None
                if counts is not None:
                    counts["cpu_s_in_window"] = round(abuser_cpu, 3)
                    log(f"  abuser: {counts}")
                    # Let the server finish with the abuser's last connections.
                    await sleep(reactor, 2.0)
                edges.append((phase, a, b, abuser_cpu, counts))
        traffic.stop()

        log("draining")
        await traffic.drain(reactor)
        population.stop_heartbeats()

        windows = []
        for index, (phase, a, b, _, counts) in enumerate(edges):
            records = [r for r in traffic.sent.values() if a.at <= r.sent < b.at]
            committed = [r for r in records if r.status == 201]
            statuses: dict[str, int] = {}
            for r in records:
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            delivery = latency_figures(
                [r.delivered - r.sent for r in committed if r.delivered is not None])
            response = latency_figures(
                [r.responded - r.sent for r in committed if r.responded is not None])
            figures = {"phase": phase, **window_figures(a, b)}
            figures.update({
                "server_run_queue_wait_s": round(waits[index], 3),
                "posted": len(records),
                "statuses": statuses,
                "not_delivered_to_other": sum(1 for r in committed if r.delivered is None),
                "rest_post_p50_ms": response["p50_ms"],
                "rest_post_p99_ms": response["p99_ms"],
                "stomp_delivery_p50_ms": delivery["p50_ms"],
                "stomp_delivery_p99_ms": delivery["p99_ms"],
                "stomp_delivery_max_ms": delivery["max_ms"],
                "gc": gc_pauses(gc_log.name, *walls[index]),
            })
            if counts is not None:
                figures["abuser"] = counts
            windows.append(figures)
            log(f"  {phase}: REST p50 {response['p50_ms']} p99 {response['p99_ms']} ms; "
                f"STOMP p50 {delivery['p50_ms']} p99 {delivery['p99_ms']} ms; server "
                f"{figures['server_cpu_pct_of_core']}% of a core, rss "
                f"{figures['server_rss_kib']} KiB, waited {waits[index]:.2f}s for a CPU; "
                f"GC max {figures['gc'].get('max_ms')} ms; other processes "
                f"{figures['other_processes_busy_cores']} cores")
        report["windows"] = windows
        report["summary"] = _summary(windows)
        report["clients"] = population.summary()
        await pool.closeCachedConnections()

    return run(options, server, measure, report, cleanup=cleanup)


def run_queue_wait(pid: int) -> float:
    """
    Seconds the threads of a process have spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat): on a shared machine, the share of the noise the server
    itself felt.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def renice(server_pid: int, value: int) -> dict[str, Any]:
    """
    Set the nice value of every thread of the server and of this process (the abuser,
    started later, inherits it); threads the server starts later inherit it from theirs.
    """
    done = {"value": value, "server_threads": 0}
    for task in os.listdir(f"/proc/{server_pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(task), value)
        done["server_threads"] += 1
    for task in os.listdir("/proc/self/task"):
        os.setpriority(os.PRIO_PROCESS, int(task), value)
    log(f"nice {value}: the server ({done['server_threads']} threads), generator, abuser")
    return done


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per phase, and abuse over idle: the goal is at most 2 for each latency."""
    import statistics

    keys = ["rest_post_p50_ms", "rest_post_p99_ms", "stomp_delivery_p50_ms",
            "stomp_delivery_p99_ms", "server_cpu_pct_of_core", "server_rss_kib",
            "server_run_queue_wait_s", "other_processes_busy_cores"]
    summary: dict[str, Any] = {}
    for phase in ("idle", "abuse"):
        chosen = [w for w in windows if w["phase"] == phase]
        summary[phase] = {
            key: round(statistics.median(v), 3) if (v := [
                w[key] for w in chosen if w.get(key) is not None]) else None
            for key in keys
        }
    ratios: dict[str, float | None] = {}
    for key in keys[:4]:
        idle, abuse = summary["idle"][key], summary["abuse"][key]
        ratios[key] = round(abuse / idle, 2) if idle and abuse is not None else None
    summary["abuse_over_idle"] = ratios
    idles = [w for w in windows if w["phase"] == "idle"]
    if len(idles) >= 2:
        # The same measurement twice with no abuse: how much the figures move by themselves.
        summary["idle_spread"] = {
            key: [w[key] for w in idles] for key in keys[:4]
        }
    summary["goal_met"] = all(r is not None and r <= 2.0 for r in ratios.values())
    return summary


if __name__ == "__main__":
    sys.exit(main())
