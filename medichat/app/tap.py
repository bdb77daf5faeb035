"""
C{twistd medichat}: options and the service tree.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import IService, MultiService, Service
from twisted.cred import strcred
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from medichat import __version__
from medichat._connections import CappedFactory, ConnectionCap, default_max_connections
from medichat._gcpauses import install_from_environment as install_gc_pauses
from medichat._readiness import Readiness
from medichat._timers import TimerWheel
from medichat.app import logs
from medichat.app._about import version_text
from medichat.app._datalock import DataDirectoryLock, LockedError
from medichat.app.metrics import LiveCollector, Metrics, MetricsResource
from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.devsecret import dev_secret_path, load_or_create_dev_secret
from medichat.auth.realm import build_portal
from medichat.carriers._fastpath import FastPaths
from medichat.carriers.tcp import StompTCPFactory
from medichat.carriers.websocket import StompWebSocketFactory
from medichat.domain.access import DEFAULT_AUDIT_RETENTION, AccessLogPruner, parse_retention
from medichat.domain.accounts import Accounts
from medichat.domain.cluster_presence import DEFAULT_NODE_TTL, ClusterPresence, NodeService
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.domain.webhooks import (
    DEFAULT_COALESCE,
    InvalidSecret,
    WebhookDispatcher,
    parse_secret,
)
from medichat.domain.webhooks import DEFAULT_TIMEOUT as DEFAULT_WEBHOOK_TIMEOUT
from medichat.errors import StoreError
from medichat.http._channel import HTTPConnections
from medichat.http.accesslog import AccessLog
from medichat.http.forwarded import parse_trusted_proxy
from medichat.http.observe import observe_requests
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root, make_site, normalise_base_path
from medichat.http.webhook_client import TreqSender, make_http_client
from medichat.interfaces import (
    IBearerToken,
    IBroadcast,
    IHub,
    IPresence,
    ISessionCookie,
    IStoreBound,
)
from medichat.model import new_id
from medichat.pubsub.cluster import ClusterHub
from medichat.pubsub.feed import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETENTION,
    EventFeed,
    EventPruner,
)
from medichat.pubsub.heartbeat import HeartbeatTopicService
from medichat.pubsub.hub import InProcessHub
from medichat.stomp.codec import Limits
from medichat.stomp.linger import Lingering
from medichat.stomp.registry import RevocationObserver, SessionRegistry
from medichat.stomp.session import StompConfig, StompServices
from medichat.store import SQLiteStore, open_store
from medichat.store.broadcast import DEFAULT_KEEPALIVE, PostgreSQLBroadcast
from medichat.store.postgres import redact
from medichat.store.scripts import DEFAULT_GROUP_TARGET, DEFAULT_GROUP_WINDOW, SQLStore
from medichat.store.sqlite import SQLITE_FILE_NAME

_log = Logger()

YOUNG_GC_THRESHOLD = 5000
"""The collector's generation-0 threshold once the server serves (Python's default: 700)."""



def _choice(name: str, choices: Sequence[str]) -> Any:
    def check(value: str) -> str:
        if value.lower() not in choices:
            raise usage.UsageError(f"--{name} must be one of {', '.join(choices)}, not {value!r}")
        return value.lower()

    return check


def _audit_retention(value: str) -> float:
    try:
        return parse_retention(value)
    except ValueError as e:
        raise usage.UsageError(f"--audit-retention: {e}") from None


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a whole number, not {value!r}") from None
    if number <= 0:
        raise usage.UsageError(f"--{name} must be positive, not {value!r}")
    return number


def _non_negative_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number, not {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise usage.UsageError(f"--{name} must be zero or more, not {value!r}")
    return number


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number, not {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise usage.UsageError(f"--{name} must be positive, not {value!r}")
    return number


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    Command-line options of C{twistd medichat}.
    """

    supportedInterfaces = (IBearerToken, ISessionCookie)

    optParameters: list[Any] = [
        ["base-path", None, "/api", "Path prefix of every HTTP path and of the WebSocket."],
        ["data-dir", None, "./medichat-data", "Directory of the embedded store and dev secret."],
        ["database", None, None, "postgresql://user@host:port/db to use PostgreSQL."],
        ["heartbeat-topic-interval", None, 10.0, "Seconds between /v1/topic/heartbeat messages.",
         lambda v: _positive_float("heartbeat-topic-interval", v)],
        ["stomp-heartbeat", None, "10000,10000",
         "The server's STOMP heart-beat, 'cx,cy' in milliseconds (0 disables)."],
        ["heartbeat-grace", None, 3.0,
         "A client is dropped after this many negotiated heart-beat intervals of silence.",
         lambda v: _positive_float("heartbeat-grace", v)],
        ["connect-timeout", None, 10.0, "Seconds a connection may take to send CONNECT.",
         lambda v: _positive_float("connect-timeout", v)],
        ["max-frame-size", None, 65536, "Largest STOMP frame, in bytes.",
         lambda v: _positive_int("max-frame-size", v)],
        ["max-headers", None, 32, "Most headers in one STOMP frame.",
         lambda v: _positive_int("max-headers", v)],
        ["max-header-line", None, 8192, "Longest STOMP header line, in bytes.",
         lambda v: _positive_int("max-header-line", v)],
        ["max-subscriptions", None, 1000, "Most subscriptions of one STOMP session.",
         lambda v: _positive_int("max-subscriptions", v)],
        ["send-rate", None, 20.0,
         "STOMP SEND frames per second a user may average, across their sessions "
         "(bursts of twice that, at least 10).",
         lambda v: _positive_float("send-rate", v)],
        ["ack-rate", None, 100.0,
         "STOMP ACK/NACK frames per second a user may average, across their sessions "
         "(bursts of twice that).",
         lambda v: _positive_float("ack-rate", v)],
        ["subscribe-rate", None, 10.0,
         "STOMP SUBSCRIBE/UNSUBSCRIBE frames per second a user may average, across their "
         "sessions.",
         lambda v: _positive_float("subscribe-rate", v)],
        ["subscribe-burst", None, 200,
         "STOMP SUBSCRIBE/UNSUBSCRIBE frames a user may send in one burst.",
         lambda v: _positive_int("subscribe-burst", v)],
        ["max-sessions-per-user", None, 20, "Live STOMP sessions one user may hold.",
         lambda v: _positive_int("max-sessions-per-user", v)],
        ["max-transaction-bytes", None, 256 * 1024,
         "Bytes the open STOMP transactions of one session may hold.",
         lambda v: _positive_int("max-transaction-bytes", v)],
        ["max-pending-frames", None, 100,
         "STOMP frames that may queue behind one waiting for the store.",
         lambda v: _positive_int("max-pending-frames", v)],
        ["message-rate", None, 20,
         "Message POSTs a user may make per 10 seconds (at once, or spread out).",
         lambda v: _positive_int("message-rate", v)],
        ["conversation-rate", None, 10,
         "Conversations a user may open per 60 seconds (at once, or spread out).",
         lambda v: _positive_int("conversation-rate", v)],
        ["max-write-buffer", None, 1024 * 1024,
         "Bytes a slow client may have waiting before it is dropped.",
         lambda v: _positive_int("max-write-buffer", v)],
        ["ws-ping-interval", None, 30.0,
         "Seconds between WebSocket pings to a STOMP session without client heart-beats "
         "(dropped when one goes unanswered that long), and the TCP keepalive idle time "
         "of --stomp-listen connections; 0 turns the pings off.",
         lambda v: _non_negative_float("ws-ping-interval", v)],
        ["ws-ping-rate", None, 1.0,
         "WebSocket pings a client may send per second, after a burst of 10.",
         lambda v: _positive_float("ws-ping-rate", v)],
        ["max-message-length", None, 4000, "Longest chat message, in characters.",
         lambda v: _positive_int("max-message-length", v)],
        ["max-body", None, 65536, "Largest HTTP request body, in bytes.",
         lambda v: _positive_int("max-body", v)],
        ["session-ttl", None, 43200, "Seconds an employee login session lives without use.",
         lambda v: _positive_int("session-ttl", v)],
        ["event-retention", None, DEFAULT_RETENTION,
         "Seconds a durable conversation event is kept for x-stream-offset replay "
         "(messages themselves are never deleted).",
         lambda v: _positive_int("event-retention", v)],
        ["audit-retention", None, None,
         "How long access-log rows (NEN 7513) are kept before they are deleted: seconds, or "
         "a number with s, m, h, d or y (years of 365.25 days); at least 2y "
         "[default: 5y].",
         _audit_retention],
        ["group-window", None, DEFAULT_GROUP_WINDOW * 1000,
         "Milliseconds from the start of one group commit of chat messages within which "
         f"the next waits for more, unless {DEFAULT_GROUP_TARGET} are queued (0: never): "
         "less CPU per message at moderate loads, less capacity near saturation.",
         lambda v: _non_negative_float("group-window", v)],
        ["event-poll-interval", None, DEFAULT_POLL_INTERVAL,
         "Seconds between the event feed's fallback reads of the events table.",
         lambda v: _positive_float("event-poll-interval", v)],
        ["session-recheck-interval", None, 30.0,
         "Seconds between re-checks of a cookie-authenticated STOMP session's login.",
         lambda v: _positive_float("session-recheck-interval", v)],
        ["request-head-timeout", None, 10.0,
         "Seconds an HTTP request line and headers may take to arrive (408 past it).",
         lambda v: _positive_float("request-head-timeout", v)],
        ["error-close-delay", None, 1.0,
         "Seconds a STOMP connection ended by an ERROR stays open, read no further, "
         "before it is closed (0: at once).",
         lambda v: _non_negative_float("error-close-delay", v)],
        ["rate-limit-hold", None, 1.0,
         "Seconds a kept-alive HTTP connection reads nothing after a 429 (0: not held).",
         lambda v: _non_negative_float("rate-limit-hold", v)],
        ["max-connections", None, None,
         "Most connections open at once (HTTP, WebSocket and STOMP/TCP together); "
         "default 100 below the open-file limit, at most 20000.",
         lambda v: _positive_int("max-connections", v)],
        ["listen-keepalive", None, DEFAULT_KEEPALIVE,
         "With PostgreSQL: seconds of silence on the LISTEN connection before TCP keepalive "
         "probes start, and between two SELECT 1 probes of it.",
         lambda v: _positive_float("listen-keepalive", v)],
        ["shutdown-timeout", None, 25.0,
         "Seconds a stop (SIGTERM) may take: it waits this long at most for HTTP requests "
         "in flight.",
         lambda v: _positive_float("shutdown-timeout", v)],
        ["close-spread", None, 2.0,
         "Seconds over which a stop closes the STOMP sessions (WebSocket code 1001), in "
         "slices, so that clients do not all reconnect at once (0: all at once).",
         lambda v: _non_negative_float("close-spread", v)],
        ["webhook-url", None, None,
         "An http(s) URL to POST Standard Webhooks to when a message is committed for a "
         "user with no live subscription to its conversation (needs --webhook-secret-file)."],
        ["webhook-secret-file", None, None,
         "A file holding the webhook signing secret, whsec_ and the base64 of 24 to 64 bytes."],
        ["webhook-timeout", None, DEFAULT_WEBHOOK_TIMEOUT,
         "Seconds the webhook receiver may take to answer.",
         lambda v: _positive_float("webhook-timeout", v)],
        ["webhook-coalesce", None, DEFAULT_COALESCE,
         "Seconds during which further messages for a recipient in a conversation join "
         "a webhook not sent yet (0: one webhook per message, sent at once).",
         lambda v: _non_negative_float("webhook-coalesce", v)],
        ["node-ttl", None, DEFAULT_NODE_TTL,
         "With --database: seconds after which a process that stopped sending heartbeats "
         "(killed) is taken for dead and its presence removed by the others.",
         lambda v: _positive_float("node-ttl", v)],
        ["log-format", None, None,
         "text or json (one JSON object per line) for the log; default text under twistd, "
         "and twist's own --log-format under twist.",
         _choice("log-format", logs.LOG_FORMATS)],
        ["access-log", None, "on", "on or off: log each HTTP request (one line each).",
         _choice("access-log", ("on", "off"))],
    ]
    optFlags = [
        ["secure-cookies", None, "Always mark the session cookie Secure."],
        ["no-fast-paths", None,
         "Use only the public Twisted and Autobahn API on the STOMP carriers and for HTTP "
         "answers (slower)."],
        ["allow-reassign", None,
         "Let an employee claim a conversation that another employee has (logged)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["stomp-listen"] = []
        self["allowed-origin"] = []
        self["trusted-proxy"] = []
        self["metrics-listen"] = []
        self.auth_types: list[str] = []
        self.log_observer: Any = None

    def opt_version(self) -> None:
        """
        Print medichat's version (and Twisted's and Python's) and exit.
        """
        print(version_text())
        sys.exit(0)

    def opt_auth(self, description: str) -> None:
        """
        A credential checker, in the twisted.cred.strcred style (repeatable): jwt:... or
        session[:ttl=SECONDS]; --help-auth lists them.
        """
        super().opt_auth(description)
        self.auth_types.append(description.split(":", 1)[0])

    def opt_listen(self, description: str) -> None:
        """
        An endpoint for HTTP and WebSocket (repeatable; default tcp:8080), e.g. tcp:8080 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem.
        """
        self["listen"].append(_endpoint("listen", description))

    def opt_stomp_listen(self, description: str) -> None:
        """
        An endpoint for plain STOMP over TCP (repeatable), e.g. tcp:61613.
        """
        self["stomp-listen"].append(_endpoint("stomp-listen", description))

    def opt_metrics_listen(self, description: str) -> None:
        """
        An endpoint serving GET /metrics for Prometheus, and nothing else (repeatable;
        default none), e.g. tcp:9464:interface=127.0.0.1.
        """
        self["metrics-listen"].append(_endpoint("metrics-listen", description))

    def opt_allowed_origin(self, origin: str) -> None:
        """
        An origin (scheme://host[:port], or *) allowed to open WebSockets and make
        cookie-authenticated changes (repeatable).
        """
        origin = origin.strip()
        if origin != "*" and "://" not in origin:
            raise usage.UsageError(f"--allowed-origin needs scheme://host[:port], not {origin!r}")
        self["allowed-origin"].append(origin.rstrip("/"))

    def opt_trusted_proxy(self, address: str) -> None:
        """
        An IP or CIDR of a reverse proxy whose X-Forwarded-For / Forwarded headers name
        the client's address, for login rate limits and the access log (repeatable).
        """
        try:
            self["trusted-proxy"].append(parse_trusted_proxy(address))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy needs an IP or a CIDR: {e}") from None

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["audit-retention"] is None:
            self["audit-retention"] = DEFAULT_AUDIT_RETENTION
        if self["max-connections"] is None:
            self["max-connections"] = default_max_connections()
        try:
            self["base-path"] = normalise_base_path(self["base-path"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        hb = self["stomp-heartbeat"]
        try:
            cx, cy = (int(p) for p in hb.split(","))
            if cx < 0 or cy < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError(f"--stomp-heartbeat must be 'cx,cy' in ms, not {hb!r}") from None
        self["stomp-heartbeat"] = (cx, cy)
        if self["close-spread"] >= self["shutdown-timeout"]:
            raise usage.UsageError(
                "--close-spread must be shorter than --shutdown-timeout "
                f"({self['close-spread']:g} >= {self['shutdown-timeout']:g})"
            )
        database = self["database"]
        if database is not None and not database.startswith(("postgresql://", "postgres://")):
            raise usage.UsageError("--database must be a postgresql:// URL")
        self["webhook-key"] = _webhook_key(self["webhook-url"], self["webhook-secret-file"])
        # The runner (twistd or twist) is the parent; it starts logging after this.
        self.log_observer = logs.configure(self["log-format"], getattr(self, "parent", None))


def _webhook_key(url: str | None, secret_file: str | None) -> bytes | None:
    """
    Check the webhook options; the signing key from the secret file, or L{None} when
    webhooks are off.
    """
    if url is None and secret_file is None:
        return None
    if url is None or secret_file is None:
        raise usage.UsageError("--webhook-url and --webhook-secret-file go together")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise usage.UsageError(f"--webhook-url must be an http:// or https:// URL, not {url!r}")
    try:
        with open(secret_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(
            f"--webhook-secret-file: cannot read {secret_file}: {getattr(e, 'strerror', None) or e}"
        ) from None
    try:
        return parse_secret(text)
    except InvalidSecret as e:
        raise usage.UsageError(f"--webhook-secret-file {secret_file}: {e}") from None


def _endpoint(option: str, description: str) -> str:
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--{option}: not an endpoint {description!r}: {e}") from None
    except OSError as e:
        # ssl: reads its key and certificate files here.
        raise usage.UsageError(
            f"--{option}: cannot read a file of {description!r}: {e.strerror or e}"
            + (f": {e.filename}" if e.filename else "")
        ) from None
    except Exception as e:
        # A key or certificate that OpenSSL cannot load, for instance.
        raise usage.UsageError(
            f"--{option}: cannot use {description!r}: {_one_line(e)}"
        ) from None
    return description


def _one_line(error: BaseException) -> str:
    """
    An exception as one line: its message, or its type when it has none.
    """
    text = " ".join(str(error).split())
    return text or type(error).__name__


class CannotStart(Exception):
    """
    The server cannot start: a port is taken, the database cannot be reached or opened.
    Its message is the one line an operator needs.
    """


def _exit_process(status: int) -> None:
    """
    End the process at once with C{status}, after flushing what was logged to standard
    output and error.  Twisted's runners have no exit status of their own: a reactor that
    stopped means success to them.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status)


def _report_cannot_start(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """
    C{sys.excepthook} for a L{CannotStart} that leaves C{twistd}: no traceback, since the
    reason was logged in one line already (and a daemon's parent shows it too, from
    twistd's status pipe); the process still exits with status 1.
    """
    if not issubclass(kind, CannotStart):
        sys.__excepthook__(kind, value, tb)


class _Listener(Service):
    """
    Listens on one endpoint: binds at start (so that a taken port is known before the
    server reports that it started), but accepts connections only once the store is ready.
    """

    def __init__(self, reactor: Any, description: str, factory: Any, what: str) -> None:
        self._reactor = reactor
        self._description = description
        self._factory = factory
        self._what = what
        self._port: IListeningPort | None = None
        self._binding: Deferred[IListeningPort] | None = None

    def bind(self) -> None:
        """
        Start listening without accepting yet.

        @raise CannotStart: if the endpoint failed at once (a port taken, say); endpoints
            that answer later are waited for by L{listen}.
        """
        endpoint = serverFromString(self._reactor, self._description)
        binding: Deferred[IListeningPort] = endpoint.listen(self._factory)
        outcome: list[object] = []

        def keep(result: Any) -> Any:
            outcome.append(result)
            return result

        binding.addBoth(keep)
        if not outcome:
            self._binding = binding
            return
        (result,) = outcome
        if isinstance(result, Failure):
            binding.addErrback(lambda _: None)  # reported here instead
            raise CannotStart(self._cannot_listen(result))
        self._port = result  # type: ignore[assignment]
        # Connections wait in the kernel's backlog until listen() (tcp and ssl ports).
        stop = getattr(self._port, "stopReading", None)
        if stop is not None:
            stop()

    def listen(self) -> Deferred[IListeningPort]:
        """
        Accept connections (binding first if L{bind} was not called), and log the address.
        """
        if self._port is not None:
            d: Deferred[IListeningPort] = succeed(self._port)
        elif self._binding is not None:
            d, self._binding = self._binding, None
        else:
            endpoint = serverFromString(self._reactor, self._description)
            d = endpoint.listen(self._factory)

        def failed(failure: Failure) -> IListeningPort:
            raise CannotStart(self._cannot_listen(failure))

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            start = getattr(port, "startReading", None)
            if start is not None:
                start()
            address = port.getHost()
            _log.info(
                "medichat {what} listening on {host}:{port} ({endpoint})",
                what=self._what,
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
                endpoint=self._description,
            )
            return port

        return d.addCallbacks(listening, failed)

    def _cannot_listen(self, failure: Failure) -> str:
        error = failure.value
        reason: BaseException = getattr(error, "socketError", None) or error or Exception()
        return f"cannot listen on {self._description}: {_one_line(reason)}"

    @property
    def port(self) -> IListeningPort | None:
        """The listening port, once listening."""
        return self._port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


class MedichatService(MultiService):
    """
    The whole server: takes the SQLite data directory's lock (if given one), checks that
    the database can be opened and binds its ports, then starts the store (migrating it),
    registers its cluster node (with PostgreSQL) and accepts connections.

    On stop it I{drains}: C{/readyz} answers 503 at once, it stops listening, closes the
    STOMP sessions with "going away" (WebSocket 1001) spread over C{close_spread} seconds
    while it finishes the HTTP requests in flight (for at most C{shutdown_timeout}
    seconds), removes its node's presence (the other processes' subscribers see its users
    leave at once), and closes the store.

    A server that cannot start logs one line (C{medichat cannot start: <reason>}).  With
    C{exit_on_failure}, as under C{twistd} and C{twist}, it then exits with status 1:
    before the reactor runs (C{twistd}, which starts services first) by raising
    L{CannotStart} out of C{startService}, which a daemonising C{twistd} reports from its
    status pipe; once it runs (C{twist}, or a failure found later), by stopping the reactor
    and ending the process with status 1 after shutdown.

    @ivar listeners: the HTTP/WebSocket and STOMP/TCP listeners.
    @ivar metrics_listeners: the C{--metrics-listen} listeners, bound and opened with the
        others.
    @ivar _after_store: what starts once the store is running and before the listeners
        (each with C{start()}, which may return a L{Deferred}, and C{stop()}), and stops
        before the store: the event feed and the event pruner.
    @ivar ready: fires once serving, or fails with L{CannotStart}.
    @ivar _lingering: the STOMP connections held after an C{ERROR}, closed at once when
        stopping (L{medichat.stomp.linger}); L{None} for none.
    @ivar _log_observer: makes the log observer of twistd's application (JSON or text,
        L{medichat.app.logs.configure}), or L{None} to leave twistd's own.

    With C{freeze_gc} (the service owns its process, as under C{twistd}), what exists once
    it serves is moved out of the garbage collector's reach (C{gc.freeze}).
    @ivar hub: the hub of the STOMP sessions.
    @ivar broadcast: with PostgreSQL, what carries events between this process and the
        others on the database (started after the store, stopped before it); its
        C{connected} says whether this process hears the others now, which a readiness
        check must require.  L{None} with SQLite (one process).
    """

    def __init__(self, reactor: Any, store: Any, registry: SessionRegistry,
                 wheel: TimerWheel, threadpool: ThreadPool,
                 websockets: StompWebSocketFactory, *,
                 http: HTTPConnections | None = None,
                 hub: IHub | None = None,
                 broadcast: IBroadcast | None = None,
                 shutdown_timeout: float = 25.0,
                 exit_on_failure: bool = False,
                 freeze_gc: bool = False,
                 readiness: Readiness | None = None,
                 close_spread: float = 0.0,
                 node: NodeService | None = None,
                 lock: DataDirectoryLock | None = None,
                 lingering: Lingering | None = None,
                 after_store: Sequence[Any] = (),
                 log_observer: Any = None) -> None:
        super().__init__()
        self._after_store = tuple(after_store)
        self._log_observer = log_observer
        self.readiness = readiness if readiness is not None else Readiness()
        self._close_spread = close_spread
        self._node = node
        self._lock = lock
        self._http = http
        self._shutdown_timeout = shutdown_timeout
        self._exit_on_failure = exit_on_failure
        self._freeze_gc = freeze_gc
        self._reactor = reactor
        self.store = store
        self.registry = registry
        self.hub = hub
        self.broadcast = broadcast
        self._wheel = wheel
        self._threadpool = threadpool
        self._websockets = websockets
        self._lingering = lingering
        self.listeners: list[_Listener] = []
        self.metrics_listeners: list[_Listener] = []
        self.ready: Deferred[None] = Deferred()
        self._stopping: Deferred[None] | None = None
        self._stop_waiters: list[Deferred[None]] | None = []

    def setServiceParent(self, parent: Any) -> None:
        """
        Join C{parent}; when that is twistd's application and C{log_observer} was given,
        make the application log through it (see L{medichat.app.logs}).
        """
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer())
        super().setServiceParent(parent)

    def add_listener(self, listener: _Listener) -> None:
        """Listen on this endpoint once the store is ready."""
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def add_metrics_listener(self, listener: _Listener) -> None:
        """Serve the metrics on this endpoint, from when the others listen."""
        self.metrics_listeners.append(listener)
        listener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        try:
            # Blocking, but before anything is served; twistd reports a start only after
            # this returns, so a daemon's parent exits non-zero for what is found here.
            if self._lock is not None:
                try:
                    self._lock.acquire()
                except LockedError as e:
                    raise CannotStart(str(e)) from None
                except OSError as e:
                    raise CannotStart(
                        f"cannot lock {self._lock.path}: {e.strerror or e}"
                    ) from None
            self.store.preflight()
            for listener in (*self.listeners, *self.metrics_listeners):
                listener.bind()
        except (CannotStart, StoreError) as e:
            self._cannot_start(str(e))
            return
        self._threadpool.start()
        self._start()

    @inlineCallbacks
    def _start(self) -> Any:
        try:
            yield self.store.start()
            if self.broadcast is not None:
                # Returns once the first LISTEN worked or failed; it keeps trying.
                yield self.broadcast.start()
            if self._node is not None:
                self._node.startService()
                try:
                    yield self._node.register()
                except StoreError as e:
                    raise CannotStart(f"cannot register this cluster node: {e}") from None
            for part in self._after_store:
                yield part.start()
            for listener in (*self.listeners, *self.metrics_listeners):
                yield listener.listen()
        except (CannotStart, StoreError) as e:
            self._cannot_start(str(e))
            return
        except Exception:
            _log.failure("medichat could not start")
            self._cannot_start("an unexpected error (logged above)")
            return
        _log.info("medichat {version} ready", version=__version__)
        if self._freeze_gc:
            # Everything made so far (modules, the service tree) lives as long as the
            # process: keep it out of the collector's full passes, which otherwise walk it
            # each time; under a flood of requests they took 31-43 ms (benchmarks/abuse.py).
            gc.freeze()
            # Young collections every 5,000 net allocations rather than 700: each object
            # that happens to be alive then (requests in flight) is promoted, and those
            # promotions are what bring on the full passes (about 8 ms of CPU with 400
            # WebSocket sessions); a young pass then costs 1.5-2 ms (benchmarks/msgpath.py).
            gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
        self.ready.callback(None)

    def stopService(self) -> Deferred[None]:
        """
        Stop (see the class); a later call fires when the first one has finished.
        """
        if self._stopping is None:
            self._stopping = self._stop()
            self._stopping.addBoth(self._stopped)
            return self._stopping
        later: Deferred[None] = Deferred()
        if self._stop_waiters is None:
            later.callback(None)
        else:
            self._stop_waiters.append(later)
        return later

    def _stopped(self, result: object) -> object:
        waiters, self._stop_waiters = self._stop_waiters or [], None
        for waiter in waiters:
            waiter.callback(None)
        return result

    def _cannot_start(self, reason: str) -> None:
        """
        Log why the server cannot start, in one line; then exit with status 1, or, when
        not asked to, fail L{ready}.
        """
        _log.critical("medichat cannot start: {reason}", reason=reason)
        if self._lock is not None:
            self._lock.release()
        if not self._exit_on_failure:
            self.ready.errback(CannotStart(reason))
            return
        if IReactorCore.providedBy(self._reactor) and self._reactor.running:
            self._reactor.addSystemEventTrigger("after", "shutdown", _exit_process, 1)
            self._reactor.stop()
            return
        sys.excepthook = _report_cannot_start
        raise CannotStart(reason)

    @inlineCallbacks
    def _stop(self) -> Any:
        self.readiness.draining = True
        _log.info("medichat draining: not ready, no longer accepting")
        # Listeners first: nothing new arrives while the rest winds down.
        yield MultiService.stopService(self)
        if self._lingering is not None:
            # Connections held after an ERROR (medichat.stomp.linger) need not wait.
            self._lingering.close_all()
        waits = [self._close_sessions().addCallback(lambda _: self._websockets.drain())]
        if self._http is not None:
            # Answer what is in flight before the store goes.
            waits.append(self._http.drain(self._shutdown_timeout))
        yield gatherResults(waits)
        if self._node is not None:
            # The sessions' own departures went out as each closed; this removes what
            # is left at once rather than after the node TTL.
            yield self._node.stopService()
        self._wheel.stop()
        for part in reversed(self._after_store):
            # The webhook dispatcher's stop returns a Deferred (its connections closed).
            yield part.stop()
        if self.broadcast is not None:
            # After the sessions' last events, which it sends before it stops.
            yield self.broadcast.stop()
        yield self.store.stop()
        self._threadpool.stop()
        if self._lock is not None:
            self._lock.release()

    def _close_sessions(self) -> Deferred[None]:
        """
        End every STOMP session with "going away", in slices spread evenly over
        C{close_spread} seconds, so that their clients do not all reconnect at once.

        @return: fires once the last slice was closed.
        """
        sessions = self.registry.sessions()
        if sessions:
            _log.info(
                "closing {count} STOMP sessions over {spread} s",
                count=len(sessions),
                spread=self._close_spread,
            )
        slices = max(1, min(len(sessions), int(self._close_spread / _CLOSE_SLICE)))
        size = -(-len(sessions) // slices) if sessions else 0
        done: Deferred[None] = Deferred()

        def close(index: int) -> None:
            for session in sessions[index * size:(index + 1) * size]:
                session.shutdown()
            if index + 1 < slices:
                self._reactor.callLater(self._close_spread / slices, close, index + 1)
            else:
                done.callback(None)

        close(0)
        return done


_CLOSE_SLICE = 0.1
"""Seconds between two slices of sessions closed at shutdown (at most)."""


def _dev_checkers(data_dir: str, session_ttl: int) -> list[Any]:
    secret = load_or_create_dev_secret(data_dir)
    _log.warn(
        "no --auth given: development defaults (bearer JWTs signed with the secret in "
        "{path}, and employee session cookies). Do not use these in production.",
        path=dev_secret_path(data_dir),
    )
    return [JWTChecker(secret=secret), SessionCookieChecker(session_ttl)]


def describe_store(database: str | None, data_dir: str) -> str:
    """
    The store, for the log: the SQLite file, or PostgreSQL's URL without its password.
    """
    if database is None:
        return f"SQLite {os.path.join(data_dir, SQLITE_FILE_NAME)}"
    return f"PostgreSQL {redact(database)}"


def listener_descriptions(config: Options) -> list[str]:
    """
    Each listener, as C{what endpoint}, for the log.
    """
    return [
        *(f"HTTP/WebSocket {d}" for d in config["listen"]),
        *(f"STOMP/TCP {d}" for d in config["stomp-listen"]),
        *(f"metrics {d}" for d in config["metrics-listen"]),
    ]


def _log_start(config: Options, data_dir: str) -> None:
    """
    The first line medichat logs: what runs, on what, and how.
    """
    auth = list(getattr(config, "auth_types", ()))
    development = not config.get("credCheckers")
    listeners = listener_descriptions(config)
    _log.info(
        "{version} starting: store {store}; auth {auth}; listening {listeners}; "
        "development defaults {development}",
        version=version_text(),
        medichat_version=__version__,
        store=describe_store(config["database"], data_dir),
        auth=", ".join(auth) if not development else "jwt (development secret), session",
        listeners=", ".join(listeners),
        development="ON" if development else "off",
        development_defaults=development,
    )


def makeService(
    config: Options, reactor: Any = None, *, exit_on_failure: bool | None = None
) -> IService:
    """
    Assemble the service tree from parsed options.

    @param reactor: the reactor; the global one when L{None}, as under C{twistd}.
    @param exit_on_failure: end the process with status 1 if the server cannot start;
        by default only when C{reactor} is L{None} (C{twistd} and C{twist} call this
        without one; tests pass theirs).
    """
    if exit_on_failure is None:
        exit_on_failure = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if exit_on_failure:
        # The benchmarks' view of garbage-collection pauses; nothing unless asked for.
        install_gc_pauses()
    clock: IReactorTime = reactor
    data_dir = os.path.abspath(config["data-dir"])
    _log_start(config, data_dir)
    store = open_store(config["database"], data_dir, reactor)
    if isinstance(store, SQLStore):
        store.group_window = config["group-window"] / 1000

    checkers: Sequence[Any] = config.get("credCheckers") or _dev_checkers(
        data_dir, config["session-ttl"]
    )
    for checker in checkers:
        if IStoreBound.providedBy(checker):
            checker.attach(store, clock)
    portal = build_portal(checkers)
    # Logins make sessions that the cookie checker accepts: one ttl for both, and no
    # logins at all when no cookie checker is configured.
    cookie_checkers = [c for c in checkers if isinstance(c, SessionCookieChecker)]
    session_ttl = cookie_checkers[0].ttl if cookie_checkers else config["session-ttl"]

    hub: IHub
    broadcast: PostgreSQLBroadcast | None = None
    readiness = Readiness()
    presence: IPresence
    node: NodeService | None = None
    lock: DataDirectoryLock | None = None
    if config["database"] is None:
        # SQLite serves one process, which keeps presence in memory and the data
        # directory locked.
        hub = local_hub = InProcessHub()
        presence = InProcessPresence(hub)
        lock = DataDirectoryLock(data_dir)
    else:
        # One process of several on the database: ephemeral events cross to the others
        # through LISTEN/NOTIFY, and presence lives in the database, per node.
        node_id = new_id()
        broadcast = PostgreSQLBroadcast(
            config["database"], reactor, node_id=node_id, keepalive=config["listen-keepalive"]
        )
        local_hub = InProcessHub(node_id)
        hub = ClusterHub(local_hub, broadcast, clock)
        cluster = ClusterPresence(store, hub, node_id=node_id)
        node = NodeService(store, cluster, clock, ttl=config["node-ttl"])
        presence = cluster
        readiness.add_check("listen", broadcast.ready)
    wheel = TimerWheel(clock)
    registry = SessionRegistry()
    threadpool = ThreadPool(minthreads=1, maxthreads=4, name="medichat-kdf")

    def run_blocking(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, threadpool, fn, *args, **kwargs)

    accounts = Accounts(store, clock, session_ttl=session_ttl, run_blocking=run_blocking)
    accounts.add_revocation_observer(RevocationObserver(registry))
    feed = EventFeed(
        store, hub, clock, poll_interval=config["event-poll-interval"],
        # With PostgreSQL, a commit here wakes the other processes' feeds, and a wake from
        # them (or a LISTEN connection opened again) makes this one read.
        tell_others=hub.wake if isinstance(hub, ClusterHub) else None,
        # What this process commits is published as it commits, not read back.
        hand_off=True,
    )
    if isinstance(hub, ClusterHub):
        hub.set_catch_up(feed.catch_up)
    pruner = EventPruner(store, clock, config["event-retention"])
    access_pruner = AccessLogPruner(store, clock, config["audit-retention"])
    webhook_key = config.get("webhook-key")
    conversations = ConversationService(
        store, hub, clock, presence, feed, max_message_length=config["max-message-length"],
        presence_in_store=node is not None,
        allow_reassign=bool(config["allow-reassign"]),
        webhook_coalesce=config["webhook-coalesce"] if webhook_key else None,
    )
    webhooks: tuple[WebhookDispatcher, ...] = ()
    if webhook_key:
        client, pool = make_http_client(reactor)
        sender = TreqSender(
            client, config["webhook-url"], clock, config["webhook-timeout"], pool=pool
        )
        webhooks = (WebhookDispatcher(
            store, sender, clock, webhook_key, owner=new_id(), timeout=config["webhook-timeout"]
        ),)
    limits = Limits(
        max_frame_bytes=config["max-frame-size"],
        max_headers=config["max-headers"],
        max_header_line=config["max-header-line"],
    )
    stomp_config = StompConfig(
        limits=limits,
        preauth_limits=Limits(
            max_frame_bytes=min(16384, limits.max_frame_bytes),
            max_headers=limits.max_headers,
            max_header_line=limits.max_header_line,
        ),
        heartbeat=config["stomp-heartbeat"],
        grace=config["heartbeat-grace"],
        connect_timeout=config["connect-timeout"],
        max_subscriptions=config["max-subscriptions"],
        send_rate=config["send-rate"],
        send_burst=max(2 * config["send-rate"], 10.0),
        ack_rate=config["ack-rate"],
        ack_burst=2 * config["ack-rate"],
        subscribe_rate=config["subscribe-rate"],
        subscribe_burst=config["subscribe-burst"],
        max_sessions_per_user=config["max-sessions-per-user"],
        max_transaction_bytes=config["max-transaction-bytes"],
        max_pending_frames=config["max-pending-frames"],
        revalidate_interval=config["session-recheck-interval"],
        error_close_delay=config["error-close-delay"],
    )
    services = StompServices(
        hub=hub,
        presence=presence,
        portal=portal,
        clock=clock,
        conversations=conversations,
        registry=registry,
        wheel=wheel,
        config=stomp_config,
    )
    origins = OriginPolicy(config["allowed-origin"])
    ws_factory = StompWebSocketFactory(
        services, origins, max_buffer=config["max-write-buffer"],
        max_message=max(4 * limits.max_frame_bytes, 256 * 1024),
        reactor=reactor, fast_paths=not config["no-fast-paths"],
        ping_interval=config["ws-ping-interval"], ping_rate=config["ws-ping-rate"],
        trusted_proxies=tuple(config["trusted-proxy"]),
    )
    rest = RestAPI(
        conversations=conversations,
        portal=portal,
        accounts=accounts if cookie_checkers else None,
        origins=origins,
        store=store,
        clock=clock,
        max_body=config["max-body"],
        secure_cookies=config["secure-cookies"],
        cookie_path=config["base-path"] or "/",
        message_rate=config["message-rate"],
        conversation_rate=config["conversation-rate"],
        trusted_proxies=tuple(config["trusted-proxy"]),
        readiness=readiness,
    )
    api = rest.resource()
    root = build_root(config["base-path"], api, WebSocketResource(ws_factory), origins)
    access_log = AccessLog(
        enabled=config["access-log"] == "on", trusted_proxies=config["trusted-proxy"]
    )
    fast_paths = FastPaths.probe(not config["no-fast-paths"])
    # Answers sent at once (medichat.http._channel): measured to save the SQLite server
    # CPU per message, and to cost the PostgreSQL one capacity at the edge of saturation
    # (docs/benchmarks.md, eighth and eleventh sessions on issue 10).
    eager_writer = fast_paths.writer_for if store.kind == "sqlite" else None
    site = make_site(root, config["max-body"], clock=clock,
                     head_timeout=config["request-head-timeout"], access_log=access_log,
                     rate_limit_hold=config["rate-limit-hold"], eager_writer=eager_writer,
                     whole_requests=fast_paths.whole_request_handover(),
                     direct=(config["base-path"], api))
    cap = ConnectionCap(config["max-connections"], clock)
    http = HTTPConnections(site, cap, clock)

    top = MedichatService(
        reactor, store, registry, wheel, threadpool, ws_factory,
        http=http, hub=hub, broadcast=broadcast, shutdown_timeout=config["shutdown-timeout"],
        exit_on_failure=exit_on_failure, freeze_gc=exit_on_failure, readiness=readiness,
        close_spread=config["close-spread"], node=node, lock=lock,
        lingering=services.lingering,
        after_store=(feed, pruner, access_pruner, *webhooks),
        log_observer=getattr(config, "log_observer", None),
    )
    for description in config["listen"]:
        top.add_listener(_Listener(reactor, description, http, "HTTP/WebSocket"))
    tcp_factory = CappedFactory(
        StompTCPFactory(services, max_buffer=config["max-write-buffer"],
                        fast_paths=not config["no-fast-paths"],
                        keepalive=config["ws-ping-interval"]),
        cap,
    )
    for description in config["stomp-listen"]:
        top.add_listener(_Listener(reactor, description, tcp_factory, "STOMP/TCP"))

    HeartbeatTopicService(hub, clock, config["heartbeat-topic-interval"]).setServiceParent(top)
    if config["metrics-listen"]:
        metrics = Metrics(time.perf_counter)
        metrics.add_live(LiveCollector(
            sessions=registry, counters=services.counters, hub=local_hub, feed=feed,
            conversations=conversations, presence=presence, store=store,
            broadcast=broadcast, node=node, connections=cap,
        ))
        store.observer = metrics.store_operation
        if isinstance(store, SQLiteStore):
            # For medichat_store_thread_*: a few clock reads per transaction, metrics only.
            store.time_thread = True
        feed.lag_observer = metrics.event_lag
        observe_requests(site, metrics.http_request, RestAPI.router.url_map)
        metrics.setServiceParent(top)
        scrapes = Site(MetricsResource(metrics), reactor=clock)
        scrapes.displayTracebacks = False
        for description in config["metrics-listen"]:
            top.add_metrics_listener(_Listener(reactor, description, scrapes, "metrics"))
    return top

