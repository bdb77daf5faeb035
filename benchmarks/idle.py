#!/usr/bin/env python3
"""
What idle STOMP sessions cost the medichat server: memory per session and CPU.

Starts the real server (C{twistd -n medichat}) on a loopback port with a fresh data
directory, measures its RSS at rest, opens N STOMP-over-WebSocket sessions that exchange
heart-beats both ways and do nothing else, waits until all are connected and the server
has settled, then measures the server's CPU over a few windows.  Prints one JSON object.

    python benchmarks/idle.py --sessions 10000 --duration 10
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
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
    window_figures,
)

GOAL_KIB_PER_SESSION = 16
GOAL_CPU_PCT_AT_10000 = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--sessions", type=int, default=1000,
                        help="idle STOMP sessions to open (default %(default)s)")
    parser.add_argument("--heartbeat", type=int, default=10000,
                        help="heart-beat the clients ask for both ways, in ms "
                             "(default %(default)s)")
    parser.add_argument("--server-heartbeat", type=int, default=None,
                        help="the server's --stomp-heartbeat both ways, in ms (default: the "
                             "server's own, 10000); the negotiated interval is the larger "
                             "of the two sides'")
    common_arguments(parser, duration=30.0, timeout=600.0)
    options = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "idle",
        "sessions": options.sessions,
        "heartbeat_ms": options.heartbeat,
        "goals": {
            "rss_per_session_kib_max": GOAL_KIB_PER_SESSION,
            "server_cpu_pct_of_core_max_at_10000": GOAL_CPU_PCT_AT_10000,
        },
        "generator_open_files": raise_nofile(),
    }
    extra = []
    if options.server_heartbeat is not None:
        extra = ["--stomp-heartbeat", f"{options.server_heartbeat},{options.server_heartbeat}"]
    report["server_heartbeat_ms"] = options.server_heartbeat
    report["fast_paths"] = not options.no_fast_paths
    server = Server(server_options(options, *extra), keep=options.keep,
                    repo=options.server_tree)

    async def measure(reactor: Any, report: dict[str, Any]) -> None:
        await sleep(reactor, options.settle)
        idle = await idle_window(reactor, server, options.idle_window)
        report["noise"] = noise_figures(idle)
        baseline = Snapshot(server.pid).memory
        report["baseline"] = baseline
        log(f"baseline RSS {baseline['rss_kib']} KiB; opening {options.sessions} sessions")

        population = Population(reactor, server.port, concurrency=options.concurrency)
        specs = [
            ClientSpec(server.token(str(uuid.uuid4()), f"idle-{i}", "customer"),
                       options.heartbeat)
            for i in range(options.sessions)
        ]
        report["open"] = await open_population(reactor, population, specs, server)
        population.start_heartbeats(population.client_send_interval(options.heartbeat))
        log(f"settling {options.settle:g}s")
        await sleep(reactor, options.settle)

        sessions = len(population.clients)
        windows = []
        before = Snapshot(server.pid)
        report["after_settle"] = before.memory
        for number in range(options.repeats):
            log(f"window {number + 1}/{options.repeats}: {options.duration:g}s")
            await sleep(reactor, options.duration)
            after = Snapshot(server.pid)
            figures = window_figures(before, after)
            figures["live_sessions"] = population.live
            figures["rss_per_session_kib"] = (
                round((after.memory["rss_kib"] - baseline["rss_kib"]) / sessions, 2)
                if sessions else None
            )
            windows.append(figures)
            log(f"  server {figures['server_cpu_pct_of_core']}% of a core, "
                f"{figures['rss_per_session_kib']} KiB/session, "
                f"other processes {figures['other_processes_busy_cores']} cores")
            before = after
        population.stop_heartbeats()
        report["windows"] = windows
        report["median"] = {
            key: median_of(windows, key)
            for key in ("server_cpu_pct_of_core", "rss_per_session_kib", "server_rss_kib",
                        "generator_cpu_s", "other_processes_busy_cores")
        }
        report["clients"] = population.summary()
        per_session = report["median"]["rss_per_session_kib"]
        cpu = report["median"]["server_cpu_pct_of_core"]
        cpu_goal = GOAL_CPU_PCT_AT_10000 * max(sessions, 1) / 10000
        report["goals"]["server_cpu_pct_of_core_max_scaled_to_this_count"] = round(cpu_goal, 3)
        report["goals_met"] = {
            "rss_per_session": per_session is not None and per_session <= GOAL_KIB_PER_SESSION,
            # The CPU goal is stated for 10,000 sessions; scaled linearly for other counts.
            "server_cpu": cpu is not None and cpu < cpu_goal,
        }

    return run(options, server, measure, report)


if __name__ == "__main__":
    sys.exit(main())
