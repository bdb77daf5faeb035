#!/usr/bin/env python3
"""
The floor under C{msgpath.py}'s HTTP half: what one small JSON POST costs a bare
twisted.web server on this machine, now.

Starts a child process running Twisted's default reactor and a twisted.web L{Site} with
one resource that answers every POST with 201 and a JSON body of about the size of a
posted message's answer (no routing, no authentication, no database, no access log, no
WebSocket).  With C{--server protocol} the child runs no twisted.web: a plain Twisted
L{Protocol} parses each request itself (the head up to its blank line, split into lines
and headers at once, the body by its C{Content-Length}) and writes the same answer with
the same headers in one write: what HTTP/1.1 keep-alive POSTs cost on the same reactor
without twisted.web's per-request machinery, a bound on what replacing it could save.

This process keeps C{--connections} HTTP/1.1 connections alive and POSTs a
JSON body like a chat message's at C{--rate} requests per second in all (a request goes
on a connection whose previous answer has arrived).  Prints, per window, the requests
answered per second and the child's CPU per request (user + system), as one JSON
object.  Compare with C{msgpath.py}'s C{server_cpu_us_per_message} at the same rate.

    python benchmarks/http_floor.py --rate 500 --duration 5 --repeats 3
    python benchmarks/http_floor.py --rate 500 --server protocol
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

from _harness import floor_server, http_answer, process_cpu, split_requests  # noqa: E402

ANSWER = json.dumps({
    "id": "0d6f7a8e-4b1c-4e0f-9a57-2f1c3b5d7e90",
    "conversationId": "5b2f0c1e-8d3a-4f6b-b7e2-9c4d1a0e3f58",
    "userId": "c0a8012e-0000-4000-8000-000000000001",
    "userName": "A customer",
    "userRole": "customer",
    "created": "2026-11-30T12:00:00.000000Z",
    "message": "How often should I take this?",
}).encode()


def serve(server: str) -> None:
    """The child: a bare server; prints its port, then serves until killed."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Answer(Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> bytes:  # noqa: N802 - twisted.web's name
            request.content.read()
            request.setResponseCode(201)
            request.setHeader(b"Content-Type", b"application/json")
            return ANSWER

    class Quiet(Site):
        def log(self, request: Any) -> None:
            pass

    class Parsing(Protocol):
        """HTTP/1.1 keep-alive POSTs with a Content-Length, parsed whole, answered 201."""

        def __init__(self) -> None:
            self.buffer = b""

        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            requests, self.buffer = split_requests(self.buffer + data)
            for _ in requests:
                self.transport.write(http_answer(201, ANSWER))  # type: ignore[union-attr]

    factory: Any = Quiet(Answer()) if server == "twisted.web" else Factory.forProtocol(Parsing)
    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, factory, backlog=1024, interface="127.0.0.1"
    )
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=("twisted.web", "protocol"), default="twisted.web",
                        help="twisted.web's Site (default), or a plain Protocol that "
                             "parses the requests itself")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.server)
        return 0
    body = json.dumps({"message": "How often should I take this?"}).encode()
    request = (
        b"POST /api/v1/conversation/5b2f0c1e-8d3a-4f6b-b7e2-9c4d1a0e3f58/message HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nAuthorization: Bearer " + b"x" * 300 + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with floor_server(__file__, "--server", options.server) as (child, port):
        selector = selectors.DefaultSelector()
        idle: list[socket.socket] = []
        for _ in range(options.connections):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(s, selectors.EVENT_READ)
            idle.append(s)
        answered = [0]
        buffers: dict[socket.socket, bytes] = {}
        started = time.monotonic()
        sent = [0]

        def pump(until: float) -> None:
            while True:
                now = time.monotonic()
                if now >= until:
                    return
                due = int((now - started) * options.rate)
                while sent[0] < due and idle:
                    idle.pop().sendall(request)
                    sent[0] += 1
                sent[0] = max(sent[0], due - options.connections)  # no unbounded backlog
                for key, _ in selector.select(0.001):
                    conn: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = buffers.get(conn, b"") + conn.recv(65536)
                    head, sep, rest = data.partition(b"\r\n\r\n")
                    if not sep:
                        buffers[conn] = data
                        continue
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        buffers[conn] = data
                        continue
                    buffers[conn] = rest[length:]
                    answered[0] += 1
                    idle.append(conn)

        pump(time.monotonic() + 2.0)
        windows = []
        for _ in range(options.repeats):
            before_cpu, before_answered, at = process_cpu(child.pid), answered[0], time.monotonic()
            pump(at + options.duration)
            used, seconds = process_cpu(child.pid) - before_cpu, time.monotonic() - at
            count = answered[0] - before_answered
            windows.append({
                "seconds": round(seconds, 3),
                "answered_per_s": round(count / seconds, 1),
                "server_cpu_us_per_request": round(used * 1e6 / count, 1) if count else None,
            })
            print(f"bare {options.server}: {windows[-1]['answered_per_s']}/s answered, "
                  f"{windows[-1]['server_cpu_us_per_request']} us CPU per request",
                  file=sys.stderr)
        print(json.dumps({"benchmark": "http_floor", "server": options.server,
                          "rate_per_s": options.rate,
                          "connections": options.connections, "windows": windows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
