#!/usr/bin/env python3
"""
What fanning one publication out to many subscribers costs the medichat server.

Starts the real server with C{--heartbeat-topic-interval} (one publication on
C{/v1/topic/heartbeat} every interval), opens N STOMP-over-WebSocket sessions that each
subscribe to that topic, and counts the MESSAGE frames they receive against the server's
CPU time over a few windows.  Windows start and end halfway between two publications, so
each one holds whole fan-outs only.  Checks that every session got every publication.

In the same run, the reference the goal is set against (C{--reference-rounds}, 3 by
default): a child process opens as many loopback TCP connections as there were sessions
and C{send()}s the bytes of one delivery (the C{MESSAGE} frame the clients got, in its
WebSocket frame) to each, a round at a time, counting its CPU in the sending loop only;
the goal is at most 1.5x that per send.  Prints one JSON object.

    python benchmarks/fanout.py --sessions 10000 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
import uuid
from statistics import median
from typing import Any

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
    raise_nofile,
    run,
    server_options,
    sleep,
    subscribe_frame,
    window_figures,
)

GOAL_US_PER_DELIVERY = 5.0
GOAL_OVER_BARE_SEND = 1.5
TOPIC = "/v1/topic/heartbeat"


def bare_send(connections: int, size: int, rounds: int) -> dict[str, Any]:
    """
    The reference: C{connections} loopback TCP connections (C{TCP_NODELAY} on the
    sending side, as the server sets it), and C{rounds} rounds of one C{send()} of
    C{size} bytes to each.  The CPU of each round's sending loop (user + system, in this
    process), per send.  The receiving ends live in a forked child that reads whatever
    arrives, as the benchmark's clients do.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    address = listener.getsockname()
    child = os.fork()
    if child == 0:  # the receiving ends
        try:
            listener.close()
            poller = select.epoll()
            receivers = {}
            for _ in range(connections):
                client = socket.create_connection(address)
                receivers[client.fileno()] = client
                poller.register(client.fileno(), select.EPOLLIN)
            while receivers:
                for fd, _ in poller.poll(1.0):
                    if not receivers[fd].recv(65536):
                        poller.unregister(fd)
                        receivers.pop(fd).close()
        finally:
            os._exit(0)
    senders = []
    for _ in range(connections):
        server, _ = listener.accept()
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.setblocking(False)
        senders.append(server)
    data = b"x" * size
    per_send = []
    for _ in range(rounds):
        time.sleep(0.5)
        started = time.process_time()
        for sender in senders:
            sender.send(data)
        per_send.append((time.process_time() - started) * 1e6 / connections)
    for sender in senders:
        sender.close()
    os.waitpid(child, 0)
    return {"connections": connections, "bytes": size,
            "us_per_send": [round(u, 2) for u in per_send],
            "median_us_per_send": round(median(per_send), 2)}


