"""
One write per connection for the deliveries of one pass of the event feed.

The feed publishes the events of a commit one after another, and most of its passes reach
the same connections more than once: a chat message's C{message} event and the C{received}
event of its receipt go to both participants, so four frames to two sockets.  Each frame
was one C{send()} on its socket (see L{medichat.carriers._fastpath.send_now}), a system
call that on loopback also does the receiving side's TCP work, and that lets go of the GIL
for the database thread to take.

Inside C{with write_batch:} a connection that supports it (L{BatchedWriter}) holds its
frames instead (L{WriteBatch.hold}), and when the outermost block ends each connection
writes what it held in one call, in the order in which they first held something.  A
connection that must write anything else meanwhile (a close frame) first takes back what it
holds (L{WriteBatch.take}), so its bytes never change order.  Nothing is held past the end
of the block, and the block never leaves the reactor's thread: the frames of a pass leave
when the pass ends, as before, only in fewer calls.
"""

from __future__ import annotations

from typing import Protocol

from twisted.logger import Logger

_log = Logger()


class BatchedWriter(Protocol):
    """A connection that can hold its frames in a L{WriteBatch}."""

    def write_held(self, frames: list[bytes]) -> None:
        """Write C{frames}, which it held in the batch, in order, at once."""


class WriteBatch:
    """
    Frames held per connection while a block of deliveries runs (see the module).
    Re-entrant: only the outermost block writes.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._held: dict[BatchedWriter, list[bytes]] = {}
        # Whether a block is running, so that writers should hold (read on every
        # delivery: an attribute, not a property).
        self.active = False

    def __enter__(self) -> WriteBatch:
        self._depth += 1
        self.active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.active = False
            self._write_all()

    def hold(self, writer: BatchedWriter, frame: bytes) -> None:
        """Hold C{frame} of C{writer} until the block ends (only while L{active})."""
        held = self._held.get(writer)
        if held is None:
            self._held[writer] = [frame]
        else:
            held.append(frame)

    def take(self, writer: BatchedWriter) -> list[bytes]:
        """What C{writer} holds, no longer held (for it to write, or drop, itself)."""
        return self._held.pop(writer, [])

    def _write_all(self) -> None:
        held, self._held = self._held, {}
        for writer, frames in held.items():
            try:
                writer.write_held(frames)
            except Exception:
                _log.failure("writing the frames of a batch failed")


write_batch = WriteBatch()
"""The process's batch: the event feed opens it, the WebSocket carrier holds frames in it."""


__all__ = ["BatchedWriter", "WriteBatch", "write_batch"]
