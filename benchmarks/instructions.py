#!/usr/bin/env python3
"""
What one chat message costs the server in machine instructions, counted by valgrind's
callgrind: a figure that does not move with the machine's noise, for comparing two
builds whose difference is smaller than what C{msgpath.py} can see on a shared machine.

Starts the server (C{twistd -n medichat} on SQLite, or with C{--floor} the bare stack of
C{message_floor.py}) under C{valgrind --tool=callgrind} with counting off, opens
C{--in-flight} conversations (default 1), each with its customer and its employee
subscribed over STOMP-over-WebSocket (the floor: its two plain WebSocket connections) and
one keep-alive HTTP connection, and posts messages in waves: one POST in each
conversation, the author alternating, then every answer and every delivery of the wave
(the message to both participants, the C{received} receipt to its author).  After
C{--warmup} waves it turns counting on (C{callgrind_control}), posts C{--messages} more
messages, turns it off and has callgrind write its counts, one file per thread.

With one conversation, one message at a time: one message per store transaction and no
overlap, the whole path of a lone message (HTTP, authentication, the transaction and its
commit, the deliveries, the answer), what C{msgpath.py} measures at low rates.  With 16,
the store may commit a wave's messages together, as at high rates.  Prints one JSON
object: instructions per message in all and per thread (the reactor's first), and the C
functions with the most instructions of their own (callgrind sees the interpreter, not
the Python functions it runs).  Runs of one build differ by well under 1 %; valgrind runs
the server some 20-50 times slower, and the time it takes is no figure here.

    python benchmarks/instructions.py --messages 200
    python benchmarks/instructions.py --messages 320 --in-flight 16
    python benchmarks/instructions.py --floor --messages 200
    python benchmarks/instructions.py --server-tree ../other-worktree
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Server, floor_server, log, request_bytes  # noqa: E402

TEXT = "how are you feeling today?"


# ------------------------------------------------------------------------------ the wire


def websocket(port: int, path: str, protocol: str | None) -> socket.socket:
    """A blocking WebSocket client connection, handshake done."""
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(secrets.token_bytes(16))
    offer = b"Sec-WebSocket-Protocol: %s\r\n" % protocol.encode() if protocol else b""
    s.sendall(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
        b"%s\r\n" % (path.encode(), port, key, offer)
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"the server closed the WebSocket handshake of {path}")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {answer[:200]!r}")
    if answer.partition(b"\r\n\r\n")[2]:
        raise RuntimeError("data before the first message")
    return s


def send_frame(s: socket.socket, payload: bytes) -> None:
    """One masked text frame, as a client sends it."""
    mask = secrets.token_bytes(4)
    size = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    )
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(head + mask + masked)


class Frames:
    """The text frames arriving on one blocking WebSocket connection."""

    def __init__(self, s: socket.socket) -> None:
        self.socket = s
        self.buffer = b""

    def next(self) -> bytes:
        """The next frame's payload."""
        while True:
            buffer = self.buffer
            size, head = (buffer[1] & 0x7F, 2) if len(buffer) >= 2 else (0, 0)
            if size == 126:
                size, head = (int.from_bytes(buffer[2:4], "big"), 4) if len(buffer) >= 4 \
                    else (0, 0)
            elif size == 127:
                size, head = (int.from_bytes(buffer[2:10], "big"), 10) if len(buffer) >= 10 \
                    else (0, 0)
            if head and len(buffer) >= head + size:
                self.buffer = buffer[head + size:]
                if buffer[0] & 0x0F == 0x9:
                    raise RuntimeError("a WebSocket ping: the run was too slow")
                return buffer[head:head + size]
            chunk = self.socket.recv(65536)
            if not chunk:
                raise RuntimeError("a WebSocket connection closed")
            self.buffer += chunk


