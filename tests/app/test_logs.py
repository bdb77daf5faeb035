"""
Tests for C{--version}, the first log line, C{--log-format} (L{medichat.app.logs}) and
C{--access-log}, in process.  Real twistd and twist processes: L{tests.e2e.test_logging}.
"""

from __future__ import annotations

import io
import json
import signal
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

import twisted
from medichat import __version__
from medichat.app import admin, logs
from medichat.app.tap import Options, makeService

_log = Logger()


class VersionTests(TestCase):
    """
    C{twistd medichat --version} and C{medichat-admin --version} say medichat's version.
    """

    def test_tap(self) -> None:
        """The plugin's --version prints medichat's version, then Twisted's."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--version"])
        self.assertEqual(error.code, 0)
        line = out.getvalue().strip()
        self.assertTrue(line.startswith(f"medichat {__version__} (Twisted {twisted.__version__}"),
                        line)

    async def test_admin(self) -> None:
        """medichat-admin --version prints the same line, exit status 0."""
        out, err = io.StringIO(), io.StringIO()
        status = await admin.run(reactor, ["--version"], io.StringIO(), out, err)
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertTrue(out.getvalue().startswith(f"medichat {__version__} (Twisted "))


class StartLineTests(SynchronousTestCase):
    """
    The first thing medichat logs says what runs, on what store, checkers and listeners.
    """

    def start_line(self, *args: str) -> Any:
        events: Any = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), *args])
        makeService(options, reactor)
        ours = [e for e in events if e.get("log_namespace", "").startswith("medichat")]
        self.assertTrue(ours)
        return ours[0]

    def test_development(self) -> None:
        """With no --auth: SQLite's file, development defaults ON, every listener."""
        event = self.start_line("--listen", "tcp:0", "--stomp-listen", "tcp:0")
        text = formatEvent(event)
        self.assertTrue(text.startswith(f"medichat {__version__} (Twisted"), text)
        self.assertIn("store SQLite ", text)
        self.assertIn("medichat.sqlite3", text)
        self.assertIn("listening HTTP/WebSocket tcp:0, STOMP/TCP tcp:0", text)
        self.assertIn("development defaults ON", text)
        self.assertIs(event["development_defaults"], True)

    def test_production(self) -> None:
        """With --auth and PostgreSQL: the checkers, the database without its password."""
        event = self.start_line(
            "--auth", "session:ttl=60",
            "--database", "postgresql://medichat:pass-word-9@db.example:5433/chat",
        )
        text = formatEvent(event)
        self.assertIn("store PostgreSQL postgresql://medichat:***@db.example:5433/chat", text)
        self.assertIn("auth session;", text)
        self.assertIn("listening HTTP/WebSocket tcp:8080;", text)
        self.assertIn("development defaults off", text)
        self.assertNotIn("pass-word-9", repr(event))


