"""
What the medichat benchmarks share: the real server as a child process, readings of
/proc, JWTs signed with the server's development secret, and a population of cheap STOMP
over WebSocket clients living in one Twisted process.

The benchmarks (C{idle.py}, C{fanout.py}, C{conversations.py}) import this module from
their own directory; nothing here is part of the medichat package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import LoopingCall
from twisted.web.http import datetimeToString
from twisted.web.server import version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final JSON."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the machine


def raise_nofile() -> dict[str, int]:
    """
    Lift this process's open-file limit to the hard limit; the server, started later as a
    child, inherits it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open") as f:
            target = int(f.read())
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard}


def process_times(pid: int, tid: int | None = None) -> tuple[float, float]:
    """
    utime and stime of a process (all its threads), or of its thread C{tid}, in seconds.
    """
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, "rb") as f:
        data = f.read()
    # The command name may hold spaces and parentheses; the fields follow the last ")".
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    user, system = process_times(pid)
    return user + system


def floor_arguments(parser: argparse.ArgumentParser, *, duration: float, repeats: int,
                    writes: str) -> None:
    """
    The options that the floor benchmarks with a socket-writing server share: the
    windows, how the server writes (C{--send}: C{transport.write} or Autobahn, or the
    socket's C{send()} as medichat's fast path), and the hidden C{--serve} of the child.

    @param writes: what the server writes, for the help text.
    """
    parser.add_argument("--duration", type=float, default=duration)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--send", choices=("write", "direct"), default="direct",
                        help=f"how the server writes its {writes}: through Twisted (and "
                             "Autobahn), or the socket's send() as medichat's fast path "
                             "(default %(default)s)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)


