"""
L{medichat.model.new_id}: random (version 4) UUIDs, as C{str(uuid.uuid4())} makes them,
from random bytes read for many ids at once.
"""

from __future__ import annotations

import os
import threading
import uuid

from twisted.trial.unittest import SynchronousTestCase

from medichat import model


class NewIdTests(SynchronousTestCase):
    def test_uuid4(self) -> None:
        """Each id is the canonical text of an RFC 4122 version 4 UUID."""
        for _ in range(2000):
            text = model.new_id()
            parsed = uuid.UUID(text)
            self.assertEqual((parsed.version, parsed.variant), (4, uuid.RFC_4122))
            self.assertEqual(str(parsed), text)

    def test_bytes_as_uuid4(self) -> None:
        """
        The id of 16 random bytes is C{uuid.UUID(bytes=..., version=4)}'s, and reads of
        the operating system's bytes happen once for many ids.
        """
        reads: list[bytes] = []

        def urandom(size: int) -> bytes:
            chunk = bytes((i * 37 + len(reads)) % 256 for i in range(size))
            reads.append(chunk)
            return chunk

        self.patch(model.os, "urandom", urandom)
        ids = model._RandomIds()
        made = [ids() for _ in range(model._RandomIds._IDS_PER_READ + 1)]
        self.assertEqual(len(reads), 2)
        expected = [
            str(uuid.UUID(bytes=reads[0][i:i + 16], version=4))
            for i in range(0, len(reads[0]), 16)
        ] + [str(uuid.UUID(bytes=reads[1][:16], version=4))]
        self.assertEqual(made, expected)

    def test_unique_across_threads(self) -> None:
        """Threads taking ids at once never get the same one."""
        ids = model._RandomIds()
        taken: list[list[str]] = [[] for _ in range(4)]

        def take(into: list[str]) -> None:
            for _ in range(3000):
                into.append(ids())

        threads = [threading.Thread(target=take, args=(into,)) for into in taken]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything = [text for into in taken for text in into]
        self.assertEqual(len(set(everything)), len(everything))

    def test_fork(self) -> None:
        """A forked child reads its own bytes: it never makes the ids its parent makes."""
        model.new_id()  # bytes read, most not yet used
        readable, writable = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                os.close(readable)
                os.write(writable, "\n".join(model.new_id() for _ in range(50)).encode())
            finally:
                os._exit(0)
        os.close(writable)
        with os.fdopen(readable) as pipe:
            child = pipe.read().split("\n")
        os.waitpid(pid, 0)
        parent = [model.new_id() for _ in range(50)]
        self.assertEqual(len(child), 50)
        self.assertFalse(set(child) & set(parent))


class TimeOrderedIdTests(SynchronousTestCase):
    """
    L{model.new_time_id}: RFC 9562 version 7 UUIDs, ordered by the time they hold.
    """

    def test_uuid7(self) -> None:
        """Each id is the canonical text of a version 7 UUID holding the time given."""
        millis = 1_764_547_200_123  # 2025-12-01T00:00:00.123Z
        for _ in range(2000):
            text = model.new_time_id(millis)
            parsed = uuid.UUID(text)
            self.assertEqual((parsed.version, parsed.variant), (7, uuid.RFC_4122))
            self.assertEqual(str(parsed), text)
            self.assertEqual(parsed.int >> 80, millis)
            self.assertTrue(model.is_uuid(text))

    def test_random_bits(self) -> None:
        """
        Apart from the time, version and variant, an id is the 74 bits of the random
        bytes it was made from, which are the same bytes version 4 ids take.
        """
        reads: list[bytes] = []

        def urandom(size: int) -> bytes:
            chunk = bytes((i * 53 + 7) % 256 for i in range(size))
            reads.append(chunk)
            return chunk

        self.patch(model.os, "urandom", urandom)
        ids = model._RandomIds()
        made = uuid.UUID(ids.time_ordered(5))
        random = int.from_bytes(reads[0][:16], "big")
        time_version_variant = ((1 << 48) - 1 << 80) | (0xF << 76) | (0b11 << 62)
        self.assertEqual(made.int & ~time_version_variant, random & ~time_version_variant)
        self.assertEqual(made.int >> 80, 5)
        self.assertEqual(len(reads), 1)

    def test_ordered_by_time(self) -> None:
        """An id made for a later millisecond sorts after one made for an earlier one,
        as a UUID and as text."""
        made = [model.new_time_id(1_000_000 + i) for i in range(0, 3000, 3)]
        self.assertEqual(sorted(made), made)
        self.assertEqual(sorted(made, key=uuid.UUID), made)

    def test_unique_within_a_millisecond(self) -> None:
        """Ids of the same millisecond differ (74 random bits)."""
        made = {model.new_time_id(42) for _ in range(5000)}
        self.assertEqual(len(made), 5000)

    def test_out_of_range_times(self) -> None:
        """A time before 1970 holds 0, one past what 48 bits hold holds their most; the
        ids are still version 7 UUIDs."""
        before = uuid.UUID(model.new_time_id(-5))
        after = uuid.UUID(model.new_time_id(1 << 60))
        self.assertEqual((before.int >> 80, before.version), (0, 7))
        self.assertEqual((after.int >> 80, after.version), ((1 << 48) - 1, 7))
