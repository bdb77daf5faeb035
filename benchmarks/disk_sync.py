#!/usr/bin/env python3
"""
The disk under a durable commit: how long C{fdatasync} takes on this machine, now, while a
file is written at a steady rate.

medichat answers a chat message once it is committed, and a commit waits for the disk
(SQLite's WAL, or PostgreSQL's, each flushed with C{fdatasync}).  Whatever the server does,
a message's latency is never shorter than its commit's flush, and a flush that stalls holds
every message queued behind it: over a window of ten seconds at 1,000 messages a second,
one stall of 200 ms delays some 2 % of them, past the p99.  This writes C{--chunk} bytes
and calls C{fdatasync} after each, paced to C{--rate} MB a second (one rate after
another, C{--seconds} each), in a file of C{--directory} (by default the temporary
directory, where the benchmarks' servers keep their data), and prints per rate the flushes
made and their latency (median, p99, most, and how many took over 20 ms), as one JSON
object.  No Python server runs: this is the machine's own floor for a durable commit's
latency.  Compare its stalls with C{msgpath.py}'s C{delivery_p99_ms} and
C{delivery_max_ms}, measured in the same hour.

    python benchmarks/disk_sync.py --rates 28,65 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import percentile  # noqa: E402

LARGEST_FILE = 512 * 1024 * 1024
"""The file starts again from its beginning past this size, so that a run stays bounded."""


def probe(directory: str, rate_mb: float, chunk: int, seconds: float) -> dict[str, Any]:
    """Write and flush C{chunk} bytes at a time at C{rate_mb} MB/s for C{seconds}."""
    handle, path = tempfile.mkstemp(prefix="medichat-disk-sync-", dir=directory)
    data = b"x" * chunk
    latencies: list[float] = []
    interval = chunk / (rate_mb * 1e6)
    written = 0
    try:
        start = time.monotonic()
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            due = start + len(latencies) * interval
            if now < due:
                time.sleep(due - now)
            os.write(handle, data)
            written += chunk
            before = time.perf_counter()
            os.fdatasync(handle)
            latencies.append((time.perf_counter() - before) * 1000)
            if os.lseek(handle, 0, os.SEEK_CUR) >= LARGEST_FILE:
                os.lseek(handle, 0, os.SEEK_SET)
        elapsed = time.monotonic() - start
    finally:
        os.close(handle)
        os.unlink(path)
    latencies.sort()
    return {
        "rate_mb_per_s": rate_mb,
        "achieved_mb_per_s": round(written / 1e6 / elapsed, 1),
        "flushes": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) or 0.0, 2),
        "p99_ms": round(percentile(latencies, 0.99) or 0.0, 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "over_20ms": sum(1 for latency in latencies if latency > 20),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--rates", default="28,65",
                        help="MB written per second, one step each, in order "
                             "(default %(default)s)")
    parser.add_argument("--chunk", type=int, default=65536,
                        help="bytes written before each fdatasync (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="length of each step (default %(default)s)")
    parser.add_argument("--directory", default=tempfile.gettempdir(),
                        help="where the file is written (default %(default)s)")
    options = parser.parse_args()
    try:
        rates = [float(rate) for rate in options.rates.split(",")]
    except ValueError:
        parser.error(f"--rates: not a list of numbers: {options.rates!r}")
    if any(rate <= 0 for rate in rates) or options.chunk <= 0 or options.seconds <= 0:
        parser.error("--rates, --chunk and --seconds must be positive")
    steps = []
    for rate in rates:
        steps.append(probe(options.directory, rate, options.chunk, options.seconds))
        print(f"{rate} MB/s: fdatasync p99 {steps[-1]['p99_ms']} ms, "
              f"most {steps[-1]['max_ms']} ms", file=sys.stderr)
    print(json.dumps({"benchmark": "disk_sync", "directory": options.directory,
                      "chunk": options.chunk, "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
