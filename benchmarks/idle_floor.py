#!/usr/bin/env python3
"""
The floor under C{idle.py}: what N idle connections cost a bare Twisted server that does
nothing but their heart-beats, on this machine, now.

Starts a child process running Twisted's default reactor with a plain protocol (no
WebSocket, no STOMP, no medichat): it reads whatever arrives and, from one timer every
100 ms, writes one byte to the hundredth of its connections whose turn it is, so that
each connection gets a byte every C{--interval} seconds (what medichat's heart-beat
timer wheel does), with the socket's own C{send()} as medichat's fast path does
(C{--send direct}, the default) or with C{transport.write}.  This process opens N
connections to it and sends one byte on each every C{--interval} seconds, spread evenly
(what the STOMP clients' heart-beats do).
Prints the child's CPU over each window, in % of one core, and per connection, as one
JSON object.  Compare with C{idle.py}'s C{server_cpu_pct_of_core} for the same N and
interval, run right before or after.

    python benchmarks/idle_floor.py --sessions 10000 --duration 10 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    floor_arguments,
    floor_server,
    process_cpu,
    raise_nofile,
)


def serve(interval: float, direct: bool) -> None:
    """
    The child: a bare Twisted server; prints its port, then serves until killed.

    @param direct: write with the socket's own C{send()} (as medichat's fast path does)
        rather than C{transport.write} (which registers the socket for writing and sends
        on the next reactor turn).
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import LoopingCall

    connections: list[Any] = []

    class Idle(Protocol):
        def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
            connections.append(self.transport)

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            pass

    slots = max(1, round(interval / 0.1))
    turn = [0]

    def beat() -> None:
        slot = turn[0] % slots
        turn[0] += 1
        for transport in connections[slot::slots]:
            if direct:
                transport.socket.send(b"\n")
            else:
                transport.write(b"\n")

    factory = Factory.forProtocol(Idle)
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    LoopingCall(beat).start(0.1, now=False)
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between two bytes each way per connection (default "
                             "%(default)s: STOMP heart-beats of 10,000 ms)")
    parser.add_argument("--settle", type=float, default=3.0)
    floor_arguments(parser, duration=10.0, repeats=2, writes="bytes")
    options = parser.parse_args()
    raise_nofile()
    if options.serve:
        serve(options.interval, options.send == "direct")
        return 0
    with floor_server(
        __file__, "--interval", str(options.interval), "--send", options.send
    ) as (child, port):
        selector = selectors.DefaultSelector()
        sockets = []
        for _ in range(options.sessions):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            sockets.append(s)
        count = len(sockets)
        started = time.monotonic()

        def pump(until: float) -> None:
            # Every connection sends a byte every interval, at its own phase.
            sent = int((time.monotonic() - started) / options.interval * count)
            while True:
                now = time.monotonic()
                if now >= until:
                    return
                due = int((now - started) / options.interval * count)
                while sent < due:
                    sockets[sent % count].send(b"\n")
                    sent += 1
                for key, _ in selector.select(0.005):
                    key.fileobj.recv(4096)  # type: ignore[union-attr]

        pump(time.monotonic() + options.settle + options.interval)
        windows = []
        for _ in range(options.repeats):
            before, at = process_cpu(child.pid), time.monotonic()
            pump(at + options.duration)
            used, seconds = process_cpu(child.pid) - before, time.monotonic() - at
            windows.append({
                "seconds": round(seconds, 3),
                "server_cpu_pct_of_core": round(100 * used / seconds, 2),
                "server_cpu_us_per_connection_per_interval": round(
                    used / seconds * options.interval / count * 1e6, 2
                ),
            })
            print(f"bare Twisted ({options.send}), {count} idle connections: "
                  f"{windows[-1]['server_cpu_pct_of_core']}% of a core", file=sys.stderr)
        print(json.dumps({"benchmark": "idle_floor", "sessions": count,
                          "interval_s": options.interval, "send": options.send,
                          "windows": windows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
