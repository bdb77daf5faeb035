"""
Tests for the event options of L{medichat.app.tap}: C{--event-retention} and
C{--event-poll-interval} (their wiring around the real store is in
C{tests/e2e/test_event_wiring.py}); and the store's C{--group-window}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from medichat.app.tap import Options, makeService
from medichat.store.scripts import DEFAULT_GROUP_WINDOW


class EventOptionTests(SynchronousTestCase):
    """
    The event options have documented defaults and refuse what is not positive.
    """

    def test_defaults(self) -> None:
        """Seven days of retention; a fallback read every second."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["event-retention"], 7 * 24 * 3600)
        self.assertEqual(options["event-poll-interval"], 1.0)

    def test_values(self) -> None:
        """Both take numbers of seconds."""
        options = Options()
        options.parseOptions(["--event-retention", "3600", "--event-poll-interval", "0.25"])
        self.assertEqual((options["event-retention"], options["event-poll-interval"]),
                         (3600, 0.25))

    def test_bad(self) -> None:
        """Zero, negative or non-numeric values are usage errors naming the option."""
        for option, bad in (("event-retention", "0"), ("event-retention", "1.5"),
                            ("event-poll-interval", "0"), ("event-poll-interval", "soon")):
            with self.subTest(option=option, bad=bad):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, [f"--{option}", bad]
                )
                self.assertIn(f"--{option}", str(error))


class GroupWindowOptionTests(SynchronousTestCase):
    """
    C{--group-window} sets the store's window, in milliseconds; 0 turns it off.
    """

    def window(self, *args: str) -> float:
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), *args])
        service: Any = makeService(options, MemoryReactorClock())
        return service.store.group_window  # type: ignore[no-any-return]

    def test_default(self) -> None:
        """None by default, on either store."""
        self.assertEqual(DEFAULT_GROUP_WINDOW, 0.0)
        self.assertEqual(self.window(), 0.0)
        self.assertEqual(self.window("--database", "postgresql://u@127.0.0.1:1/x"), 0.0)

    def test_values(self) -> None:
        """Milliseconds, on either store; 0 for none."""
        self.assertEqual(self.window("--group-window", "3"), 0.003)
        self.assertEqual(self.window("--group-window", "1.5"), 0.0015)
        self.assertEqual(self.window("--group-window", "0"), 0.0)
        url = ("--database", "postgresql://u@127.0.0.1:1/x")
        self.assertEqual(self.window(*url, "--group-window", "2"), 0.002)

    def test_bad(self) -> None:
        """Negative or non-numeric values are usage errors naming the option."""
        for bad in ("-1", "soon", "inf"):
            with self.subTest(bad=bad):
                error = self.assertRaises(
                    usage.UsageError, Options().parseOptions, ["--group-window", bad]
                )
                self.assertIn("--group-window", str(error))
