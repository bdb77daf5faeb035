"""
Tests for the event options of L{medichat.app.tap}: C{--event-retention} and
C{--event-poll-interval} (their wiring around the real store is in
C{tests/e2e/test_event_wiring.py}).
"""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from medichat.app.tap import Options


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
