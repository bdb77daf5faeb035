#!/usr/bin/env python3
"""
The floor under C{msgpath.py}: what one chat message costs a bare server built from the
same stack (Twisted's reactor, twisted.web, Autobahn's WebSocket, SQLite in one thread of
its own, as medichat's store has it, or through a one-thread adbapi pool with C{--hop
adbapi}, as medichat had it until the tenth session on issue 10), doing only a message's
input and output, on this machine, now.

Starts a child process with no medichat code in it.  It serves, on one port as medichat
does, WebSocket connections at C{/ws/CONVERSATION/ROLE} (two per conversation: a customer
and an employee, each registered as the conversation's subscriber; no STOMP handshake)
and C{POST /c/CONVERSATION/ROLE} with a JSON body C{{"message": TEXT}}.  A POST decodes
the body, checks the text, makes the message (an id, the time, the author), queues it for
SQLite (WAL, the default synchronous mode) and answers 201 with the message as JSON once it
is committed; commits are grouped as medichat's are (whatever is queued while a commit
runs goes in the next one, one transaction for all: the message rows and the author's
receipt rows).  After the commit each message goes out as a STOMP C{MESSAGE} frame (the
same JSON, a C{message} event) to both participants, and a C{received} frame to its author:
the three deliveries of C{msgpath.py}'s messages.  The frames are written as medichat's
fast path does (C{--send direct}: WebSocket frame header and STOMP frame built by hand, the
socket's own C{send()}), or through Autobahn's C{sendMessage} (C{--send write}).  No
authentication, no routing, no access log, no rate limits, no event feed, no metrics.

This process opens the WebSocket connections and C{--http-connections} keep-alive HTTP
connections, POSTs at C{--rate} messages per second in all (round-robin over the
conversations, alternating the author; a POST goes on a connection whose previous answer
has arrived), reads every frame, and prints, per window, the messages answered per second,
the frames delivered per second and the child's CPU per message (user + system, every
thread), as one JSON object; at the end it checks that every POST was answered and every
delivery arrived.  Compare with C{msgpath.py}'s C{server_cpu_us_per_message} at the same
rate.

With C{--http protocol} no twisted.web serves the POSTs: a plain L{Protocol} parses each
request itself and hands a WebSocket handshake's connection to Autobahn's protocol (the
floor without twisted.web's per-request work).

With C{--store postgresql} the messages go to PostgreSQL instead (a database
C{medichat_bench_<hex>} made on C{--database} for the run and dropped after it), through
one txpostgres connection: a group is one round trip, the message rows and the receipt
rows in one multi-statement query, which PostgreSQL runs as one transaction (one commit,
one WAL flush).  That is the least a server on this stack can do per group.  The report
then adds the CPU of the database's backends per message, and C{pgbench}'s one-client
single-row INSERT rate on the same database before and after the windows, the reference
of issue 10's PostgreSQL goal.

    python benchmarks/message_floor.py --rate 500 --duration 5 --repeats 3
    python benchmarks/message_floor.py --store postgresql --rate 1000
    python benchmarks/message_floor.py --rate 600 --server-python /tmp/pypy/bin/python
    python benchmarks/message_floor.py --rate 2500 --http protocol
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import (  # noqa: E402
    floor_arguments,
    floor_server,
    http_answer,
    percentile,
    process_cpu,
    process_times,
    raise_nofile,
    split_requests,
)

TEXT = "how are you feeling today?"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"
ROLES = ("customer", "employee")


def serve(database: str | None, direct: bool, postgresql: str | None = None,
          hop: str = "thread", http: str = "twisted.web") -> None:
    """
    The child: the bare server; prints its port, then serves until killed.

    @param database: the SQLite file, or L{None} to store nothing (a message is answered
        and delivered as soon as it is made) unless C{postgresql} is given.
    @param postgresql: a libpq connection string: commit to PostgreSQL instead.
    @param hop: how SQLite's thread is reached: C{"thread"} (a queue in, C{callFromThread}
        out) or C{"adbapi"}.
    @param http: C{"twisted.web"} (a L{Site}, Autobahn's resource for the WebSockets), or
        C{"protocol"}: a plain L{Protocol} that parses each request itself and hands a
        WebSocket handshake's connection to Autobahn's protocol.
    """
    import datetime
    import itertools
    import queue
    import sqlite3
    import threading
    import uuid

    from autobahn.twisted.resource import WebSocketResource
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.enterprise import adbapi
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol
    from twisted.python.failure import Failure
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Request, Site

    subscribers: dict[str, list[Any]] = {}

    class Subscriber(WebSocketServerProtocol):
        key: tuple[str, int] | None = None

        def onConnect(self, request: Any) -> None:  # noqa: N802 - Autobahn's name
            _, _, conversation, role = request.path.split("/")
            self.key = (conversation, int(role))
            subscribers.setdefault(conversation, [None, None])[int(role)] = self

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:  # noqa: N802,N803
            if self.key is not None:
                subscribers[self.key[0]][self.key[1]] = None

        def deliver(self, frame: bytes) -> None:
            if not direct:
                self.sendMessage(frame, isBinary=False)
                return
            size = len(frame)
            if size < 126:
                head = bytes((0x81, size))
            elif size < 65536:
                head = b"\x81\x7e" + size.to_bytes(2, "big")
            else:
                head = b"\x81\x7f" + size.to_bytes(8, "big")
            data = head + frame
            transport = self.transport
            if not transport.dataBuffer and not transport._tempDataLen:
                sent = transport.socket.send(data)
                if sent == len(data):
                    return
                data = data[sent:]
            transport.write(data)

    frame_ids = itertools.count(1)

    def frame(destination: str, body: bytes) -> bytes:
        return b"MESSAGE\ndestination:%s\nsubscription:0\nmessage-id:%d\n" \
            b"content-type:application/json\ncontent-length:%d\n\n%s\x00" % (
                destination.encode(), next(frame_ids), len(body), body)

    class OwnThread:
        """One connection in one thread: a queue in, C{callFromThread} out."""

        def __init__(self, path: str) -> None:
            self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
            threading.Thread(target=self.loop, args=(path,), daemon=True).start()

        def loop(self, path: str) -> None:
            connection = sqlite3.connect(path, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            call = reactor.callFromThread  # type: ignore[attr-defined]
            while True:
                function, args, done = self.queue.get()
                cursor = connection.cursor()
                try:
                    result = function(cursor, *args)
                    connection.commit()
                except BaseException:
                    connection.rollback()
                    call(done.errback, Failure())
                else:
                    call(done.callback, result)

        def runInteraction(self, function: Any, *args: Any) -> Any:  # noqa: N802 - adbapi's
            done: Deferred[Any] = Deferred()
            self.queue.put((function, args, done))
            return done

    pool: Any = None
    if database is not None and hop == "adbapi":
        pool = adbapi.ConnectionPool(
            "sqlite3", database, check_same_thread=False, cp_min=1, cp_max=1,
            cp_openfun=lambda c: c.execute("PRAGMA journal_mode = WAL"),
        )
    elif database is not None:
        pool = OwnThread(database)
    queued: list[tuple[dict[str, Any], Any]] = []
    committing = [False]
    connection: Any = None
    if postgresql is not None:
        from txpostgres import txpostgres

        connection = txpostgres.Connection(reactor=reactor)

    def write_postgresql(messages: list[dict[str, Any]]) -> Any:
        # Autocommit: the two INSERTs of one query string are one implicit transaction.
        rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(messages))
        receipts = ", ".join(["(%s, %s, %s)"] * len(messages))
        params: list[Any] = []
        for m in messages:
            params += [m["id"], m["conversationId"], m["userRole"], m["created"], m["message"]]
        for m in messages:
            params += [m["id"], m["userRole"], m["created"]]
        return connection.runOperation(
            f"INSERT INTO messages VALUES {rows}; INSERT INTO receipts VALUES {receipts}",
            params,
        )

    def write(transaction: Any, messages: list[dict[str, Any]]) -> None:
        transaction.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
            [(m["id"], m["conversationId"], m["userRole"], m["created"], m["message"])
             for m in messages],
        )
        transaction.executemany(
            "INSERT INTO receipts VALUES (?, ?, ?)",
            [(m["id"], m["userRole"], m["created"]) for m in messages],
        )

    def commit() -> None:
        batch = queued[:]
        del queued[:]
        if pool is None and connection is None:
            committed(None, batch)
            return
        committing[0] = True
        messages = [m for m, _ in batch]
        if connection is not None:
            write_postgresql(messages).addCallback(committed, batch)
        else:
            assert pool is not None
            pool.runInteraction(write, messages).addCallback(committed, batch)

    def committed(_: None, batch: list[tuple[dict[str, Any], Any]]) -> None:
        committing[0] = False
        if queued:
            commit()
        for message, answer in batch:
            answer(201, json.dumps(message).encode())
            conversation = message["conversationId"]
            event = json.dumps({"type": "message", "data": message}).encode()
            destination = f"/v1/topic/conversation/{conversation}"
            pair = subscribers.get(conversation, (None, None))
            for subscriber in pair:
                if subscriber is not None:
                    subscriber.deliver(frame(destination, event))
            author = pair[ROLES.index(message["userRole"])]
            if author is not None:
                received = json.dumps({"type": "received", "data": {
                    "messageId": message["id"], "conversationId": conversation,
                    "received": message["created"]}}).encode()
                author.deliver(frame(destination, received))

    def post(path: bytes, body: bytes, answer: Any) -> None:
        try:
            _, _, conversation, role = path.decode().split("/")
            text = json.loads(body)["message"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(text)
        except (ValueError, KeyError, TypeError):
            answer(400, b"{}")
            return
        message = {
            "id": str(uuid.uuid4()),
            "conversationId": conversation,
            "userRole": ROLES[int(role)],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),  # noqa: UP017 (3.9)
            "message": text,
        }
        queued.append((message, answer))
        if not committing[0]:
            commit()

    def web_answer(request: Any, code: int, body: bytes) -> None:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    class Post(Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> Any:  # noqa: N802 - twisted.web's name
            post(request.path, request.content.read(),
                 lambda code, body: web_answer(request, code, body))
            return NOT_DONE_YET

    class PlainHTTP(Protocol):
        """Keep-alive POSTs with a Content-Length, parsed whole; WebSockets to Autobahn."""

        def __init__(self) -> None:
            self.buffer = b""

        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            requests, self.buffer = split_requests(self.buffer + data)
            for _, path, _, body in requests:
                post(path, body, self.answer)
            if self.buffer.startswith(b"GET "):
                self.upgrade()

        def upgrade(self) -> None:
            transport: Any = self.transport
            protocol = ws_factory.buildProtocol(transport.getPeer())
            transport.protocol = protocol
            protocol.makeConnection(transport)
            protocol.dataReceived(self.buffer)

        def answer(self, code: int, body: bytes) -> None:
            if self.transport is not None:
                self.transport.write(http_answer(code, body))

    class JSONRequest(Request):
        # As medichat's requests do: a JSON body is no form, so twisted.web need not parse
        # its Content-Type with the email package to look for one.
        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            self._parsePOSTFormSubmission = False
            super().requestReceived(command, path, version)

    class Quiet(Site):
        requestFactory = JSONRequest

        def log(self, request: Any) -> None:
            pass

    ws_factory = WebSocketServerFactory()
    ws_factory.protocol = Subscriber

    def ready(_: Any) -> None:
        site: Any
        if http == "protocol":
            site = Factory.forProtocol(PlainHTTP)
        else:
            root = Resource()
            root.putChild(b"ws", WebSocketResource(ws_factory))
            root.putChild(b"c", Post())
            site = Quiet(root)
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, site, backlog=1024, interface="127.0.0.1"
        )
        print(port.getHost().port, flush=True)

    def failed(failure: Any) -> None:
        print(f"the floor server cannot start: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()  # type: ignore[attr-defined]

    def schema(transaction: Any) -> None:
        transaction.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, conversation TEXT, "
                            "role TEXT, created TEXT, body TEXT)")
        transaction.execute("CREATE TABLE receipts (message TEXT, role TEXT, at TEXT, "
                            "PRIMARY KEY (message, role))")

    if connection is not None:
        async def connect() -> None:
            await connection.connect(postgresql)
            await connection.runOperation(
                "CREATE TABLE messages (id TEXT PRIMARY KEY, conversation TEXT, role TEXT, "
                "created TEXT, body TEXT); CREATE TABLE receipts (message TEXT, role TEXT, "
                "at TEXT, PRIMARY KEY (message, role))"
            )
            ready(None)

        reactor.callWhenRunning(  # type: ignore[attr-defined]
            lambda: Deferred.fromCoroutine(connect()).addErrback(failed)
        )
    elif pool is None:
        reactor.callWhenRunning(ready, None)  # type: ignore[attr-defined]
    else:
        reactor.callWhenRunning(  # type: ignore[attr-defined]
            lambda: pool.runInteraction(schema).addCallback(ready)
        )
    reactor.run()  # type: ignore[attr-defined]


class Frames:
    """Counts the WebSocket frames arriving on one connection."""

    def __init__(self) -> None:
        self.buffer = b""
        self.count = 0

    def feed(self, data: bytes) -> None:
        buffer = self.buffer + data
        while len(buffer) >= 2:
            size, head = buffer[1] & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, head = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, head = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < head + size:
                break
            buffer = buffer[head + size:]
            self.count += 1
        self.buffer = buffer


def open_websocket(port: int, conversation: str, role: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"GET /ws/%s/%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n" % (conversation.encode(), role, port)
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("the floor server closed a WebSocket handshake")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {answer[:80]!r}")
    if answer.partition(b"\r\n\r\n")[2]:
        raise RuntimeError("data before the first message")
    s.setblocking(False)
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--http-connections", type=int, default=16)
    floor_arguments(parser, duration=5.0, repeats=3, writes="frames")
    parser.add_argument("--store", choices=("sqlite", "postgresql", "none"), default="sqlite",
                        help="commit each message to SQLite (default) or PostgreSQL, or "
                             "store nothing, for the floor of HTTP and WebSocket alone, "
                             "under any store")
    parser.add_argument("--database", default=DEFAULT_DATABASE,
                        help="with --store postgresql: where to make the run's database "
                             "(default %(default)s)")
    parser.add_argument("--pgbench-seconds", type=float, default=3.0,
                        help="with --store postgresql: length of each pgbench run, before "
                             "and after the windows (default %(default)s)")
    parser.add_argument("--hop", choices=("thread", "adbapi"), default="thread",
                        help="with --store sqlite: reach SQLite's thread through a queue "
                             "and callFromThread, as medichat does (default), or through a "
                             "one-thread adbapi pool, as medichat did before")
    parser.add_argument("--server-python", default=None,
                        help="the interpreter that runs the bare server (this one's by "
                             "default), for instance a PyPy with Twisted and Autobahn "
                             "installed; its serving side runs on Python 3.9 and later")
    parser.add_argument("--http", choices=("twisted.web", "protocol"), default="twisted.web",
                        help="serve the POSTs and WebSocket handshakes with twisted.web "
                             "(default), or with a plain Protocol that parses each request "
                             "itself (the floor without twisted.web's per-request work)")
    parser.add_argument("--floor-database", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--floor-postgresql", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    raise_nofile()
    if options.serve:
        serve(options.floor_database, options.send == "direct", options.floor_postgresql,
              options.hop, options.http)
        return 0
    if options.store == "postgresql":
        report = measure_postgresql(options)
    else:
        with tempfile.TemporaryDirectory(prefix="medichat-floor-") as directory:
            database = ("--floor-database", os.path.join(directory, "floor.sqlite")) \
                if options.store == "sqlite" else ()
            with floor_server(__file__, *database, "--send", options.send,
                              "--hop", options.hop, "--http", options.http,
                              python=options.server_python) as (child, port):
                report = measure(options, child.pid, port)
    print(json.dumps(report))
    return 0 if report["lost"] == 0 else 1


def measure_postgresql(options: argparse.Namespace) -> dict[str, Any]:
    """
    L{measure} with the floor server on a PostgreSQL database made for the run, its
    backends' CPU counted, and pgbench on the same database before and after.
    """
    from conversations import Database
    from msgpath import pgbench_insert_tps

    database = Database(options.database)
    database.create()
    try:
        before = pgbench_insert_tps(database, options.pgbench_seconds)
        with floor_server(__file__, "--floor-postgresql", database.url,
                          "--send", options.send, "--http", options.http,
                          python=options.server_python) as (child, port):
            report = measure(options, child.pid, port, database.backend_pids())
        report["pgbench_before"] = before
        report["pgbench_after"] = pgbench_insert_tps(database, options.pgbench_seconds)
    finally:
        database.drop()
    return report


def measure(options: argparse.Namespace, pid: int, port: int,
            backends: tuple[int, ...] = ()) -> dict[str, Any]:
    """
    Drive the floor server at C{options.rate}; the report.

    @param backends: the PostgreSQL backends serving it, whose CPU each window reports.
    """

    def backends_cpu() -> float:
        total = 0.0
        for backend in backends:
            try:
                total += process_cpu(backend)
            except OSError:
                pass
        return total

    selector = selectors.DefaultSelector()
    conversations = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(options.conversations)]
    frames: dict[socket.socket, Frames] = {}
    for conversation in conversations:
        for role in (0, 1):
            s = open_websocket(port, conversation, role)
            frames[s] = Frames()
            selector.register(s, selectors.EVENT_READ, "ws")
    body = json.dumps({"message": TEXT}).encode()
    requests = [
        b"POST /c/%s/%d HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            conversation.encode(), role, b"x" * 300, len(body), body)
        for role in (0, 1) for conversation in conversations
    ]
    idle: list[socket.socket] = []
    for _ in range(options.http_connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(s, selectors.EVENT_READ, "http")
        idle.append(s)
    buffers: dict[socket.socket, bytes] = {}
    posted_at: dict[socket.socket, float] = {}
    latencies: list[float] = []
    state = {"sent": 0, "answered": 0, "refused": 0, "due": 0}
    started = time.monotonic()

    def delivered() -> int:
        return sum(f.count for f in frames.values())

    def pump(until: float, post: bool = True) -> None:
        while time.monotonic() < until:
            if post:
                due = int((time.monotonic() - started) * options.rate)
                while state["due"] < due and idle:
                    conn = idle.pop()
                    conn.sendall(requests[state["sent"] % len(requests)])
                    posted_at[conn] = time.monotonic()
                    state["sent"] += 1
                    state["due"] += 1
                # A POST that found no free connection is dropped, not queued without end.
                state["due"] = max(state["due"], due - options.http_connections)
            for key, _ in selector.select(0.001):
                conn: socket.socket = key.fileobj  # type: ignore[assignment]
                data = conn.recv(65536)
                if key.data == "ws":
                    frames[conn].feed(data)
                    continue
                data = buffers.get(conn, b"") + data
                while True:
                    head, sep, rest = data.partition(b"\r\n\r\n")
                    if not sep:
                        break
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        break
                    data = rest[length:]
                    state["answered"] += 1
                    latencies.append(time.monotonic() - posted_at[conn])
                    if not head.startswith(b"HTTP/1.1 201"):
                        state["refused"] += 1
                    idle.append(conn)
                buffers[conn] = data

    pump(time.monotonic() + 2.0)
    windows = []
    for _ in range(options.repeats):
        (user, system), answered, frames_before, at = process_times(pid), state["answered"], \
            delivered(), time.monotonic()
        backend_cpu = backends_cpu()
        del latencies[:]
        pump(at + options.duration)
        user_after, system_after = process_times(pid)
        user, system = user_after - user, system_after - system
        used, seconds = user + system, time.monotonic() - at
        backend_used = backends_cpu() - backend_cpu
        count = state["answered"] - answered
        ordered = sorted(latencies)
        window: dict[str, Any] = {}
        if backends:
            window["postgres_backends_cpu_us_per_message"] = (
                round(backend_used * 1e6 / count, 1) if count else None)
        windows.append({
            "seconds": round(seconds, 3),
            "answered_per_s": round(count / seconds, 1),
            "post_p50_ms": round(1000 * percentile(ordered, 0.5), 2) if ordered else None,
            "post_p99_ms": round(1000 * percentile(ordered, 0.99), 2) if ordered else None,
            "frames_per_s": round((delivered() - frames_before) / seconds, 1),
            "server_cpu_us_per_message": round(used * 1e6 / count, 1) if count else None,
            # Of which in the kernel (system calls, and the loopback's receiving side).
            "server_system_us_per_message": round(system * 1e6 / count, 1) if count else None,
            "server_cpu_pct_of_core": round(100 * used / seconds, 2),
            **window,
        })
        hop = f", {options.hop}" if options.store == "sqlite" else ""
        print(f"bare stack ({options.store}{hop}, {options.send}): "
              f"{windows[-1]['answered_per_s']} messages/s, "
              f"{windows[-1]['server_cpu_us_per_message']} us CPU per message, "
              f"POST p99 {windows[-1]['post_p99_ms']} ms"
              + (f", PostgreSQL backends {window['postgres_backends_cpu_us_per_message']} us"
                 " per message" if backends else ""),
              file=sys.stderr)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (
        state["answered"] < state["sent"] or delivered() < 3 * state["answered"]
    ):
        pump(time.monotonic() + 0.1, post=False)
    lost = (state["sent"] - state["answered"]) + state["refused"] + max(
        0, 3 * state["answered"] - delivered())
    return {"benchmark": "message_floor", "rate_per_s": options.rate, "send": options.send,
            "server_python": options.server_python or sys.executable,
            "store": options.store, "hop": options.hop if options.store == "sqlite" else None,
            "conversations": options.conversations,
            "http_connections": options.http_connections, "posted": state["sent"],
            "deliveries": delivered(), "lost": lost, "windows": windows}


if __name__ == "__main__":
    sys.exit(main())
