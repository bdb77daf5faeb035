"""
Prometheus metrics of one medichat process, served at C{GET /metrics} on the
C{--metrics-listen} endpoints only (never on the public listeners).

The layers below count as they act, in plain integers (L{StompCounters}, the hub's
deliveries, the feed's events, ...) or through small observer hooks (the store's
operations, the site's requests, the feed's lag); nothing below this module imports
C{prometheus_client}.  Counts and gauges are read from that live state when Prometheus
scrapes (L{LiveCollector}), so a fan-out costs the hot path one addition per publication;
only the histograms are observed as things happen, each once per store operation, HTTP
request, stored event or garbage collection.

Every name starts with C{medichat_}, counters end in C{_total}, times are in seconds and
sizes in bytes; no label ever holds a user, customer, session or conversation id.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import Service
from twisted.python.failure import Failure
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request

from medichat.errors import DuplicateError, StoreUnavailable
from medichat.stomp.counters import StompCounters

__all__ = ["LiveCollector", "Metrics", "MetricsResource"]

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def _database_thread(thread: Any) -> Iterator[Metric]:
    """The counts of the SQLite store's database thread."""
    yield CounterMetricFamily("medichat_store_thread_operations",
                              "Transactions the SQLite store's database thread ran.",
                              value=thread.operations)
    yield CounterMetricFamily("medichat_store_thread_wait_seconds",
                              "Seconds transactions waited from being queued for the SQLite "
                              "database thread to their start there (behind the ones before "
                              "them, then for the thread to wake and take the GIL).",
                              value=thread.waited)
    yield CounterMetricFamily("medichat_store_thread_busy_seconds",
                              "Seconds the SQLite database thread spent running transactions, "
                              "commits included (its rate: how busy the thread is).",
                              value=thread.busy)
    yield CounterMetricFamily("medichat_store_thread_cpu_seconds",
                              "CPU seconds the SQLite database thread spent on transactions "
                              "(busy seconds less these: waits inside, for the disk or the "
                              "GIL).",
                              value=thread.cpu)


