"""
The log format of C{twistd medichat} and C{twist medichat}: C{--log-format text|json}.

C{json} writes each twisted.logger event as one JSON object on one line (twisted.logger's
L{eventAsJSON}, with no record separator), to wherever the runner logs: twistd's
C{--logfile} (C{twistd.log} for a daemon) or standard output under C{twistd -n}, and
C{twist}'s C{--log-file}.  Every object has C{log_level}, C{log_namespace}, C{log_time} and
C{log_format} besides the event's own fields; an event emitted while an HTTP request was
handled has its C{request_id} (L{medichat._logcontext}), a STOMP session's events name the
C{session}.

Neither runner lets a plugin choose the format outright, so each is told in its own terms:

  - C{twistd} builds its log observer after the plugin made its service and before it runs
    it, and takes an L{ILogObserver} component of the application when there is one (the
    documented way for an application to choose its logging).  L{twistd_observer} opens
    the file that twistd would have opened, by twistd's rules, with the JSON format;
    L{medichat.app.tap.MedichatService} sets it on the application when it is added to it.
    twistd's own C{--logger} and C{--syslog} take the place of this file, so they cannot be
    combined with C{--log-format json}.
  - C{twist} reads its observer factory from its options after the plugin's options were
    parsed: L{configure} replaces it.  Without C{--log-format}, C{twist}'s own choice
    stands (text on a terminal, else JSON), its JSON written one object per line too.

C{text} (the default under C{twistd}) is the runners' own text format, line for line
(L{text_line}): twisted.logger's classic lines, with the timestamp's text made once per
second rather than for every event (it was a third of the cost of logging a line, and an
HTTP server logs one a request).  Under C{twistd} medichat writes it, as above, unless
C{--logger} or C{--syslog} chose another observer or a daemon was told to log to standard
output (which twistd refuses itself).
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    eventAsJSON,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python import usage
from twisted.python.logfile import LogFile

from medichat._logcontext import request_id
from medichat._persecond import PerSecond

LOG_FORMATS = ("text", "json")
"""The values of C{--log-format}."""

DEFAULT_TWISTD_LOG = "twistd.log"
"""The log file of a twistd daemon given no C{--logfile} (twistd's own default)."""


def json_line(event: LogEvent) -> str:
    """
    C{event} as one line of JSON (with its line end), with the id of the HTTP request it
    was emitted for unless it names one.
    """
    if "request_id" not in event:
        current = request_id.get()
        if current is not None:
            event = dict(event, request_id=current)
    return eventAsJSON(event) + "\n"


def json_file_observer(out_file: IO[Any]) -> ILogObserver:
    """
    An observer that writes each event to C{out_file} as one line of JSON.
    """
    return FileLogObserver(out_file, json_line)


class _SecondsText:
    """
    twisted.logger's L{formatTime} in its default format (to the second), remembering
    the text of the last second it made (L{PerSecond}).
    """

    def __init__(self) -> None:
        self._text = PerSecond(formatTime)

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        # The second that twisted.logger's formatTime shows: datetime rounds to the
        # microsecond first (so 0.9999999 is second 1, and -0.0000001 is second 0).
        fraction, whole = math.modf(when)
        micro = round(fraction * 1_000_000)
        return self._text(int(whole) + (micro >= 1_000_000) - (micro < 0))


_seconds_text = _SecondsText()


def text_line(event: LogEvent) -> str | None:
    """
    C{event} as the line (with its line end) that twisted.logger's text observers write,
    or L{None} for an event with nothing to say.

    An event whose format is one field, whole (C{"{access}"}, as the HTTP access log's
    are: one a request), with text in that field and neither a failure nor a system, has
    its line made here, without twisted.logger's formatter: the same line at about a
    third of the cost.  Every other event goes to L{formatEventAsClassicLogText}.
    """
    text = _whole_field(event)
    if text is None:
        return formatEventAsClassicLogText(event, formatTime=_seconds_text)
    if not text:
        return None
    namespace = event.get("log_namespace", "-")
    level = event.get("log_level")
    if type(namespace) is not str:
        return formatEventAsClassicLogText(event, formatTime=_seconds_text)
    level_name = "-" if level is None else level.name
    line = f"{_seconds_text(event.get('log_time'))} [{namespace}#{level_name}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def _whole_field(event: LogEvent) -> str | None:
    """
    The text of an event whose format is one field, whole, and which carries text there
    and nothing that twisted.logger's text line would add to it (a failure's traceback, a
    system, flattened fields); L{None} for any other event.
    """
    form = event.get("log_format")
    if (
        type(form) is not str
        or len(form) < 3
        or form[0] != "{"
        or form[-1] != "}"
        or not form[1:-1].isidentifier()
        or "log_failure" in event
        or "log_system" in event
        or "log_flattened" in event
    ):
        return None
    value = event.get(form[1:-1])
    return value if type(value) is str else None


def text_file_observer(out_file: IO[Any]) -> ILogObserver:
    """
    An observer that writes each event to C{out_file} as twisted.logger's text observers
    do (L{text_line}).
    """
    return FileLogObserver(out_file, text_line)


def _is_twistd(runner_options: usage.Options) -> bool:
    return "logger" in runner_options and "logfile" in runner_options


def _is_twist(runner_options: usage.Options) -> bool:
    return "fileLogObserverFactory" in runner_options


def twistd_log_file(runner_options: usage.Options) -> IO[Any]:
    """
    The file twistd would log to given C{runner_options}: standard output for C{-n}
    without C{--logfile} or with C{--logfile -}, else the named file (C{twistd.log} by
    default), which rotates on C{SIGUSR1} as twistd's own does.
    """
    name = runner_options.get("logfile")
    if name == "-" or (runner_options.get("nodaemon") and not name):
        return sys.stdout
    log_file = LogFile.fromFullPath(name or DEFAULT_TWISTD_LOG)
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def configure(log_format: str | None, runner_options: usage.Options | None) -> (
    Callable[[], ILogObserver] | None
):
    """
    Choose the log format for the runner whose options are C{runner_options} (the parent
    of medichat's options; L{None} when there is none, as in tests).

    @param log_format: C{"text"}, C{"json"} or L{None} (not given).
    @return: under twistd, what makes the observer to set on the application
        (L{twistd_observer} for C{json}, L{text_file_observer} on twistd's log file for
        C{text}, unless twistd was told to log elsewhere); else L{None}.
    @raise usage.UsageError: for C{json} with twistd's C{--logger} or C{--syslog}, or
        as a daemon logging to standard output.
    """
    if runner_options is None:
        return None
    if _is_twist(runner_options):
        if log_format == "text":
            runner_options["fileLogObserverFactory"] = text_file_observer
        elif log_format == "json" or runner_options.get("logFormat") == "json":
            runner_options["fileLogObserverFactory"] = json_file_observer
        return None
    if not _is_twistd(runner_options):
        return None
    if log_format != "json":
        if runner_options.get("logger") or runner_options.get("syslog") or (
            runner_options.get("logfile") == "-" and not runner_options.get("nodaemon")
        ):
            return None
        return lambda: text_file_observer(twistd_log_file(runner_options))
    if runner_options.get("logger"):
        raise usage.UsageError("--log-format json cannot be combined with twistd's --logger")
    if runner_options.get("syslog"):
        raise usage.UsageError("--log-format json cannot be combined with twistd's --syslog")
    if runner_options.get("logfile") == "-" and not runner_options.get("nodaemon"):
        raise usage.UsageError("a daemon cannot log to standard output (--logfile -)")
    return lambda: twistd_observer(runner_options)


def twistd_observer(runner_options: usage.Options) -> ILogObserver:
    """
    The JSON observer for twistd: on L{twistd_log_file}.
    """
    return json_file_observer(twistd_log_file(runner_options))


__all__ = [
    "LOG_FORMATS",
    "configure",
    "json_file_observer",
    "json_line",
    "text_file_observer",
    "text_line",
    "twistd_log_file",
    "twistd_observer",
]