class TextLineTests(SynchronousTestCase):
    """
    L{logs.text_line} writes the lines of twisted.logger's text observers, its
    timestamps' text kept for a second.
    """

    def event(self, when: float | None, **fields: Any) -> dict[str, Any]:
        return {"log_format": "{n} at {when}", "n": 1, "when": when,
                "log_namespace": "medichat.x", "log_level": LogLevel.warn,
                "log_time": when, **fields}

    def test_as_twisted(self) -> None:
        """
        Any time, in and across seconds, back and forth, and no time at all: the same
        line as twisted.logger's own.
        """
        times = [0.0, 0.25, 0.999999, 1.0, 1.5, 1700000000.0, 1700000000.9, 1700000001.1,
                 1700000000.2, 59.99, 60.0, -0.5, None,
                 # Within half a microsecond of a second: datetime rounds up first.
                 0.9999999999, 1700000000.9999997, -1e-7, -0.9999999999]
        for when in times:
            expected = formatEventAsClassicLogText(self.event(when))
            self.assertEqual(logs.text_line(self.event(when)), expected, when)
        failure = Failure(ValueError("boom"))
        event = self.event(12.5, log_failure=failure, log_system="sys")
        self.assertEqual(logs.text_line(event), formatEventAsClassicLogText(event))

    @settings(max_examples=300, deadline=None)
    @given(
        text=st.text(),
        key=st.sampled_from(["access", "log_format", "x", "a.b", "0", "n()", ""]),
        value_is_text=st.booleans(),
        namespace=st.one_of(st.none(), st.text(), st.integers()),
        level=st.one_of(st.none(), st.sampled_from(list(LogLevel.iterconstants()))),
        when=st.one_of(st.none(), st.floats(min_value=-1e9, max_value=4e9)),
        system=st.one_of(st.none(), st.text(max_size=5)),
        failed=st.booleans(),
    )
    def test_one_field_as_twisted(
        self, text: str, key: str, value_is_text: bool, namespace: object,
        level: LogLevel | None, when: float | None, system: str | None, failed: bool,
    ) -> None:
        """
        Events whose format is one field, whole (the access log's, made without
        twisted.logger's formatter), and their near misses: the same line as
        twisted.logger's own, or none when it writes none.
        """
        event: dict[str, Any] = {"log_format": "{" + key + "}"}
        if key:
            event[key] = text if value_is_text else [text]
        for name, field in [("log_namespace", namespace), ("log_level", level),
                            ("log_time", when), ("log_system", system)]:
            if field is not None:
                event[name] = field
        if failed:
            event["log_failure"] = Failure(ValueError(text))
        self.assertEqual(logs.text_line(event), formatEventAsClassicLogText(event))

    def test_one_field_cheaply(self) -> None:
        """
        An access line does not go through twisted.logger's formatter; a line with more
        than one field does.
        """
        calls: list[object] = []

        def formatting(event: Any, formatTime: Any) -> str | None:
            calls.append(event)
            return formatEventAsClassicLogText(event, formatTime)

        self.patch(logs, "formatEventAsClassicLogText", formatting)
        access = {"log_format": "{access}", "access": "GET / 200\nx",
                  "log_namespace": "medichat.http.access", "log_level": LogLevel.info,
                  "log_time": 3.0}
        self.assertEqual(logs.text_line(access), formatEventAsClassicLogText(access))
        self.assertEqual(calls, [])
        self.assertIsNone(logs.text_line(dict(access, access="")))
        self.assertEqual(calls, [])
        logs.text_line(self.event(3.0))
        self.assertEqual(len(calls), 1)

    def test_seconds_kept(self) -> None:
        """The text of a second is made once while events stay in it."""
        made: list[float] = []

        def counting(when: float | None) -> str:
            made.append(when)  # type: ignore[arg-type]
            return formatTime(when)

        self.patch(logs, "formatTime", counting)
        text = logs._SecondsText()
        lines = [text(100.0 + i / 10) for i in range(10)] + [text(101.0), text(101.2)]
        self.assertEqual(made, [100, 101])
        self.assertEqual(len(set(lines[:10])), 1)
        self.assertEqual(lines[10], formatTime(101.0))

    def test_observer(self) -> None:
        """L{logs.text_file_observer} writes L{logs.text_line}'s lines to its file."""
        out = io.StringIO()
        observer = logs.text_file_observer(out)
        observer(self.event(3.0))
        observer({"log_time": 4.0})  # nothing to say: no line
        self.assertEqual(out.getvalue(), formatEventAsClassicLogText(self.event(3.0)))


