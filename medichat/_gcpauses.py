"""
Garbage-collection pauses, recorded for the benchmarks.

With C{MEDICHAT_GC_PAUSES=PATH} in the server's environment, every collection is appended
to C{PATH} as one line: C{wall_time generation pause_us collected uncollectable cpu_us}:
the pause as elapsed time (what a request waiting behind it sees) and as the CPU time the
collecting thread used (what the collection itself cost; on a busy machine the elapsed
time also holds the time the process waited for a CPU).  Without
it nothing is installed, so an ordinary server pays nothing.  This is a measuring aid, not
an option: it is not in the option table and the lines are written in batches (at most
every half second, and at once after a full collection) to keep its own cost small.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

ENVIRONMENT_VARIABLE = "MEDICHAT_GC_PAUSES"

_FLUSH_AFTER = 0.5
"""Seconds the recorded lines may wait before they are written."""

_FLUSH_LINES = 256


class PauseRecorder:
    """
    A C{gc.callbacks} entry that times each collection and writes it to a file descriptor.

    @param write: writes bytes (C{os.write} on the open file, in the server).
    @param timer: a monotonic high-resolution clock, for the pause itself.
    @param wall: the wall clock, to place the pause in a benchmark's windows.
    @param cpu: the calling thread's CPU time.
    """

    def __init__(self, write: Callable[[bytes], Any],
                 timer: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        self._write = write
        self._timer = timer
        self._wall = wall
        self._cpu = cpu
        self._started = 0.0
        self._cpu_started = 0.0
        self._lines: list[str] = []
        self._flushed = wall()

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._cpu_started = self._cpu()
            self._started = self._timer()
            return
        pause = self._timer() - self._started
        cpu = self._cpu() - self._cpu_started
        now = self._wall()
        generation = info.get("generation", 0)
        self._lines.append(
            f"{now:.6f} {generation} {pause * 1e6:.0f} "
            f"{info.get('collected', 0)} {info.get('uncollectable', 0)} {cpu * 1e6:.0f}\n"
        )
        if (generation == 2 or len(self._lines) >= _FLUSH_LINES
                or now - self._flushed >= _FLUSH_AFTER):
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the lines recorded so far."""
        if self._lines:
            self._write("".join(self._lines).encode("ascii"))
            self._lines.clear()
        self._flushed = self._wall() if now is None else now


def install_from_environment(environ: Mapping[str, str] | None = None) -> PauseRecorder | None:
    """
    Start recording if C{MEDICHAT_GC_PAUSES} names a file (appended to, created 0600).

    @return: the recorder, or L{None} when the variable is not set.
    """
    path = (os.environ if environ is None else environ).get(ENVIRONMENT_VARIABLE)
    if not path:
        return None
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    recorder = PauseRecorder(lambda data: os.write(descriptor, data))
    gc.callbacks.append(recorder)
    return recorder
