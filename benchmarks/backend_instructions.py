#!/usr/bin/env python3
"""
What one chat message costs a PostgreSQL backend in machine instructions: the other half
of C{instructions.py}, which counts the medichat server's.  A backend's CPU time varies by
a quarter from run to run on a shared machine; its instructions do not.

Makes a PostgreSQL cluster of its own in a temporary folder (C{initdb}, as the user
C{postgres} when run as root; the binaries of C{--postgres-bin}), starts it on a free
loopback port, and has the store of C{--server-tree} migrate a database and create
C{--in-flight} conversations.  From a copy of that database the store then commits
C{--messages} messages, in waves of one per conversation (so with 16, a wave's messages
may share a transaction, as at high rates), each with its C{received} receipt given, while
every text it sends is recorded exactly as sent (C{cursor.mogrify}).  The cluster is
stopped, and the recording is replayed into another copy of the same database by
C{postgres --single} under C{valgrind --tool=callgrind}, as is an empty recording; the
difference, per message, is what a backend spent on the messages: parsing, planning and
executing their statements, their commits.  (Single-user mode reads each round trip's
text as one query, as the server receives it; it writes no statistics and sends nothing
over a socket, which a real backend does besides.)  Prints one JSON object.

    python benchmarks/backend_instructions.py --messages 320
    python benchmarks/backend_instructions.py --messages 320 --in-flight 16
    python benchmarks/backend_instructions.py --server-tree ../other-worktree
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import log  # noqa: E402

RECORD = r"""
import sys
from attrs import evolve
from twisted.internet import defer, task
from medichat.model import MessageCommit
from medichat.store import PostgreSQLStore, postgres
from tests.store.test_store import T0, a_conversation, a_message

url, mode, out = sys.argv[1], sys.argv[2], sys.argv[5]
count, width = int(sys.argv[3]), int(sys.argv[4])
sent = []
recording = [False]
execute = postgres._Connection.execute

def recorded(self, cursor, sql, params):
    if recording[0]:
        sent.append(cursor.mogrify(sql, params).decode())
    return execute(self, cursor, sql, params)

postgres._Connection.execute = recorded

async def main(reactor):
    store = PostgreSQLStore(url, reactor, pool_size=1)
    await store.start()
    names = [f"bench-{k}" for k in range(width)]
    if mode == "init":
        for name in names:
            await store.create_conversation(evolve(a_conversation(), id=name))
    else:
        conversations = [await store.get_conversation(name) for name in names]
        recording[0] = True
        for i in range(count // width):
            await defer.gatherResults([
                store.commit_message(
                    MessageCommit(a_message(c, T0 + i, f"message {i}"), None, ("nurse-1",))
                )
                for c in conversations
            ])
        recording[0] = False
        with open(out, "w") as f:
            for text in sent:
                f.write(text.rstrip().rstrip(";") + ";\n\n")
    await store.stop()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else ""


def as_postgres(command: list[str]) -> list[str]:
    """C{command} as the user C{postgres} if we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def replay(pg_bin: str, data: str, database: str, script: str, out_dir: str) -> int:
    """Instructions of a single-user backend running C{script} on C{database}."""
    out_file = os.path.join(out_dir, f"callgrind.{os.path.basename(script)}")
    with open(script) as stdin:
        result = subprocess.run(
            as_postgres([
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                os.path.join(pg_bin, "postgres"), "--single", "-j", "-D", data, database,
            ]),
            stdin=stdin, capture_output=True, text=True, check=False,
        )
    output = result.stdout + result.stderr
    if "ERROR" in output:
        raise SystemExit(f"the replay of {script} failed:\n{output[-2000:]}")
    collected = re.search(r"Collected : (\d+)", output)
    if collected is None:
        raise SystemExit(f"valgrind said nothing of {script}:\n{output[-2000:]}")
    return int(collected.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--messages", type=int, default=320, help="messages counted (default 320)")
    parser.add_argument("--in-flight", type=int, default=1,
                        help="conversations, one message each per wave (default 1)")
    parser.add_argument("--server-tree", default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), help="the medichat source tree whose store runs")
    parser.add_argument("--postgres-bin", default=default_bin(),
                        help="PostgreSQL's binaries (default: the newest /usr/lib/postgresql)")
    options = parser.parse_args()
    tree = os.path.abspath(options.server_tree)
    pg_bin = options.postgres_bin
    if not pg_bin or shutil.which("valgrind") is None:
        raise SystemExit("needs PostgreSQL's server binaries and valgrind")
    work = tempfile.mkdtemp(prefix="medichat-backend-")
    os.chmod(work, 0o755)
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
    data = os.path.join(work, "data")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": tree}
    started = False
    try:
        subprocess.run(as_postgres([os.path.join(pg_bin, "initdb"), "-D", data, "-A", "trust",
                                    "-U", "postgres"]), check=True, capture_output=True)
        subprocess.run(as_postgres([
            os.path.join(pg_bin, "pg_ctl"), "-D", data, "-w", "-l", os.path.join(work, "log"),
            "-o", f"-p {port} -k {work} -c listen_addresses=127.0.0.1", "start",
        ]), check=True, capture_output=True)
        started = True
        url = f"postgresql://postgres@127.0.0.1:{port}"

        def psql(sql: str) -> None:
            subprocess.run(["psql", "-X", "-q", f"{url}/postgres", "-c", sql], check=True)

        psql("CREATE DATABASE bench_init")
        subprocess.run([sys.executable, "-c", RECORD, f"{url}/bench_init", "init", "0",
                        str(options.in_flight), ""], env=env, cwd=tree, check=True)
        psql("CREATE DATABASE bench_record TEMPLATE bench_init")
        psql("CREATE DATABASE bench_replay TEMPLATE bench_init")
        recording = os.path.join(work, "messages.sql")
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", RECORD, f"{url}/bench_record", "record",
                        str(options.messages), str(options.in_flight), recording],
                       env=env, cwd=tree, check=True)
        log(f"recorded {options.messages} messages in {time.monotonic() - began:.1f} s")
        subprocess.run(as_postgres([os.path.join(pg_bin, "pg_ctl"), "-D", data, "-w", "stop"]),
                       check=True, capture_output=True)
        started = False
        empty = os.path.join(work, "empty.sql")
        open(empty, "w").close()
        for path in (recording, empty):
            os.chmod(path, 0o644)
        with open(recording) as f:
            texts = f.read().split(";\n\n")
        round_trips = len([t for t in texts if t.strip()])
        baseline = replay(pg_bin, data, "bench_replay", empty, work)
        total = replay(pg_bin, data, "bench_replay", recording, work)
        messages = options.messages // options.in_flight * options.in_flight
        report: dict[str, Any] = {
            "benchmark": "backend_instructions",
            "server_tree": tree,
            "postgres_bin": pg_bin,
            "messages": messages,
            "in_flight": options.in_flight,
            "round_trips_per_message": round(round_trips / messages, 3),
            "replay_instructions": total,
            "empty_replay_instructions": baseline,
            "backend_instructions_per_message": round((total - baseline) / messages),
        }
        print(json.dumps(report, indent=2))
    finally:
        if started:
            subprocess.run(as_postgres([os.path.join(pg_bin, "pg_ctl"), "-D", data, "-w",
                                        "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