class HTTP:
    """One blocking keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, method: str, path: str, token: str, body: bytes | None = None) -> None:
        """Send a request; its answer is L{answer}'s."""
        self.socket.sendall(request_bytes(self.port, method, path, token, body))

    def answer(self) -> tuple[int, bytes]:
        """The status and body of the oldest request not yet answered."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                match = re.search(rb"\r\ncontent-length:\s*(\d+)", self.buffer[:end].lower())
                stop = end + 4 + (int(match.group(1)) if match else 0)
                if len(self.buffer) >= stop:
                    status = int(self.buffer[9:12])
                    answer, self.buffer = self.buffer[end + 4:stop], self.buffer[stop:]
                    return status, answer
            chunk = self.socket.recv(65536)
            if not chunk:
                raise RuntimeError("the HTTP connection closed")
            self.buffer += chunk

    def request(self, method: str, path: str, token: str,
                body: bytes | None = None) -> tuple[int, bytes]:
        self.send(method, path, token, body)
        return self.answer()


# ------------------------------------------------------------------------------ the two servers


class Medichat:
    """The real server's side of the conversation: tokens, STOMP sessions, its POSTs."""

    def __init__(self, server: Server) -> None:
        assert server.port is not None
        self.port = server.port
        self.http = HTTP(self.port)
        self.tokens = (server.token(str(secrets.token_hex(8)), "customer", "customer"),
                       server.token(str(secrets.token_hex(8)), "nurse", "employee"))
        status, body = self.http.request("POST", "/api/v1/conversation", self.tokens[0])
        if status != 201:
            raise RuntimeError(f"POST /api/v1/conversation: {status} {body[:300]!r}")
        self.conversation = json.loads(body)["id"]
        self.frames = [self._session(token) for token in self.tokens]
        # The customer hears of the employee's arrival.
        while b'"userConnected"' not in self.frames[0].next():
            pass

    def _session(self, token: str) -> Frames:
        s = websocket(self.port, "/api/v1/chat", "v12.stomp")
        frames = Frames(s)
        send_frame(s, b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n"
                      b"Authorization:Bearer %s\n\n\x00" % token.encode("ascii"))
        if not frames.next().startswith(b"CONNECTED\n"):
            raise RuntimeError("no CONNECTED frame")
        send_frame(s, b"SUBSCRIBE\nid:0\ndestination:/v1/topic/conversation/%s\n"
                      b"receipt:r\n\n\x00" % self.conversation.encode("ascii"))
        # The subscriber's own presence event comes first.
        while not frames.next().startswith(b"RECEIPT\n"):
            pass
        return frames

    def start(self, number: int) -> None:
        """POST message C{number}, by the customer if it is even."""
        body = json.dumps({"message": f"#{number} {TEXT}"}).encode()
        self.http.send("POST", f"/api/v1/conversation/{self.conversation}/message",
                       self.tokens[number % 2], body)

    def finish(self, number: int) -> None:
        """Wait for message C{number}'s answer and its three deliveries."""
        status, answer = self.http.answer()
        if status != 201:
            raise RuntimeError(f"POST message: {status} {answer[:300]!r}")
        # The message to both, then the author's receipt of having been received.
        for frames in (self.frames[0], self.frames[1], self.frames[number % 2]):
            frame = frames.next()
            if not frame.startswith(b"MESSAGE\n") or b'"user' in frame.partition(b"\n\n")[2][:8]:
                raise RuntimeError(f"not a chat event: {frame[:300]!r}")


class Floor:
    """The bare stack's side (C{message_floor.py}): a conversation's two WebSockets, POSTs."""

    def __init__(self, port: int, number: int) -> None:
        self.http = HTTP(port)
        self.conversation = f"{number:08d}-0000-4000-8000-000000000000"
        self.frames = [Frames(websocket(port, f"/ws/{self.conversation}/{role}", None))
                       for role in (0, 1)]

    def start(self, number: int) -> None:
        body = json.dumps({"message": f"#{number} {TEXT}"}).encode()
        self.http.send("POST", f"/c/{self.conversation}/{number % 2}", "x" * 300, body)

    def finish(self, number: int) -> None:
        status, answer = self.http.answer()
        if status != 201:
            raise RuntimeError(f"POST: {status} {answer[:300]!r}")
        for frames in (self.frames[0], self.frames[1], self.frames[number % 2]):
            frames.next()


# ------------------------------------------------------------------------------ counting


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   capture_output=True, timeout=120)


def waves(clients: Sequence[Medichat | Floor], first: int, count: int) -> None:
    """
    Messages C{first} to C{first + count - 1} of each conversation, in waves: one POST
    in each conversation, then every answer and delivery of the wave.
    """
    for number in range(first, first + count):
        for client in clients:
            client.start(number)
        for client in clients:
            client.finish(number)


