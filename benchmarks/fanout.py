#!/usr/bin/env python3
"""
What fanning one publication out to many subscribers costs the medichat server.

Starts the real server with C{--heartbeat-topic-interval} (one publication on
C{/v1/topic/heartbeat} every interval), opens N STOMP-over-WebSocket sessions that each
subscribe to that topic, and counts the MESSAGE frames they receive against the server's
CPU time over a few windows.  Windows start and end halfway between two publications, so
each one holds whole fan-outs only.  Checks that every session got every publication.
Prints one JSON object.

    python benchmarks/fanout.py --sessions 10000 --duration 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
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
TOPIC = "/v1/topic/heartbeat"


class Publications:
    """
    Which publications arrived, when first, how often, and at which client; read from the
    C{message-id} header only.
    """

    def __init__(self) -> None:
        self.index: dict[bytes, list[Any]] = {}  # message-id -> [seq, first arrival, count]
        self.first_arrival: list[float] = []
        self.unparsed = 0

    def on_message(self, client: BenchClient, payload: bytes, now: float) -> None:
        start = payload.find(b"\nmessage-id:")
        if start < 0:
            self.unparsed += 1
            return
        start += 12
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
    common_arguments(parser, duration=10.0, timeout=600.0)
    options = parser.parse_args()
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
        report["goals_met"] = {
            "server_cpu_per_delivery": cost is not None and cost <= GOAL_US_PER_DELIVERY,
            "every_session_got_every_publication": all(
                w["missing_deliveries"] == 0 and w["sessions_missing_some"] == 0
                for w in windows
            ),
        }

    return run(options, server, measure, report)


if __name__ == "__main__":
    sys.exit(main())
