"""
Tests for the webhook options of L{medichat.app.tap}: C{--webhook-url} and
C{--webhook-secret-file} go together and are checked at start, and the service tree gets
a dispatcher only with them.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from medichat.app.tap import Options, makeService
from medichat.domain.webhooks import WebhookDispatcher

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


class WebhookOptionTests(SynchronousTestCase):
    """
    The webhook options and their usage errors.
    """

    def secret_file(self, text: str = SECRET + "\n") -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def refused(self, *args: str) -> str:
        """The usage error that parsing C{args} gives."""
        error = self.assertRaises(usage.UsageError, Options().parseOptions, list(args))
        return str(error)

    def test_defaults(self) -> None:
        """Off by default: no URL, no key; a 15 s timeout and a 5 s coalescing window."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(
            (options["webhook-url"], options["webhook-key"], options["webhook-timeout"],
             options["webhook-coalesce"]),
            (None, None, 15.0, 5.0),
        )

    def test_configured(self) -> None:
        """A URL and a secret file give the decoded key."""
        options = Options()
        options.parseOptions(["--webhook-url", "https://push.example/hook",
                              "--webhook-secret-file", self.secret_file(),
                              "--webhook-timeout", "20", "--webhook-coalesce", "0"])
        self.assertEqual(options["webhook-key"], b"s" * 32)
        self.assertEqual((options["webhook-timeout"], options["webhook-coalesce"]), (20.0, 0.0))

    def test_together(self) -> None:
        """One without the other is refused."""
        self.assertIn("go together", self.refused("--webhook-url", "https://h/"))
        self.assertIn("go together",
                      self.refused("--webhook-secret-file", self.secret_file()))

    def test_bad_url(self) -> None:
        """Only http and https URLs with a host."""
        for url in ("ftp://h/x", "h/x", "https://", "mailto:a@b"):
            self.assertIn("--webhook-url",
                          self.refused("--webhook-url", url,
                                       "--webhook-secret-file", self.secret_file()))

    def test_bad_secret(self) -> None:
        """A secret without whsec_, not base64, or too short is a clear usage error."""
        for text, words in [
            (base64.b64encode(b"s" * 32).decode(), "whsec_"),
            ("whsec_***", "not base64"),
            ("whsec_" + base64.b64encode(b"s" * 8).decode(), "24 to 64 bytes"),
        ]:
            message = self.refused("--webhook-url", "https://h/",
                                   "--webhook-secret-file", self.secret_file(text))
            self.assertIn(words, message)
            self.assertNotIn(text, message)

    def test_missing_secret_file(self) -> None:
        """A secret file that cannot be read is named."""
        missing = os.path.join(self.mktemp(), "secret")
        message = self.refused("--webhook-url", "https://h/", "--webhook-secret-file", missing)
        self.assertIn(missing, message)

    def test_bad_numbers(self) -> None:
        """The timeout must be positive, the window zero or more."""
        self.refused("--webhook-timeout", "0")
        self.refused("--webhook-coalesce", "-1")

    def test_wiring(self) -> None:
        """With webhooks, a dispatcher starts after the store and the service coalesces."""
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(),
                              "--webhook-url", "http://127.0.0.1:1/hook",
                              "--webhook-secret-file", self.secret_file(),
                              "--webhook-coalesce", "2"])
        service: Any = makeService(options, reactor)
        dispatchers = [p for p in service._after_store if isinstance(p, WebhookDispatcher)]
        self.assertEqual(len(dispatchers), 1)

    def test_no_wiring(self) -> None:
        """Without webhooks, no dispatcher."""
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        service: Any = makeService(options, reactor)
        self.assertFalse(any(isinstance(p, WebhookDispatcher) for p in service._after_store))