def run_bare_send(connections: int, size: int, rounds: int) -> dict[str, Any]:
    """L{bare_send} in a child process (its own files and its own CPU)."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--bare-send", str(connections),
         "--bare-send-bytes", str(size), "--reference-rounds", str(rounds)],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        return {"error": result.stderr[-500:]}
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


class Publications:
    """
    Which publications arrived, when first, how often, and at which client; read from the
    C{message-id} header only.
    """

    def __init__(self) -> None:
        self.index: dict[bytes, list[Any]] = {}  # message-id -> [seq, first arrival, count]
        self.first_arrival: list[float] = []
        self.unparsed = 0
        self.payload_size: int | None = None

    def on_message(self, client: BenchClient, payload: bytes, now: float) -> None:
        start = payload.find(b"\nmessage-id:")
        if start < 0:
            self.unparsed += 1
            return
        start += 12
        if self.payload_size is None:
            self.payload_size = len(payload)
        message_id = payload[start:payload.find(b"\n", start)]
        record = self.index.get(message_id)
        if record is None:
            record = [len(self.first_arrival), now, 0]
            self.index[message_id] = record
            self.first_arrival.append(now)
        record[2] += 1
        seen = client.seen
        if seen is None:
            client.seen = [record[0]]
        else:
            seen.append(record[0])

    def deliveries(self) -> int:
        return sum(record[2] for record in self.index.values())

    def in_window(self, start: float, end: float) -> list[list[Any]]:
        return [r for r in self.index.values() if start <= r[1] < end]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--sessions", type=int, default=1000,
                        help="subscribed STOMP sessions (default %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="the server's --heartbeat-topic-interval, in seconds "
                             "(default %(default)s)")
    parser.add_argument("--heartbeat", type=int, default=10000,
                        help="STOMP heart-beat the clients ask for both ways, in ms "
                             "(default %(default)s)")
    parser.add_argument("--reference-rounds", type=int, default=3,
                        help="rounds of the bare send() reference, 0 for none "
                             "(default %(default)s)")
    common_arguments(parser, duration=10.0, timeout=600.0)
    # The reference child's own arguments.
    parser.add_argument("--bare-send", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-send-bytes", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.bare_send:
        print(json.dumps(bare_send(options.bare_send, options.bare_send_bytes,
                                   max(1, options.reference_rounds))))
        return 0
    report: dict[str, Any] = {
        "benchmark": "fanout",
        "sessions": options.sessions,
        "interval_s": options.interval,
        "heartbeat_ms": options.heartbeat,
        "fast_paths": not options.no_fast_paths,
        "goals": {"server_cpu_us_per_delivery_max_at_10000": GOAL_US_PER_DELIVERY},
        "generator_open_files": raise_nofile(),
    }
    server = Server(server_options(options, "--heartbeat-topic-interval", str(options.interval)),
                    keep=options.keep, repo=options.server_tree)

    async def measure(reactor: Any, report: dict[str, Any]) -> None:
        await sleep(reactor, options.settle)
        idle = await idle_window(reactor, server, options.idle_window)
        report["noise"] = noise_figures(idle)

        population = Population(reactor, server.port, concurrency=options.concurrency)
        publications = Publications()
        population.message_handler = publications.on_message
        subscribe = (subscribe_frame(TOPIC, "0", "r"),)
        specs = [
            ClientSpec(server.token(str(uuid.uuid4()), f"fan-{i}", "customer"),
                       options.heartbeat, subscribe)
            for i in range(options.sessions)
        ]
        log(f"opening {options.sessions} subscribed sessions")
        report["open"] = await open_population(reactor, population, specs, server)
        population.start_heartbeats(population.client_send_interval(options.heartbeat))
        await sleep(reactor, options.settle)

        # Align: find when a publication arrives, and start halfway to the next one.
        seen_before = len(publications.first_arrival)
        deadline = time.monotonic() + 5 * options.interval + 5
        while len(publications.first_arrival) == seen_before:
            if time.monotonic() > deadline:
                raise RuntimeError("no publication arrived on " + TOPIC)
            await sleep(reactor, 0.02)
        phase = publications.first_arrival[-1]
        per_window = max(1, round(options.duration / options.interval))
        length = per_window * options.interval
        start = phase + options.interval / 2
        while start < time.monotonic():
            start += options.interval
        await sleep(reactor, start - time.monotonic())

        bounds = []
        lateness = []
        before = Snapshot(server.pid)
        lateness.append(before.at - start)
        live_at_start = [population.live]
        for number in range(options.repeats):
            end = start + (number + 1) * length
            log(f"window {number + 1}/{options.repeats}: {length:g}s ({per_window} "
                f"publications)")
            await sleep(reactor, end - time.monotonic())
            after = Snapshot(server.pid)
            lateness.append(after.at - end)
            bounds.append((before, after))
            live_at_start.append(population.live)
            before = after

        # Let the last fan-out finish arriving before counting.
        total = publications.deliveries()
        for _ in range(50):
            await sleep(reactor, 0.2)
            now_total = publications.deliveries()
            if now_total == total:
                break
            total = now_total
        population.stop_heartbeats()

        windows = []
        for (a, b), live in zip(bounds, live_at_start, strict=False):
            records = publications.in_window(a.at, b.at)
            count = len(records)
            delivered = sum(r[2] for r in records)
            expected = count * live
            sequences = {r[0] for r in records}
            short = 0
            for client in population.clients:
                got = sum(1 for s in (client.seen or ()) if s in sequences)
                if got < count:
                    short += 1
            figures = window_figures(a, b)
            server_cpu = figures["server_cpu_s"]
            figures.update({
                "publications": count,
                "subscribers": live,
                "deliveries": delivered,
                "deliveries_per_s": round(delivered / figures["seconds"], 1),
                "missing_deliveries": expected - delivered,
                "sessions_missing_some": short,
                "server_cpu_us_per_delivery": (
                    round(server_cpu * 1e6 / delivered, 2) if delivered else None
                ),
                "generator_cpu_us_per_delivery": (
                    round(figures["generator_cpu_s"] * 1e6 / delivered, 2) if delivered else None
                ),
            })
            windows.append(figures)
            log(f"  {count} publications x {live} subscribers: {delivered} delivered, "
                f"{figures['server_cpu_us_per_delivery']} us server CPU each, "
                f"{expected - delivered} missing; other processes "
                f"{figures['other_processes_busy_cores']} cores")
        report["windows"] = windows
        report["median"] = {
            key: median_of(windows, key)
            for key in ("server_cpu_us_per_delivery", "deliveries_per_s",
                        "server_cpu_pct_of_core", "generator_cpu_us_per_delivery",
                        "missing_deliveries", "other_processes_busy_cores", "server_rss_kib")
        }
        report["window_edge_lateness_ms_max"] = round(1000 * max(lateness), 1)
        report["unparsed_messages"] = publications.unparsed
        report["clients"] = population.summary()
        cost = report["median"]["server_cpu_us_per_delivery"]
        reference = None
        if options.reference_rounds > 0 and publications.payload_size is not None:
            size = publications.payload_size
            # The server's WebSocket frame header: 2 bytes, 4 from 126 bytes of payload.
            wire = size + (2 if size < 126 else 4)
            log(f"reference: bare send() of {wire} bytes to {options.sessions} loopback "
                f"connections, {options.reference_rounds} rounds")
            figures = run_bare_send(options.sessions, wire, options.reference_rounds)
            report["bare_send"] = figures
            reference = figures.get("median_us_per_send")
            if reference:
                log(f"  bare send(): {figures['us_per_send']} us each")
                report["over_bare_send"] = (
                    round(cost / reference, 2) if cost is not None else None
                )
        report["goals_met"] = {
            "server_cpu_per_delivery": cost is not None and cost <= GOAL_US_PER_DELIVERY,
            "within_1.5x_bare_send": (
                cost is not None and reference is not None
                and cost <= GOAL_OVER_BARE_SEND * reference
            ),
            "every_session_got_every_publication": all(
                w["missing_deliveries"] == 0 and w["sessions_missing_some"] == 0
                for w in windows
            ),
        }

    return run(options, server, measure, report)


if __name__ == "__main__":
    sys.exit(main())
