"""
C{twistd medichat}: options and the service tree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.cred import strcred
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from medichat import __version__
from medichat._timers import TimerWheel
from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.devsecret import dev_secret_path, load_or_create_dev_secret
from medichat.auth.realm import build_portal
from medichat.carriers.tcp import StompTCPFactory
from medichat.carriers.websocket import StompWebSocketFactory
from medichat.domain.accounts import Accounts
from medichat.domain.conversations import ConversationService
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root, make_site, normalise_base_path
from medichat.interfaces import IBearerToken, ISessionCookie, IStoreBound
from medichat.model import format_time, micros
from medichat.pubsub.hub import InProcessHub
from medichat.pubsub.topics import HEARTBEAT_TOPIC
from medichat.stomp.codec import Limits
from medichat.stomp.registry import SessionRegistry
from medichat.stomp.session import StompConfig, StompServices
from medichat.store import open_store

_log = Logger()


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a whole number, not {value!r}") from None
    if number <= 0:
        raise usage.UsageError(f"--{name} must be positive, not {value!r}")
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
        ["send-rate", None, 20.0, "SEND frames per second a STOMP session may average.",
         lambda v: _positive_float("send-rate", v)],
        ["max-write-buffer", None, 1024 * 1024,
         "Bytes a slow client may have waiting before it is dropped.",
         lambda v: _positive_int("max-write-buffer", v)],
        ["max-message-length", None, 4000, "Longest chat message, in characters.",
         lambda v: _positive_int("max-message-length", v)],
        ["max-body", None, 65536, "Largest HTTP request body, in bytes.",
         lambda v: _positive_int("max-body", v)],
        ["session-ttl", None, 43200, "Seconds an employee login session lives without use.",
         lambda v: _positive_int("session-ttl", v)],
        ["session-recheck-interval", None, 30.0,
         "Seconds between re-checks of a cookie-authenticated STOMP session's login.",
         lambda v: _positive_float("session-recheck-interval", v)],
    ]
    optFlags = [
        ["secure-cookies", None, "Always mark the session cookie Secure."],
        ["no-fast-paths", None,
         "Use only the public Twisted and Autobahn API on the STOMP carriers (slower)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["stomp-listen"] = []
        self["allowed-origin"] = []

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

    def opt_allowed_origin(self, origin: str) -> None:
        """
        An origin (scheme://host[:port], or *) allowed to open WebSockets and make
        cookie-authenticated changes (repeatable).
        """
        origin = origin.strip()
        if origin != "*" and "://" not in origin:
            raise usage.UsageError(f"--allowed-origin needs scheme://host[:port], not {origin!r}")
        self["allowed-origin"].append(origin.rstrip("/"))

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
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
        database = self["database"]
        if database is not None and not database.startswith(("postgresql://", "postgres://")):
            raise usage.UsageError("--database must be a postgresql:// URL")


def _endpoint(option: str, description: str) -> str:
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--{option}: not an endpoint {description!r}: {e}") from None
    return description


class _Listener(Service):
    """
    Listens on one endpoint once the store is ready, and logs the address.
    """

    def __init__(self, reactor: Any, description: str, factory: Any, what: str) -> None:
        self._reactor = reactor
        self._description = description
        self._factory = factory
        self._what = what
        self._port: IListeningPort | None = None

    def listen(self) -> Deferred[IListeningPort]:
        endpoint = serverFromString(self._reactor, self._description)
        d: Deferred[IListeningPort] = endpoint.listen(self._factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            address = port.getHost()
            _log.info(
                "medichat {what} listening on {host}:{port} ({endpoint})",
                what=self._what,
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
                endpoint=self._description,
            )
            return port

        return d.addCallback(listening)

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
    The whole server: starts the store (migrating it), then listens; on stop, closes
    every STOMP session with "going away", stops listening and closes the store.

    @ivar listeners: the HTTP/WebSocket and STOMP/TCP listeners.
    """

    def __init__(self, reactor: Any, store: Any, registry: SessionRegistry,
                 wheel: TimerWheel, threadpool: ThreadPool,
                 websockets: StompWebSocketFactory) -> None:
        super().__init__()
        self._reactor = reactor
        self.store = store
        self.registry = registry
        self._wheel = wheel
        self._threadpool = threadpool
        self._websockets = websockets
        self.listeners: list[_Listener] = []
        self.ready: Deferred[None] = Deferred()

    def add_listener(self, listener: _Listener) -> None:
        """Listen on this endpoint once the store is ready."""
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self._threadpool.start()
        self._start()

    @inlineCallbacks
    def _start(self) -> Any:
        try:
            yield self.store.start()
            for listener in self.listeners:
                yield listener.listen()
        except Exception:
            _log.failure("medichat could not start")
            if IReactorCore.providedBy(self._reactor) and self._reactor.running:
                self._reactor.stop()
            self.ready.errback()
            return
        _log.info("medichat {version} ready", version=__version__)
        self.ready.callback(None)

    @inlineCallbacks
    def stopService(self) -> Any:
        ended = self.registry.shutdown()
        if ended:
            _log.info("closing {count} STOMP sessions", count=ended)
        yield MultiService.stopService(self)
        # The sessions were sent close frames: let their handshakes finish (bounded).
        yield self._websockets.drain()
        self._wheel.stop()
        yield self.store.stop()
        self._threadpool.stop()


def _dev_checkers(data_dir: str, session_ttl: int) -> list[Any]:
    secret = load_or_create_dev_secret(data_dir)
    _log.warn(
        "no --auth given: development defaults (bearer JWTs signed with the secret in "
        "{path}, and employee session cookies). Do not use these in production.",
        path=dev_secret_path(data_dir),
    )
    return [JWTChecker(secret=secret), SessionCookieChecker(session_ttl)]


def makeService(config: Options, reactor: Any = None) -> IService:
    """
    Assemble the service tree from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    clock: IReactorTime = reactor
    data_dir = os.path.abspath(config["data-dir"])
    store = open_store(config["database"], data_dir, reactor)

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

    hub = InProcessHub()
    wheel = TimerWheel(clock)
    registry = SessionRegistry(hub)
    threadpool = ThreadPool(minthreads=1, maxthreads=4, name="medichat-kdf")

    def run_blocking(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, threadpool, fn, *args, **kwargs)

    accounts = Accounts(store, clock, session_ttl=session_ttl, run_blocking=run_blocking)
    def revoked(session_id: str | None, employee_id: str | None) -> None:
        # Logout, a password change or disablement ends the employee's live sessions.
        if employee_id is not None:
            registry.end_sessions(user_id=employee_id, message="session revoked")
        elif session_id is not None:
            registry.end_sessions(session_id=session_id, message="session revoked")

    accounts.add_revocation_observer(revoked)
    conversations = ConversationService(
        store, hub, clock, max_message_length=config["max-message-length"]
    )
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
        revalidate_interval=config["session-recheck-interval"],
    )
    services = StompServices(
        hub=hub,
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
    )
    root = build_root(config["base-path"], rest.resource(), WebSocketResource(ws_factory))
    site = make_site(root, config["max-body"])

    top = MedichatService(reactor, store, registry, wheel, threadpool, ws_factory)
    for description in config["listen"]:
        top.add_listener(_Listener(reactor, description, site, "HTTP/WebSocket"))
    tcp_factory = StompTCPFactory(services, max_buffer=config["max-write-buffer"],
                                  fast_paths=not config["no-fast-paths"])
    for description in config["stomp-listen"]:
        top.add_listener(_Listener(reactor, description, tcp_factory, "STOMP/TCP"))

    def beat() -> None:
        now = micros(clock.seconds())
        hub.publish(HEARTBEAT_TOPIC, {"heartbeat": {"time": format_time(now)}})

    heartbeat = TimerService(config["heartbeat-topic-interval"], beat)
    heartbeat.clock = clock
    heartbeat.setServiceParent(top)
    return top

