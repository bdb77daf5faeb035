#!/usr/bin/env python3
"""
Which Python functions a chat message runs in the server, and how often: C{cProfile}'s
call counts per message, for the reactor's thread and for SQLite's thread, a figure that
does not move with the machine's noise (the same build gives the same counts), where
C{instructions.py} sees only the interpreter's C functions.

Starts the server (C{twistd -n medichat}) with a profiler set up before it, opens
C{--in-flight} conversations (customer and employee subscribed over STOMP-over-WebSocket,
one keep-alive HTTP connection each) and posts messages in waves, as C{instructions.py}
does.  After C{--warmup} waves it turns profiling on (C{SIGUSR1}: the reactor's thread,
and each store transaction run on SQLite's thread from then on), posts C{--messages}
more, turns it off (C{SIGUSR2}) and reads the profiles.  Prints one JSON object: Python
calls per message per thread (C functions called from Python included), and the
functions called most, with their calls per message and their share of the thread's
profiled time of its own (the profiler's overhead inflates small functions: a ranking,
not a measure of time).  On PostgreSQL (C{--server-option
--database=postgresql://...}) everything runs on the reactor's thread.

    python benchmarks/calls.py --messages 1000
    python benchmarks/calls.py --messages 1600 --in-flight 16
    python benchmarks/calls.py --server-tree ../other-worktree
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Server, log  # noqa: E402
from instructions import Medichat, load_options, parse_load_options, waves  # noqa: E402

# Runs in the server's process before twistd: the twistd command follows it in sys.argv.
BOOTSTRAP = r"""
import cProfile, os, signal, sys
out = os.environ["MEDICHAT_CALLS_OUT"]
reactor_profile, store_profile = cProfile.Profile(), cProfile.Profile()
state = {"on": False}
def on(*_):
    state["on"] = True
    reactor_profile.enable()
def off(*_):
    state["on"] = False
    reactor_profile.disable()
    reactor_profile.dump_stats(out + ".reactor")
    store_profile.dump_stats(out + ".store")
    open(out + ".done", "w").close()
signal.signal(signal.SIGUSR1, on)
signal.signal(signal.SIGUSR2, off)
from medichat.store import _dbthread
queue = _dbthread.DatabaseThread.run
def run(self, interaction, *args):
    if not state["on"]:
        return queue(self, interaction, *args)
    def profiled(cursor, *rest):
        store_profile.enable()
        try:
            return interaction(cursor, *rest)
        finally:
            store_profile.disable()
    return queue(self, profiled, *args)
_dbthread.DatabaseThread.run = run
sys.argv = sys.argv[1:]
from twisted.scripts.twistd import run as twistd
twistd()
"""


def _name(function: tuple[str, int, str]) -> str:
    path, line, name = function
    if path == "~":
        return name
    for marker in ("site-packages/", "/benchmarks/../", "/medichat/"):
        if marker in path:
            path = ("medichat/" if marker == "/medichat/" else "") + path.split(marker, 1)[1]
            break
    return f"{path}:{line} {name}"


def summary(path: str, messages: int, top: int) -> dict[str, Any]:
    """Calls per message in a profile, and its most called functions."""
    try:
        stats: dict[Any, Any] = pstats.Stats(path).stats  # type: ignore[attr-defined]
    except TypeError:
        stats = {}  # a profile that saw no call (SQLite's thread, on PostgreSQL)
    if not stats:
        return {"calls_per_message": 0.0, "functions": []}
    calls = sum(entry[1] for entry in stats.values())
    own = sum(entry[2] for entry in stats.values()) or 1.0
    waits = ("<method 'poll' of 'select.epoll' objects>",)
    busy = own - sum(entry[2] for key, entry in stats.items() if key[2] in waits) or 1.0
    ranked = sorted(stats.items(), key=lambda item: (-item[1][1], _name(item[0])))[:top]
    return {
        "calls_per_message": round(calls / messages, 1),
        "functions": [
            {"function": _name(key), "calls_per_message": round(entry[1] / messages, 2),
             "share_of_own_time": round(entry[2] / busy, 4) if key[2] not in waits else None}
            for key, entry in ranked
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    load_options(parser, messages=1000)
    parser.add_argument("--top", type=int, default=30,
                        help="functions listed per thread (default %(default)s)")
    options = parse_load_options(parser)
    directory = tempfile.mkdtemp(prefix="medichat-calls-")
    out = os.path.join(directory, "profile")
    server = Server(["--message-rate", "100000000", *options.server_option],
                    repo=options.server_tree, env={"MEDICHAT_CALLS_OUT": out},
                    wrapper=(sys.executable, "-c", BOOTSTRAP))
    try:
        server.start(timeout=120)
        clients = [Medichat(server) for _ in range(options.in_flight)]
        each = options.messages // len(clients)
        log(f"{options.warmup} messages to warm up in each of {len(clients)} conversations")
        waves(clients, 0, options.warmup)
        # The signals' handlers run in the reactor's thread as it wakes: given time to,
        # before the first message and after the last one's work.
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.2)
        log(f"{each * len(clients)} messages counted")
        waves(clients, options.warmup, each)
        time.sleep(0.2)
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(out + ".done"):
            if time.monotonic() > deadline:
                raise RuntimeError("the server wrote no profile")
            time.sleep(0.05)
        messages = each * len(clients)
        report = {
            "benchmark": "calls", "server_tree": options.server_tree,
            "messages": messages, "in_flight": len(clients), "warmup": options.warmup,
            "reactor": summary(out + ".reactor", messages, options.top),
            "store_thread": summary(out + ".store", messages, options.top),
        }
    finally:
        server.stop()
        for name in ("reactor", "store", "done"):
            if os.path.exists(f"{out}.{name}"):
                os.unlink(f"{out}.{name}")
        os.rmdir(directory)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