class LogFormatOptionTests(SynchronousTestCase):
    """
    C{--log-format} and C{--access-log} take their values, and tell the runner.
    """

    def test_values(self) -> None:
        """text and json (any case); on and off; anything else is a usage error."""
        for args, key, value in [
            ([], "log-format", None),
            (["--log-format", "JSON"], "log-format", "json"),
            ([], "access-log", "on"),
            (["--access-log", "off"], "access-log", "off"),
        ]:
            options = Options()
            options.parseOptions(args)
            self.assertEqual(options[key], value)
        for args in (["--log-format", "xml"], ["--access-log", "maybe"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, args)

    def twistd(self, *args: str) -> ServerOptions:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        options = ServerOptions()
        options.parseOptions(list(args))
        return options

    def test_twistd_json(self) -> None:
        """Under twistd, json makes an observer on twistd's log file, one object a line."""
        path = self.mktemp()
        options = self.twistd("--logfile", path, "medichat", "--log-format", "json")
        factory = options.subOptions.log_observer
        observer = factory()
        self.assertTrue(ILogObserver.providedBy(observer))
        observer({"log_format": "hello {who}", "who": "world", "log_namespace": "x",
                  "log_level": None, "log_time": 1.0})
        observer({"log_format": "again", "log_time": 2.0})
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual([json.loads(line)["log_format"] for line in lines],
                         ["hello {who}", "again"])
        self.assertFalse(lines[0].startswith("\x1e"))

    def test_twistd_text(self) -> None:
        """
        Under twistd, text (the default) is medichat's text observer on twistd's log
        file, writing twistd's own lines.
        """
        event = {"log_format": "hello {who}", "who": "world", "log_namespace": "x",
                 "log_level": LogLevel.info, "log_time": 1.5}
        for args in ([], ["--log-format", "text"]):
            path = self.mktemp()
            options = self.twistd("--logfile", path, "medichat", *args)
            observer = options.subOptions.log_observer()
            observer(event)
            with open(path) as f:
                self.assertEqual(f.read(), formatEventAsClassicLogText(event))

    def test_twistd_text_elsewhere(self) -> None:
        """
        Text leaves twistd's own observer when it was told to log elsewhere: --syslog,
        --logger, or a daemon on standard output (which twistd refuses).
        """
        for args in (["--syslog"], ["--logger", "twisted.logger.textFileLogObserver"],
                     ["--logfile", "-"]):
            options = self.twistd(*args, "medichat")
            self.assertIsNone(options.subOptions.log_observer)

    def test_twistd_conflicts(self) -> None:
        """json cannot go with twistd's --syslog or --logger, nor a daemon on stdout."""
        for args in (["--syslog"], ["--logger", "twisted.logger.textFileLogObserver"],
                     ["--logfile", "-"]):
            self.assertRaises(usage.UsageError, self.twistd,
                              *args, "medichat", "--log-format", "json")

    def test_application_component(self) -> None:
        """The service sets the observer on twistd's application when added to it."""
        path = self.mktemp()
        options = self.twistd("--logfile", path, "medichat", "--data-dir", self.mktemp(),
                              "--log-format", "json")
        service = makeService(options.subOptions, reactor)
        application = Application("medichat")
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        observer({"log_format": "x", "log_time": 1.0})
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["log_format"], "x")

    def test_twist(self) -> None:
        """Under twist: json and text replace its factory; without, its JSON loses the RS."""
        runner: dict[str, Any] = {"fileLogObserverFactory": textFileLogObserver,
                                  "logFormat": "text"}
        self.assertIsNone(logs.configure("json", runner))  # type: ignore[arg-type]
        self.assertIs(runner["fileLogObserverFactory"], logs.json_file_observer)
        logs.configure("text", runner)  # type: ignore[arg-type]
        self.assertIs(runner["fileLogObserverFactory"], logs.text_file_observer)
        runner["logFormat"] = "json"
        logs.configure(None, runner)  # type: ignore[arg-type]
        self.assertIs(runner["fileLogObserverFactory"], logs.json_file_observer)

    def test_json_line(self) -> None:
        """A line parses back, with level and namespace, however odd the fields."""
        out = io.StringIO()
        observer = logs.json_file_observer(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        _log.warn("odd {value}", value=object(), text="line\nbreak", raw=b"\xff")
        (line,) = out.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual(event["log_level"]["name"], "warn")
        self.assertEqual(event["log_namespace"], __name__)
        self.assertEqual(event["text"], "line\nbreak")
