#!/usr/bin/env python3
"""
Where a chat message's server CPU goes, kernel included: runs C{msgpath.py} (medichat, or
with C{--floor} C{message_floor.py}'s bare stack) at one rate, samples the server process
with C{perf record -e cpu-clock -g} (every thread, user space and kernel) while the load
runs, and splits the CPU that the benchmark itself measured per message by thread (the
reactor's, the store's) and by where it ran: the Python interpreter, SQLite, libc, and
the kernel by system call (C{fdatasync}, C{pwrite64}, C{futex}, the sockets, C{epoll},
the rest).

C{instructions.py} counts user space only, one message at a time; C{msgpath.py} gives one
figure for the whole process.  This is the split between them, at a load: for instance
how much of a message is the commit's C{fdatasync} (the price of C{synchronous = FULL})
or threads waking each other (C{futex}), which no change to medichat's Python can touch.

The absolute figures are the benchmark's own CPU per message (median of its steps) times
each part's share of the samples; a part's share is exact up to sampling (4,000 samples
a second of CPU by default).  Needs Linux C{perf} (Debian's linux-perf) allowed to sample
the kernel (root, or C{kernel.perf_event_paranoid} at most 1).

    python benchmarks/cpu_split.py --rate 1000
    python benchmarks/cpu_split.py --rate 1000 --floor
    python benchmarks/cpu_split.py --rate 1000 --server-tree ../other-worktree
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import log  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

_SYSCALL = re.compile(r"__(?:x64|ia32|se)_sys_(\w+)|__do_sys_(\w+)")
_CALLS = {
    "fdatasync": "fdatasync/fsync", "fsync": "fdatasync/fsync",
    "pwrite64": "pwrite64", "pread64": "pread64",
    "futex": "futex",
    "sendto": "sockets", "recvfrom": "sockets", "sendmsg": "sockets", "recvmsg": "sockets",
    "write": "write/read", "read": "write/read", "writev": "write/read",
    "epoll_wait": "epoll", "epoll_ctl": "epoll", "epoll_pwait": "epoll",
    "fcntl": "fcntl",
}
"""Which group each system call's kernel time goes to; any other is C{other}."""


def place(frames: list[tuple[str, str]]) -> str:
    """
    Where a sample ran, from its call chain (leaf first, as C{(symbol, object)}): the
    kernel by system call, or the user-space object of the leaf.
    """
    if not frames:
        return "unknown"
    symbol, where = frames[0]
    if where == "[kernel.kallsyms]":
        for symbol, _ in frames:
            match = _SYSCALL.search(symbol)
            if match:
                name = match.group(1) or match.group(2)
                return "kernel: " + _CALLS.get(name, "other calls")
        return "kernel: no call (interrupts, faults)"
    name = os.path.basename(where)
    if "sqlite" in name:
        return "sqlite"
    if "psycopg" in name or name.startswith("libpq"):
        return "psycopg2/libpq"
    # An interpreter linked statically (Debian's python3.11) runs in its executable.
    if name.startswith(("libpython", "python")) or re.match(r"_\w+\.cpython-", name):
        return "python"
    if name.startswith(("libc.", "libc-", "ld-linux")):
        return "libc"
    return "other: " + name