@contextmanager
def floor_server(script: str, *args: str, wrapper: tuple[str, ...] = (),
                 python: str | None = None) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """
    Run C{script} with C{--serve} and C{args} as a child process that prints the port it
    listens on, as the floor benchmarks' bare servers do; killed on leaving the block.

    @param wrapper: a command that runs the child (C{valgrind ...}), if any.
    @param python: the interpreter that runs the child; this one's by default.
    @return: the child and its port.
    """
    child = subprocess.Popen(
        [*wrapper, python or sys.executable, os.path.abspath(script), "--serve", *args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.strip().isdigit():
            # It said why on its stderr (a database it cannot reach, say).
            raise SystemExit(f"the bare server did not start (exit status {child.wait()})")
        yield child, int(line)
    finally:
        child.kill()
        child.wait()


HTTPRequest = tuple[bytes, bytes, dict[bytes, bytes], bytes]
"""A request as L{split_requests} gives it: method, path, headers (names in lower case),
body."""


def split_requests(buffer: bytes) -> tuple[list[HTTPRequest], bytes]:
    """
    The complete HTTP/1.1 requests at the start of C{buffer}, each head split at once
    and its body taken by its C{Content-Length}, and what is left after them: the floors'
    HTTP without twisted.web (C{--server protocol}, C{--http protocol}).  A C{GET} (a
    WebSocket handshake: the floors take no other) ends the list, left whole at the start
    of what is left for the caller to hand over.
    """
    requests: list[HTTPRequest] = []
    while not buffer.startswith(b"GET "):
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = buffer[:end].split(b"\r\n")
        method, path, _ = lines[0].split(b" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        stop = start + int(headers.get(b"content-length", b"0"))
        if len(buffer) < stop:
            break
        requests.append((method, path, headers, buffer[start:stop]))
        buffer = buffer[stop:]
    return requests, buffer


_REASONS = {201: b"Created", 400: b"Bad Request"}


def http_answer(code: int, body: bytes) -> bytes:
    """
    An answer to a L{split_requests} request (201 or 400), with the headers twisted.web
    would write for it: C{Server}, C{Date}, a JSON C{Content-Type}, C{Content-Length}.
    """
    return (
        b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (code, _REASONS[code], version, datetimeToString(), len(body), body)
    )


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                found[name] = int(value.split()[0])
    return {"rss_kib": found.get("VmRSS", 0), "hwm_kib": found.get("VmHWM", 0)}


def open_files_limit(pid: int) -> int | None:
    """The soft open-files limit a process runs with."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError):
        pass
    return None


def machine_jiffies() -> tuple[int, int]:
    """Busy and total clock ticks of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    total = sum(values[:8])
    busy = total - values[3] - values[4]
    return busy, total


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def own_cpu() -> float:
    """This process's CPU time (the load generator), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Snapshot:
    """
    Counters read at one instant: the server's CPU and memory, the generator's CPU, the
    machine's busy ticks, and the CPU of further processes (PostgreSQL backends).
    """

    def __init__(self, server_pid: int, extra_pids: tuple[int, ...] = ()) -> None:
        self.at = time.monotonic()
        self.server_user, self.server_system = process_times(server_pid)
        self.server_cpu = self.server_user + self.server_system
        # The main thread, where twistd runs the reactor (the rest: the store's threads).
        self.server_reactor_thread = sum(process_times(server_pid, server_pid))
        self.memory = process_memory(server_pid)
        self.generator_cpu = own_cpu()
        self.busy, self.total = machine_jiffies()
        self.loadavg = loadavg()
        extra = 0.0
        for pid in extra_pids:
            try:
                extra += process_cpu(pid)
            except OSError:
                pass
        self.extra_cpu = extra


def window_figures(a: Snapshot, b: Snapshot, extra_name: str | None = None) -> dict[str, Any]:
    """
    What happened between two snapshots: CPU of the server, of the generator, of the
    rest of the machine (the noise), and the server's memory at the end.
    """
    elapsed = b.at - a.at
    server = b.server_cpu - a.server_cpu
    generator = b.generator_cpu - a.generator_cpu
    extra = b.extra_cpu - a.extra_cpu
    machine_cores = (b.busy - a.busy) / CLOCK_TICKS / elapsed
    figures: dict[str, Any] = {
        "seconds": round(elapsed, 3),
        "server_cpu_s": round(server, 3),
        "server_cpu_pct_of_core": round(100 * server / elapsed, 2),
        "server_system_cpu_s": round(b.server_system - a.server_system, 3),
        "server_reactor_thread_cpu_s": round(
            b.server_reactor_thread - a.server_reactor_thread, 3),
        "server_rss_kib": b.memory["rss_kib"],
        "generator_cpu_s": round(generator, 3),
        "machine_busy_cores": round(machine_cores, 3),
        "other_processes_busy_cores": round(
            machine_cores - (server + generator + extra) / elapsed, 3
        ),
        "loadavg_end": b.loadavg,
    }
    if extra_name is not None:
        figures[f"{extra_name}_cpu_s"] = round(extra, 3)
    return figures


def median_of(windows: list[dict[str, Any]], key: str) -> float | None:
    values = [w[key] for w in windows if w.get(key) is not None]
    if not values:
        return None
    return round(statistics.median(values), 3)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, -(-int(fraction * 1000) * len(sorted_values) // 1000))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def gc_pauses(path: str, start: float, end: float) -> dict[str, Any]:
    """
    The server's collections between two wall-clock times, per generation: elapsed pause
    and, when the server records it, the CPU time of the collection (C{medichat/_gcpauses.py}).
    """
    per: dict[int, list[tuple[float, float | None]]] = {0: [], 1: [], 2: []}
    collected = 0
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) not in (5, 6):
                    continue
                at, generation, pause_us = float(parts[0]), int(parts[1]), int(parts[2])
                cpu = int(parts[5]) / 1000 if len(parts) == 6 else None
                if start <= at < end:
                    per.setdefault(generation, []).append((pause_us / 1000, cpu))
                    collected += int(parts[3])
    except OSError:
        return {"recorded": False}
    figures: dict[str, Any] = {"recorded": True, "collected_objects": collected}
    for generation, pauses in sorted(per.items()):
        cpus = [c for _, c in pauses if c is not None]
        figures[f"gen{generation}"] = {
            "count": len(pauses),
            "max_ms": round(max(p for p, _ in pauses), 2) if pauses else None,
            "total_ms": round(sum(p for p, _ in pauses), 2),
            "max_cpu_ms": round(max(cpus), 2) if cpus else None,
        }
    every = [p for pauses in per.values() for p, _ in pauses]
    every_cpu = [c for pauses in per.values() for _, c in pauses if c is not None]
    figures["over_5ms"] = sum(1 for p in every if p > 5)
    figures["max_ms"] = round(max(every), 2) if every else None
    figures["cpu_over_5ms"] = sum(1 for c in every_cpu if c > 5)
    figures["max_cpu_ms"] = round(max(every_cpu), 2) if every_cpu else None
    return figures


def noise_figures(idle: dict[str, Any]) -> dict[str, Any]:
    """The machine's noise as reported by every benchmark."""
    return {
        "cpus": CPUS,
        "cpu_time_resolution_s": 1 / CLOCK_TICKS,
        "loadavg_at_start": loadavg(),
        "server_idle_window": idle,
    }


# ------------------------------------------------------------------------------ the server


def redact(text: str) -> str:
    """Hide the password of any URL in C{text}."""
    return re.sub(r"(://[^:/@\s]+):[^@/\s]*@", r"\1:***@", text)


def make_token(secret: bytes, sub: str, name: str, role: str, ttl: int = 3600) -> str:
    """An HS256 JWT as the server's development checker accepts it."""
    claims = {"sub": sub, "name": name, "role": role, "exp": int(time.time()) + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


class Server:
    """
    C{twistd -n medichat} as a child process on a loopback port of its own choosing, with a
    fresh data directory and a development secret written beforehand.

    The secret file holds 64 hex digits and a newline; the server's
    C{load_or_create_dev_secret} uses the file's bytes without surrounding whitespace as the
    HMAC key, so the key here is those 64 ASCII digits, not the 32 bytes they spell.
    """

    def __init__(self, options: list[str], *, keep: bool = False, repo: str | None = None,
                 env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()) -> None:
        self.options = options
        # A command that runs twistd (C{valgrind ...}), if any.
        self.wrapper = wrapper
        self.keep = keep
        # The source tree whose medichat the server runs (another worktree, to compare).
        self.repo = os.path.abspath(repo) if repo else REPO
        self.env = env or {}
        self.directory = tempfile.mkdtemp(prefix="medichat-bench-")
        self.data_dir = os.path.join(self.directory, "data")
        os.makedirs(self.data_dir, mode=0o700)
        self.secret = secrets.token_hex(32).encode("ascii")
        descriptor = os.open(
            os.path.join(self.data_dir, "jwt-dev.secret"),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600,
        )
        with os.fdopen(descriptor, "wb") as f:
            f.write(self.secret + b"\n")
        self.log_path = os.path.join(self.directory, "server.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.command: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def token(self, sub: str, name: str, role: str = "customer") -> str:
        return make_token(self.secret, sub, name, role)

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it logs that it is ready."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            twistd = shutil.which("twistd") or "twistd"
        self.command = [
            *self.wrapper, twistd, "-n", "--pidfile", "", "medichat",
            "--data-dir", self.data_dir,
            "--listen", "tcp:0:interface=127.0.0.1:backlog=1024",
            *self.options,
        ]
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.repo, env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, env=env,
            )
        log(f"server pid {self.process.pid}: {redact(' '.join(self.command[1:]))}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if port and re.search(r"medichat \S+ ready", text):
                self.port = int(port.group(1))
                metrics = re.search(r"metrics listening on 127\.0\.0\.1:(\d+)", text)
                self.metrics_port = int(metrics.group(1)) if metrics else None
                log(f"server ready on port {self.port}")
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:g}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_summary(self) -> dict[str, Any]:
        """Counts of warnings and errors in the server log, and the first few of them."""
        counts = {"warn": 0, "error": 0, "critical": 0}
        samples: list[str] = []
        for line in self.log_text().splitlines():
            match = re.search(r"#(warn|error|critical)\]", line)
            if match:
                counts[match.group(1)] += 1
                if len(samples) < 8:
                    samples.append(line[:400])
        return {**counts, "first": samples, "log": self.log_path if self.keep else None}

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; remove the directory unless kept."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                log("server did not stop within 15 s of SIGTERM: killing it")
                process.kill()
                process.wait(5)
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)


# ------------------------------------------------------------------------------ clients


def request_bytes(port: int, method: str, path: str, token: str, body: bytes | None) -> bytes:
    """An HTTP/1.1 request on a keep-alive connection, bearer token and JSON body if any."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n")
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    else:
        head += "Content-Length: 0\r\n"
    return head.encode("ascii") + b"\r\n" + (body or b"")


class BenchClient(WebSocketClientProtocol):
    """
    One STOMP session over WebSocket that hardly parses anything: it tells frames apart by
    their first bytes and hands them to its L{Population}.
    """

    population: Population
    spec: ClientSpec
    ready = False
    closed = False
    seen: list[int] | None = None  # for the benchmark's own bookkeeping

    def onOpen(self) -> None:
        self.sendMessage(self.spec.connect_frame)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload.startswith(b"MESSAGE\n"):
            self.population.on_message(self, payload)
        elif payload == b"\n":
            self.population.heartbeats_received += 1
        elif payload.startswith(b"CONNECTED\n"):
            self.population.on_connected(self, payload)
        elif payload.startswith(b"RECEIPT\n"):
            self.population.on_receipt(self, payload)
        elif payload.startswith(b"ERROR\n"):
            self.population.on_error(self, payload)
        else:
            self.population.other_frames += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.population.on_close(self, code, reason)


class ClientSpec:
    """
    Who one client is and what it does once connected: the C{CONNECT} frame, and the
    C{SUBSCRIBE} frames to send (the last one carrying a receipt, awaited before the client
    counts as ready).
    """

    __slots__ = ("connect_frame", "subscribe_frames", "tag")

    def __init__(self, token: str, heartbeat_ms: int, subscribe_frames: tuple[bytes, ...] = (),
                 tag: Any = None) -> None:
        self.connect_frame = (
            b"CONNECT\naccept-version:1.2\nheart-beat:%d,%d\nAuthorization:Bearer %s\n\n\x00"
            % (heartbeat_ms, heartbeat_ms, token.encode("ascii"))
        )
        self.subscribe_frames = subscribe_frames
        self.tag = tag


def subscribe_frame(destination: str, sub_id: str = "0", receipt: str | None = "r") -> bytes:
    frame = b"SUBSCRIBE\nid:%s\ndestination:%s\n" % (sub_id.encode(), destination.encode())
    if receipt is not None:
        frame += b"receipt:%s\n" % receipt.encode()
    return frame + b"\n\x00"


class _Connector(ClientFactory):
    """Builds the one protocol of one connection attempt, with its spec attached."""

    noisy = False

    def __init__(self, population: Population, spec: ClientSpec) -> None:
        self.population = population
        self.spec = spec

    def buildProtocol(self, addr: Any) -> BenchClient:
        protocol: BenchClient = self.population.factory.buildProtocol(addr)
        protocol.population = self.population
        protocol.spec = self.spec
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.population.on_failed(None, f"TCP connect failed: {reason.getErrorMessage()}")


class Population:
    """
    Many L{BenchClient}s in this process: opened with bounded concurrency, kept alive with
    heart-beats sent from one L{LoopingCall}, counted.

    @ivar message_handler: called with C{(client, payload, now)} for each C{MESSAGE}.
    """

    def __init__(self, reactor: Any, port: int, *, concurrency: int = 200,
                 path: str = "/api/v1/chat") -> None:
        self.reactor = reactor
        self.port = port
        self.concurrency = concurrency
        url = f"ws://127.0.0.1:{port}{path}"
        self.factory = WebSocketClientFactory(url, protocols=["v12.stomp"])
        self.factory.protocol = BenchClient
        self.factory.setProtocolOptions(
            openHandshakeTimeout=30,
            closeHandshakeTimeout=1,
            utf8validateIncoming=False,
            failByDrop=False,
        )
        self.clients: list[BenchClient] = []
        self.message_handler: Callable[[BenchClient, bytes, float], None] | None = None
        self.messages = 0
        self.heartbeats_received = 0
        self.heartbeats_sent = 0
        self.other_frames = 0
        self.errors: list[str] = []
        self.closes_after_ready = 0
        self.close_reasons: dict[str, int] = {}
        self.failures = 0
        self.failure_reasons: dict[str, int] = {}
        self.server_heartbeat: tuple[int, int] | None = None
        self._queue: list[ClientSpec] = []
        self._in_flight = 0
        self._done: Deferred[None] | None = None
        self._beats: LoopingCall | None = None
        self._slice = 0
        self._slices = 10

    # -- opening

    def open(self, specs: list[ClientSpec]) -> Deferred[None]:
        """
        Open one session per spec, at most C{concurrency} handshakes at a time; fires when
        every one is ready (connected and subscribed) or has failed.
        """
        self._queue = list(reversed(specs))
        self._done = Deferred()
        self._fill()
        return self._done

    def _fill(self) -> None:
        while self._queue and self._in_flight < self.concurrency:
            spec = self._queue.pop()
            self._in_flight += 1
            self.reactor.connectTCP("127.0.0.1", self.port, _Connector(self, spec), timeout=30)
        if not self._queue and self._in_flight == 0 and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def _finished_one(self) -> None:
        self._in_flight -= 1
        self._fill()

    def on_connected(self, client: BenchClient, payload: bytes) -> None:
        if self.server_heartbeat is None:
            match = re.search(rb"\nheart-beat:(\d+),(\d+)\n", payload)
            if match:
                self.server_heartbeat = (int(match.group(1)), int(match.group(2)))
        frames = client.spec.subscribe_frames
        if not frames:
            self._ready(client)
            return
        for frame in frames:
            client.sendMessage(frame)

    def on_receipt(self, client: BenchClient, payload: bytes) -> None:
        if not client.ready:
            self._ready(client)

    def _ready(self, client: BenchClient) -> None:
        client.ready = True
        self.clients.append(client)
        self._finished_one()

    def on_message(self, client: BenchClient, payload: bytes) -> None:
        self.messages += 1
        handler = self.message_handler
        if handler is not None:
            handler(client, payload, time.monotonic())

    def on_error(self, client: BenchClient, payload: bytes) -> None:
        if len(self.errors) < 10:
            self.errors.append(payload[:300].decode("utf-8", "replace"))

    def on_failed(self, client: BenchClient | None, reason: str) -> None:
        self.failures += 1
        self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1
        self._finished_one()

    def on_close(self, client: BenchClient, code: int | None, reason: str | None) -> None:
        if client.closed:
            return
        client.closed = True
        if client.ready:
            self.closes_after_ready += 1
            key = f"{code} {reason}"
            self.close_reasons[key] = self.close_reasons.get(key, 0) + 1
        else:
            self.on_failed(client, f"closed before ready: {code} {reason}")

    # -- heart-beats

    def client_send_interval(self, requested_ms: int) -> float | None:
        """
        Seconds between our heart-beats as negotiated: max(our cx, the server's sy) when
        both are non-zero, else none.
        """
        if requested_ms == 0 or self.server_heartbeat is None:
            return None
        server_wants = self.server_heartbeat[1]
        if server_wants == 0:
            return None
        return max(requested_ms, server_wants) / 1000.0

    def start_heartbeats(self, interval: float | None, slices: int = 10) -> None:
        """
        Send each ready client a lone EOL every C{interval} seconds from one timer: each
        tick serves one of C{slices} interleaved slices of the clients, so the load is
        spread evenly rather than arriving all at once.
        """
        if interval is None:
            return
        self._slices = slices
        self._beats = LoopingCall(self._beat)
        self._beats.clock = self.reactor
        self._beats.start(interval / slices, now=False)

    def _beat(self) -> None:
        slices = self._slices
        clients = self.clients
        sent = 0
        for index in range(self._slice, len(clients), slices):
            client = clients[index]
            if not client.closed:
                client.sendMessage(b"\n")
                sent += 1
        self.heartbeats_sent += sent
        self._slice = (self._slice + 1) % slices

    def stop_heartbeats(self) -> None:
        if self._beats is not None and self._beats.running:
            self._beats.stop()

    @property
    def live(self) -> int:
        return sum(1 for c in self.clients if not c.closed)

    def summary(self) -> dict[str, Any]:
        return {
            "ready": len(self.clients),
            "live": self.live,
            "failed": self.failures,
            "failure_reasons": dict(self.failure_reasons),
            "closed_after_ready": self.closes_after_ready,
            "close_reasons": dict(self.close_reasons),
            "error_frames": list(self.errors),
            "server_heartbeats_received": self.heartbeats_received,
            "heartbeats_sent": self.heartbeats_sent,
            "other_frames": self.other_frames,
            "server_heart_beat_header": self.server_heartbeat,
        }


# ------------------------------------------------------------------------------ running


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(max(0.0, seconds), d.callback, None)
    return d


async def open_population(reactor: Any, population: Population, specs: list[ClientSpec],
                          server: Server) -> dict[str, Any]:
    """Open the sessions, logging progress, and return figures about the opening."""
    before = Snapshot(server.pid)
    progress = LoopingCall(
        lambda: log(f"  {len(population.clients)} ready, {population.failures} failed")
    )
    progress.clock = reactor
    progress.start(5.0, now=False)
    try:
        await population.open(specs)
    finally:
        progress.stop()
    after = Snapshot(server.pid)
    elapsed = after.at - before.at
    figures = {
        "seconds": round(elapsed, 2),
        "sessions_per_s": round(len(population.clients) / elapsed, 1) if elapsed else None,
        "server_cpu_s": round(after.server_cpu - before.server_cpu, 3),
        "generator_cpu_s": round(after.generator_cpu - before.generator_cpu, 3),
        "ready": len(population.clients),
        "failed": population.failures,
    }
    log(f"opened {len(population.clients)} sessions in {elapsed:.1f}s "
        f"({population.failures} failed)")
    return figures


async def idle_window(reactor: Any, server: Server, seconds: float) -> dict[str, Any]:
    """Server CPU and machine noise while nothing talks to the server."""
    log(f"idle window: {seconds:g}s with no clients")
    before = Snapshot(server.pid)
    await sleep(reactor, seconds)
    return window_figures(before, Snapshot(server.pid))


def common_arguments(parser: argparse.ArgumentParser, *, duration: float,
                     timeout: float) -> None:
    parser.add_argument("--duration", type=float, default=duration,
                        help="seconds of each measured window (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measured windows, back to back (default %(default)s)")
    parser.add_argument("--idle-window", type=float, default=5.0,
                        help="seconds of server CPU measured with no clients, before the "
                             "load (default %(default)s)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait after the server starts and after the "
                             "sessions open (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="WebSocket handshakes in flight at once (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help="hard limit on the whole run, in seconds (default %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the server's data directory and log")
    parser.add_argument("--server-tree", default=None,
                        help="run the medichat of this source tree (another worktree, to "
                             "compare); default: this one")
    parser.add_argument("--no-fast-paths", action="store_true",
                        help="start the server with --no-fast-paths (public Twisted and "
                             "Autobahn API only), to measure what the fast paths save")
    parser.add_argument("--metrics-scrape", type=float, default=0.0, metavar="S",
                        help="start the server with --metrics-listen on a loopback port and "
                             "scrape its /metrics every S seconds throughout, as Prometheus "
                             "would (default 0: no metrics)")
    parser.add_argument("--server-option", action="append", default=[], metavar="OPTION",
                        help="one more option for the server, as one word "
                             "(--server-option=--group-window=2); repeatable")


def server_options(options: argparse.Namespace, *extra: str) -> list[str]:
    """The server's command-line options for these benchmark options, plus C{extra}."""
    return [*extra, *(["--no-fast-paths"] if options.no_fast_paths else []),
            *metrics_options(options), *options.server_option]


def metrics_options(options: argparse.Namespace) -> list[str]:
    """The server's metrics options for these benchmark options."""
    if options.metrics_scrape > 0:
        return ["--metrics-listen", "tcp:0:interface=127.0.0.1"]
    return []


async def metric_values(reactor: Any, port: int) -> dict[str, float]:
    """
    The server's samples without labels from its C{/metrics} (on C{port}), by name.
    """
    from twisted.web.client import Agent, readBody

    response = await Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{port}/metrics".encode("ascii"))
    body = await readBody(response)
    values: dict[str, float] = {}
    for line in body.decode("utf-8").splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def group_figures(a: dict[str, float], b: dict[str, float],
                  seconds: float | None = None) -> dict[str, Any]:
    """
    Chat messages committed and their store transactions between two readings of
    L{metric_values}, and the messages per transaction (the mean group size); empty for a
    server that does not count its transactions (a build from before the metric).

    With SQLite (a build that counts them), also its database thread's figures: per
    transaction (every operation of the store, not only messages), the milliseconds it
    waited to start, ran and spent on the CPU; and, given the C{seconds} between the two
    readings, the share of them the thread was busy.
    """
    if "medichat_message_transactions_total" not in b:
        return {}
    messages = b["medichat_messages_committed_total"] - a["medichat_messages_committed_total"]
    transactions = (b["medichat_message_transactions_total"]
                    - a["medichat_message_transactions_total"])
    figures: dict[str, Any] = {
        "messages_committed": int(messages),
        "message_transactions": int(transactions),
        "messages_per_transaction": round(messages / transactions, 2) if transactions else None,
    }
    operations = (b.get("medichat_store_thread_operations_total", 0.0)
                  - a.get("medichat_store_thread_operations_total", 0.0))
    if operations > 0:
        def moved(name: str) -> float:
            key = f"medichat_store_thread_{name}_seconds_total"
            return b[key] - a.get(key, 0.0)

        figures["store_thread"] = {
            "transactions": int(operations),
            "wait_ms": round(moved("wait") / operations * 1000, 3),
            "run_ms": round(moved("busy") / operations * 1000, 3),
            "cpu_ms": round(moved("cpu") / operations * 1000, 3),
            "busy_share": round(moved("busy") / seconds, 3) if seconds else None,
        }
    return figures


class Scraper:
    """
    Scrapes the server's C{/metrics} every few seconds, as Prometheus would, and keeps
    how many scrapes it made, how long they took and how large they were.
    """

    def __init__(self, reactor: Any, port: int, interval: float) -> None:
        from twisted.web.client import Agent, readBody

        self._agent = Agent(reactor)
        self._read = readBody
        self._url = f"http://127.0.0.1:{port}/metrics".encode("ascii")
        self._loop = LoopingCall(self._scrape)
        self._loop.clock = reactor
        self._interval = interval
        self._busy = False
        self.seconds: list[float] = []
        self.size = 0
        self.failures = 0

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _scrape(self) -> None:
        if self._busy:
            return
        self._busy = True
        started = time.monotonic()

        def done(body: bytes) -> None:
            self.seconds.append(time.monotonic() - started)
            self.size = len(body)

        def failed(_: Any) -> None:
            self.failures += 1

        d = self._agent.request(b"GET", self._url)
        d.addCallback(self._read)
        d.addCallbacks(done, failed)
        d.addBoth(lambda _: setattr(self, "_busy", False))

    def figures(self) -> dict[str, Any]:
        return {
            "interval_s": self._interval,
            "scrapes": len(self.seconds),
            "failures": self.failures,
            "bytes_last": self.size,
            "ms_median": round(1000 * statistics.median(self.seconds), 2)
            if self.seconds else None,
            "ms_max": round(1000 * max(self.seconds), 2) if self.seconds else None,
        }


def run(options: argparse.Namespace, server: Server,
        measure: Callable[[Any, dict[str, Any]], Awaitable[None]],
        report: dict[str, Any], cleanup: Callable[[], None] | None = None) -> int:
    """
    Start the server, run C{measure(reactor, report)} in the reactor under the hard
    timeout, stop the server, call C{cleanup}, print C{report} as JSON.  Returns the exit
    status.
    """
    from twisted.internet import reactor

    status = {"code": 0}
    # A backstop in case the reactor itself is wedged: no run outlives its timeout by much.
    signal.signal(signal.SIGALRM, lambda *_: _wedged(server, report, cleanup))
    signal.alarm(int(options.timeout) + 30)
    started = time.monotonic()
    try:
        server.start()
        report["server"] = {
            "command": [redact(part) for part in server.command[1:]],
            "pid": server.pid,
            "port": server.port,
            "open_files_limit": open_files_limit(server.pid),
        }

        def finished(failure: Any = None) -> None:
            if failure is not None:
                status["code"] = 1
                report["error"] = failure.getErrorMessage() or repr(failure.value)
                report["traceback"] = failure.getTraceback()[-3000:]
                log(f"failed: {report['error']}")
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

        def timed_out() -> None:
            status["code"] = 2
            report["error"] = f"timed out after {options.timeout:g}s"
            log(report["error"])
            reactor.stop()  # type: ignore[attr-defined]

        scraper: Scraper | None = None
        if getattr(options, "metrics_scrape", 0) > 0 and server.metrics_port is not None:
            scraper = Scraper(reactor, server.metrics_port, options.metrics_scrape)

        def go() -> None:
            if scraper is not None:
                scraper.start()
            d = ensureDeferred(measure(reactor, report))
            d.addCallbacks(lambda _: finished(), finished)

        reactor.callWhenRunning(go)  # type: ignore[attr-defined]
        watchdog = reactor.callLater(  # type: ignore[attr-defined]
            options.timeout - (time.monotonic() - started), timed_out
        )
        reactor.run()  # type: ignore[attr-defined]
        if watchdog.active():
            watchdog.cancel()
        if scraper is not None:
            scraper.stop()
            report["metrics"] = scraper.figures()
    except Exception as e:  # the server did not start
        status["code"] = 1
        report["error"] = str(e)
        log(f"failed: {e}")
    finally:
        if server.process is not None:
            report["server_alive_at_end"] = server.alive()
            report["server_log"] = server.log_summary()
        server.stop()
        if cleanup is not None:
            _cleanup(cleanup)
        signal.alarm(0)
    print(json.dumps(report, indent=2))
    return status["code"]


def _cleanup(cleanup: Callable[[], None]) -> None:
    try:
        cleanup()
    except Exception as e:
        log(f"cleanup failed: {e}")


def _wedged(server: Server, report: dict[str, Any],
            cleanup: Callable[[], None] | None) -> None:
    report["error"] = "hard timeout: the generator's reactor was wedged"
    try:
        server.stop()
        if cleanup is not None:
            _cleanup(cleanup)
    finally:
        print(json.dumps(report, indent=2), flush=True)
        os._exit(3)