def _counter(name: str, documentation: str, labels: Sequence[str],
             values: dict[str, int] | dict[tuple[str, ...], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key if isinstance(key, tuple) else (key,), value)
    return family


class LiveCollector:
    """
    Reads the counts and gauges from the live state of the process at each scrape.

    @ivar sessions: the registry of live STOMP sessions (each with C{carrier_kind} and
        C{user}).
    @ivar counters: the sessions' counts.
    @ivar hub: the in-process hub (C{publications}, C{deliveries},
        C{subscription_count()}).
    @ivar feed: the event feed (C{published}, C{published_handed}, C{published_by_poll}).
    @ivar conversations: the conversation service (C{messages_committed}).
    @ivar presence: answers C{online_employees()}.
    @ivar store: answers C{count_nodes()} with the cluster; counts
        C{message_transactions}; with SQLite, its C{database_thread} counts what that
        thread does (L{medichat.store._dbthread.DatabaseThread}).
    @ivar broadcast: with PostgreSQL, the C{LISTEN} connection (C{connected},
        C{reconnects}); L{None} otherwise.
    @ivar node: with PostgreSQL, this process's node (C{removed_nodes}); L{None} otherwise.
    @ivar connections: the cap on open connections (C{open}, C{limit}, C{refused_total}),
        if any.
    """

    def __init__(self, *, sessions: Any, counters: StompCounters, hub: Any, feed: Any,
                 conversations: Any, presence: Any, store: Any, broadcast: Any = None,
                 node: Any = None, connections: Any = None) -> None:
        self.sessions = sessions
        self.counters = counters
        self.hub = hub
        self.feed = feed
        self.conversations = conversations
        self.presence = presence
        self.store = store
        self.broadcast = broadcast
        self.node = node
        self.connections = connections
        # Answers that need the store (with the cluster) are asked for at each scrape and
        # reported as of the last answer: a scrape never waits for the database.
        self._online: int | None = None
        self._nodes: int | None = None
        self._asking: set[str] = set()

    def _ask(self, name: str, ask: Callable[[], Any], keep: Callable[[int], None]) -> None:
        if name in self._asking:
            return
        self._asking.add(name)

        def done(result: object) -> None:
            self._asking.discard(name)
            if not isinstance(result, Failure):
                keep(int(result))  # type: ignore[call-overload]

        ask().addBoth(done)

    def _set_online(self, value: int) -> None:
        self._online = value

    def _set_nodes(self, value: int) -> None:
        self._nodes = value

    def collect(self) -> Iterator[Metric]:
        """The metrics, read now (see the module)."""
        self._ask("online", self.presence.online_employees, self._set_online)
        if self.node is not None:
            self._ask("nodes", self.store.count_nodes, self._set_nodes)

        open_now: dict[tuple[str, str], int] = {}
        for session in self.sessions.sessions():
            user = session.user
            key = (session.carrier_kind, user.user_role if user is not None else "unknown")
            open_now[key] = open_now.get(key, 0) + 1
        sessions = GaugeMetricFamily(
            "medichat_stomp_sessions", "Authenticated STOMP sessions open now.",
            labels=("carrier", "role"),
        )
        for key, value in sorted(open_now.items()):
            sessions.add_metric(key, value)
        yield sessions

        counters = self.counters
        yield CounterMetricFamily(
            "medichat_stomp_sessions_opened", "STOMP sessions authenticated.",
            value=counters.opened,
        )
        yield _counter("medichat_stomp_sessions_closed",
                       "Authenticated STOMP sessions ended, by reason.",
                       ("reason",), dict(counters.closed))
        yield _counter("medichat_stomp_handshakes_refused",
                       "STOMP sessions ended before they were authenticated (WebSocket "
                       "handshake or CONNECT), by reason.",
                       ("reason",), dict(counters.refused))
        yield GaugeMetricFamily("medichat_stomp_subscriptions",
                                "Subscriptions of the STOMP sessions open now.",
                                value=self.hub.subscription_count())
        yield _counter("medichat_stomp_frames_received", "STOMP frames received, by command.",
                       ("command",), dict(counters.frames_received))
        sent = dict(counters.frames_sent)
        sent["MESSAGE"] = sent.get("MESSAGE", 0) + self.hub.deliveries
        yield _counter("medichat_stomp_frames_sent",
                       "STOMP frames sent, by command (live MESSAGEs counted as the hub "
                       "hands them to subscriptions).",
                       ("command",), sent)
        yield _counter("medichat_stomp_errors", "STOMP ERROR frames sent, by reason.",
                       ("reason",), dict(counters.errors))
        yield CounterMetricFamily("medichat_stomp_sent_bytes",
                                  "Bytes of STOMP frames and heart-beats sent.",
                                  value=counters.bytes_sent)
        yield CounterMetricFamily("medichat_publications",
                                  "Events published to the hub that had subscribers.",
                                  value=self.hub.publications)
        yield CounterMetricFamily("medichat_deliveries",
                                  "Publications handed to subscriptions.",
                                  value=self.hub.deliveries)
        yield CounterMetricFamily("medichat_messages_committed",
                                  "Chat messages this process committed to the store.",
                                  value=self.conversations.messages_committed)
        yield CounterMetricFamily("medichat_message_transactions",
                                  "Store transactions that committed chat messages: one "
                                  "per group commit, and one per message of a failed "
                                  "group retried on its own.",
                                  value=self.store.message_transactions)
        thread = getattr(self.store, "database_thread", None)
        if thread is not None:
            yield from _database_thread(thread)
        yield CounterMetricFamily("medichat_events_published",
                                  "Durable conversation events the event feed published.",
                                  value=self.feed.published)
        yield CounterMetricFamily("medichat_events_handed_over",
                                  "Durable events of this process's commits that the event "
                                  "feed published as the store handed them over, unread.",
                                  value=self.feed.published_handed)
        yield CounterMetricFamily("medichat_events_caught_up_by_poll",
                                  "Durable events found only by the event feed's fallback "
                                  "poll (a missed wake-up).",
                                  value=self.feed.published_by_poll)
        if self.connections is not None:
            yield GaugeMetricFamily("medichat_connections",
                                    "Connections open now (HTTP, WebSocket and STOMP/TCP).",
                                    value=self.connections.open)
            yield GaugeMetricFamily("medichat_connections_limit",
                                    "The most connections open at once (--max-connections).",
                                    value=self.connections.limit)
            yield CounterMetricFamily("medichat_connections_refused",
                                      "Connections refused because the limit was reached.",
                                      value=self.connections.refused_total)
        if self._online is not None:
            yield GaugeMetricFamily("medichat_online_employees",
                                    "Employees with a STOMP session open (on any node).",
                                    value=self._online)
        if self.broadcast is not None:
            yield GaugeMetricFamily("medichat_cluster_listen_connected",
                                    "1 while the PostgreSQL LISTEN connection is in place.",
                                    value=1 if self.broadcast.connected else 0)
            yield CounterMetricFamily("medichat_cluster_listen_reconnects",
                                      "Times the PostgreSQL LISTEN was in place again after "
                                      "it had been lost.",
                                      value=self.broadcast.reconnects)
        if self.node is not None:
            yield CounterMetricFamily("medichat_cluster_dead_nodes_removed",
                                      "Dead nodes whose presence this node removed.",
                                      value=self.node.removed_nodes)
            if self._nodes is not None:
                yield GaugeMetricFamily("medichat_cluster_nodes",
                                        "Server processes registered on the database.",
                                        value=self._nodes)


class Metrics(Service):
    """
    The metrics of one process: a L{CollectorRegistry} of its own (never the global one),
    the histograms and the hooks that feed them, and, while running, the garbage
    collector's pauses.

    @param timer: a monotonic clock in seconds, for durations (C{time.perf_counter}).
    @ivar registry: what C{/metrics} serves.
    """

    def __init__(self, timer: Callable[[], float], *, process: bool = True) -> None:
        self._timer = timer
        self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
        self.http_requests = Counter(
            "medichat_http_requests", "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"), registry=self.registry,
        )
        self.http_duration = Histogram(
            "medichat_http_request_duration_seconds",
            "Seconds from an HTTP request's arrival to its answer, by route and method.",
            ("route", "method"), buckets=HTTP_BUCKETS, registry=self.registry,
        )
        self.store_duration = Histogram(
            "medichat_store_operation_duration_seconds",
            "Seconds a store operation took, by operation.",
            ("operation",), buckets=STORE_BUCKETS, registry=self.registry,
        )
        self.store_errors = Counter(
            "medichat_store_errors", "Store operations that failed, by operation and kind "
            "(unavailable, duplicate, other).",
            ("operation", "kind"), registry=self.registry,
        )
        self.lag = Histogram(
            "medichat_event_delivery_lag_seconds",
            "Seconds from a durable event's commit to its publication to this process's "
            "subscribers.",
            buckets=LAG_BUCKETS, registry=self.registry,
        )
        self.gc_pause = Histogram(
            "medichat_gc_pause_seconds", "Seconds the garbage collector stopped the process, "
            "by generation.",
            ("generation",), buckets=GC_BUCKETS, registry=self.registry,
        )
        self._store_children: dict[str, Any] = {}
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._gc_started: float | None = None

    def add_live(self, collector: LiveCollector) -> None:
        """Serve what C{collector} reads at each scrape."""
        self.registry.register(collector)  # type: ignore[arg-type]

    def scrape(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    # -- hooks of the layers below

    def store_operation(self, operation: str) -> Callable[[object], None]:
        """
        A store operation starts (the store's C{observer}); returns what notes its end.
        """
        child = self._store_children.get(operation)
        if child is None:
            child = self._store_children[operation] = self.store_duration.labels(operation)
        started = self._timer()

        def ended(result: object) -> None:
            child.observe(self._timer() - started)
            if isinstance(result, Failure):
                error = result.value
                if isinstance(error, StoreUnavailable):
                    kind = "unavailable"
                elif isinstance(error, DuplicateError):
                    kind = "duplicate"
                else:
                    kind = "other"
                self.store_errors.labels(operation, kind).inc()

        return ended

    def http_request(self) -> Callable[[str, str, int], None]:
        """
        An HTTP request arrives (L{medichat.http.observe.observe_requests}); returns what
        notes its answer.
        """
        started = self._timer()

        def answered(route: str, method: str, status: int) -> None:
            key = (route, method, status)
            children = self._http_children.get(key)
            if children is None:
                children = self._http_children[key] = (
                    self.http_duration.labels(route, method),
                    self.http_requests.labels(route, method, str(status)),
                )
            duration, count = children
            duration.observe(self._timer() - started)
            count.inc()

        return answered

    def event_lag(self, seconds: float) -> None:
        """A durable event was published this long after its commit (the feed's hook)."""
        self.lag.observe(seconds)

    # -- the garbage collector

    def gc_phase(self, phase: str, info: dict[str, Any]) -> None:
        """
        A C{gc.callbacks} entry: times each collection from its start to its stop.
        """
        if phase == "start":
            self._gc_started = self._timer()
        elif phase == "stop" and self._gc_started is not None:
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(
                self._timer() - self._gc_started
            )
            self._gc_started = None

    def startService(self) -> None:
        super().startService()
        if self.gc_phase not in gc.callbacks:
            gc.callbacks.append(self.gc_phase)

    def stopService(self) -> None:
        super().stopService()
        if self.gc_phase in gc.callbacks:
            gc.callbacks.remove(self.gc_phase)


class MetricsResource(Resource):
    """
    The root of a C{--metrics-listen} endpoint: C{GET /metrics} answers the scrape; every
    other path is 404.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.putChild(b"metrics", _Scrape(metrics))


class _Scrape(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        if request.postpath:
            return NoResource().render(request)  # type: ignore[no-any-return]
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self._metrics.scrape()