def samples(path: str, pid: int) -> Counter[tuple[str, str]]:
    """The samples of C{perf.data} by (thread, place); the thread whose id is the
    process's own is the reactor's."""
    text = subprocess.run(
        ["perf", "script", "-i", path, "-F", "tid,ip,sym,dso"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    counts: Counter[tuple[str, str]] = Counter()
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or not lines[0].strip().isdigit():
            continue
        tid = int(lines[0].strip())
        frames = []
        for line in lines[1:]:
            match = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if match:
                frames.append((match.group(1), match.group(2)))
        thread = "reactor" if tid == pid else "store"
        counts[thread, place(frames)] += 1
    return counts


def _children(pid: int) -> list[int]:
    """Every descendant of C{pid}."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent:
                found.append(int(entry))
                todo.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="messages a second offered (default %(default)s)")
    parser.add_argument("--floor", action="store_true",
                        help="message_floor.py's bare stack instead of medichat")
    parser.add_argument("--steps", type=int, default=4,
                        help="measured steps (windows) of the benchmark (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="seconds sampled, from the end of the first step "
                             "(default %(default)s)")
    parser.add_argument("--frequency", type=int, default=4000,
                        help="samples a second of CPU (default %(default)s)")
    parser.add_argument("--database", default=None,
                        help="postgresql://user@host:port[/db]: the store on PostgreSQL (a "
                             "database made and dropped for the run, as msgpath.py and "
                             "message_floor.py do); default: SQLite")
    parser.add_argument("--server-tree", default=None,
                        help="another source tree whose medichat to run (msgpath.py's option)")
    options = parser.parse_args()
    if shutil.which("perf") is None:
        parser.error("needs Linux perf (Debian's linux-perf)")
    if options.steps < 2:
        parser.error("--steps must be at least 2: the first one is not sampled")
    rate = f"{options.rate:g}"
    if options.floor:
        command = [sys.executable, os.path.join(HERE, "message_floor.py"), "--rate", rate,
                   "--duration", "3", "--repeats", str(options.steps)]
        if options.database:
            command += ["--store", "postgresql", "--database", options.database]
        server_mark, step_mark = "--serve", re.compile(r"bare stack .*messages/s")
    else:
        command = [sys.executable, os.path.join(HERE, "msgpath.py"),
                   "--rates", ",".join([rate] * options.steps), "--all-steps", "--warmup", "1"]
        if options.server_tree:
            command += ["--server-tree", options.server_tree]
        if options.database:
            command += ["--database", options.database]
        server_mark, step_mark = "twistd", re.compile(r"answered; POST")
    directory = tempfile.mkdtemp(prefix="medichat-perf-")
    data = os.path.join(directory, "perf.data")
    log(" ".join(command[1:]))
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(bench.stdout.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        server = None
        assert bench.stderr is not None
        for line in bench.stderr:
            if server is None:
                server = next((p for p in _children(bench.pid) if server_mark in _cmdline(p)),
                              None)
            if step_mark.search(line):
                break
        else:
            raise SystemExit(f"the benchmark ended before its first step: {bench.wait()}")
        if server is None:
            raise SystemExit("found no server process under the benchmark")
        log(f"sampling server {server} for {options.seconds:g} s")
        sampled = subprocess.run(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(options.frequency), "-g",
             "-p", str(server), "-o", data, "--", "sleep", str(options.seconds)],
            capture_output=True, text=True, timeout=options.seconds + 60,
        )
        if sampled.returncode != 0 or not os.path.exists(data):
            # Typically kernel.perf_event_paranoid above 1 for a user other than root.
            raise SystemExit(f"perf record failed ({sampled.returncode}): "
                             f"{sampled.stderr.strip()[-500:]}")
        bench.stderr.read()  # what the benchmark says of its remaining steps
        if bench.wait() != 0:
            raise SystemExit(f"the benchmark failed with {bench.returncode}")
        reader.join()
        report = json.loads(output[0])
        counts = samples(data, server)
    finally:
        if bench.poll() is None:
            bench.send_signal(signal.SIGINT)
            bench.wait()
        shutil.rmtree(directory, ignore_errors=True)
    if options.floor:
        windows = report["windows"][1:]
        per_message = statistics.median(w["server_cpu_us_per_message"] for w in windows)
        answered = [w["answered_per_s"] for w in windows]
    else:
        steps = report["steps"][1:]
        per_message = statistics.median(s["server_cpu_us_per_message"] for s in steps)
        answered = [s["answered_per_s"] for s in steps]
    total = sum(counts.values())
    parts = [
        {"thread": thread, "where": where, "share": round(n / total, 4),
         "us_per_message": round(per_message * n / total, 1)}
        for (thread, where), n in counts.most_common()
    ]
    threads: Counter[str] = Counter()
    places: Counter[str] = Counter()
    for (thread, where), n in counts.items():
        threads[thread] += n
        places["kernel" if where.startswith("kernel") else where] += n
    print(json.dumps({
        "benchmark": "cpu_split",
        "server": "floor" if options.floor else "medichat",
        "server_tree": options.server_tree,
        "store": "postgresql" if options.database else "sqlite",
        "rate_per_s": options.rate,
        "answered_per_s": answered,
        "cpu_us_per_message": round(per_message, 1),
        "samples": total,
        "by_thread_us": {t: round(per_message * n / total, 1) for t, n in threads.most_common()},
        "by_place_us": {p: round(per_message * n / total, 1) for p, n in places.most_common()},
        "parts": parts,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