def measure(pid: int, clients: Sequence[Medichat | Floor], options: argparse.Namespace,
            directory: str) -> dict[str, Any]:
    """Warm up, count C{options.messages} messages, read callgrind's files."""
    each = options.messages // len(clients)
    log(f"{options.warmup} messages to warm up in each of {len(clients)} conversations")
    waves(clients, 0, options.warmup)
    control(pid, "--zero")
    control(pid, "--instr=on")
    log(f"{each * len(clients)} messages counted")
    started = time.monotonic()
    waves(clients, options.warmup, each)
    control(pid, "--instr=off")
    seconds = time.monotonic() - started
    control(pid, "--dump=counted")
    files = sorted(glob.glob(os.path.join(directory, "callgrind.out.*")))
    threads = []
    for path in files:
        with open(path) as f:
            text = f.read()
        if "desc: Trigger: dump counted" not in text:
            continue
        total = re.search(r"^totals:\s*(\d+)", text, re.M)
        if total and int(total.group(1)):
            threads.append((path, int(total.group(1))))
    if not threads:
        raise RuntimeError(f"callgrind wrote no counts in {directory}: {files}")
    # The reactor's thread is callgrind's first; the rest are the store's and the pools'.
    threads.sort(key=lambda pair: _thread_number(pair[0]))
    everything = sum(count for _, count in threads)
    messages = each * len(clients)
    return {
        "messages": messages,
        "in_flight": len(clients),
        "instructions_per_message": round(everything / messages),
        "per_thread": [
            {"thread": "reactor" if _thread_number(path) == 1 else _thread_number(path),
             "instructions_per_message": round(count / messages)}
            for path, count in threads
        ],
        "top_functions": _top(threads, messages, options.top),
        "valgrind_seconds_per_message": round(seconds / messages, 3),
    }


def _thread_number(path: str) -> int:
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else 1


def _top(threads: list[tuple[str, int]], messages: int, count: int) -> list[dict[str, Any]]:
    """The functions with the most instructions of their own, over every thread."""
    own: dict[str, int] = {}
    for path, _ in threads:
        result = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
            capture_output=True, text=True, check=True, timeout=300,
        )
        for line in result.stdout.splitlines():
            match = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.+)$", line)
            if match is None:
                match = re.match(r"\s*([\d,]+)\s+(\S.*)$", line)
            if match is None or ":" not in match.group(2):
                continue
            # The build's path of a source file, and the directory of a library, say little.
            name = re.sub(r"^\S*?/Python-[\d.]+/", "", match.group(2).strip())
            name = re.sub(r"\[/\S*/([^/\]]+)\]", r"[\1]", name)
            own[name] = own.get(name, 0) + int(match.group(1).replace(",", ""))
    ranked = sorted(own.items(), key=lambda item: -item[1])[:count]
    return [{"function": name, "instructions_per_message": round(n / messages)}
            for name, n in ranked]


def load_options(parser: argparse.ArgumentParser, messages: int) -> None:
    """The options of the waves' load (L{waves}) and of the server, shared with C{calls.py}."""
    parser.add_argument("--messages", type=int, default=messages,
                        help="messages counted (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=30,
                        help="messages in each conversation before counting starts "
                             "(default %(default)s)")
    parser.add_argument("--in-flight", type=int, default=1,
                        help="conversations, each with one POST in flight: the messages "
                             "go in waves of this many, which the store may commit "
                             "together (default %(default)s: one at a time)")
    parser.add_argument("--server-tree", default=None,
                        help="run the medichat of this source tree; default: this one")
    parser.add_argument("--server-option", action="append", default=[],
                        help="one more option for the server, as one word; repeatable")


def parse_load_options(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line, refusing a load that L{waves} cannot post."""
    options = parser.parse_args()
    if options.in_flight < 1 or options.messages < options.in_flight or options.warmup < 0:
        parser.error("--in-flight must be positive, --messages at least as many, and "
                     "--warmup not negative")
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    load_options(parser, messages=200)
    parser.add_argument("--floor", action="store_true",
                        help="count the bare stack of message_floor.py instead")
    parser.add_argument("--top", type=int, default=25,
                        help="functions listed (default %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep callgrind's files (for callgrind_annotate) and say where")
    options = parse_load_options(parser)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (Debian's package valgrind)")
    directory = tempfile.mkdtemp(prefix="medichat-callgrind-")
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
               "--separate-threads=yes",
               f"--callgrind-out-file={directory}/callgrind.out.%p")
    report: dict[str, Any] = {"benchmark": "instructions",
                              "server": "floor" if options.floor else "medichat",
                              "server_tree": options.server_tree, "warmup": options.warmup}
    try:
        if options.floor:
            floor = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "message_floor.py")
            database = os.path.join(directory, "floor.sqlite")
            with floor_server(floor, "--floor-database", database, "--send", "direct",
                              "--hop", "thread", wrapper=wrapper) as (child, port):
                floors = [Floor(port, n) for n in range(options.in_flight)]
                report.update(measure(child.pid, floors, options, directory))
        else:
            server = Server(["--message-rate", "100000000", *options.server_option],
                            repo=options.server_tree, wrapper=wrapper)
            try:
                server.start(timeout=600)
                clients = [Medichat(server) for _ in range(options.in_flight)]
                report.update(measure(server.pid, clients, options, directory))
            finally:
                server.stop()
    finally:
        if options.keep:
            report["callgrind_files"] = directory
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
