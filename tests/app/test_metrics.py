"""
Tests for L{medichat.app.metrics}: what a scrape reads from the live state, the hooks
that feed the histograms, the garbage collector's pauses, and the C{/metrics} resource;
on the real hub, presence, feed, conversation service and SQL store (run inline), with a
L{Clock} for every duration.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from medichat._connections import ConnectionCap
from medichat.app.metrics import LiveCollector, Metrics, MetricsResource
from medichat.app.tap import Options, makeService
from medichat.auth.checkers import JWTChecker
from medichat.auth.realm import build_portal
from medichat.domain.cluster_presence import ClusterPresence, NodeService
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.errors import DuplicateError
from medichat.model import Conversation, User, micros, new_id
from medichat.pubsub.hub import InProcessHub
from medichat.stomp.session import StompConfig, StompServices
from medichat.store.broadcast import PostgreSQLBroadcast
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests._inline import InlineTestCase
from tests._stomp import SECRET, Client, mint

NOW = 1_780_000_000.0
CUSTOMER = User("0be8c544-9518-4bce-8519-0eee0356989f", "c1", "customer")
EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def operations_doc() -> str:
    """The text of docs/operations.md, whose metrics table lists every family."""
    import medichat

    root = os.path.dirname(os.path.dirname(os.path.abspath(medichat.__file__)))
    with open(os.path.join(root, "docs", "operations.md"), encoding="utf-8") as f:
        return f.read()


def samples_of(metrics: Metrics) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.scrape().decode("utf-8"))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or L{None} when the scrape does not have it."""
    return samples.get((name, tuple(sorted(labels.items()))))


class _Process(InlineTestCase):
    """The parts of one process that the metrics read, on an in-memory store."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore(self.clock)
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.hub = InProcessHub("test")
        self.presence = InProcessPresence(self.hub)
        self.feed = started_feed(self.store, self.hub, self.clock)
        self.conversations = ConversationService(
            self.store, self.hub, self.clock, self.presence, self.feed
        )
        self.services = StompServices(
            hub=self.hub, presence=self.presence,
            portal=build_portal([JWTChecker(secret=SECRET, clock=self.clock)]),
            clock=self.clock, conversations=self.conversations,
            config=StompConfig(heartbeat=(0, 0)),
        )
        self.metrics = Metrics(self.clock.seconds, process=False)
        self.live = LiveCollector(
            sessions=self.services.registry, counters=self.services.counters, hub=self.hub,
            feed=self.feed, conversations=self.conversations, presence=self.presence,
            store=self.store,
        )
        self.metrics.add_live(self.live)


class LiveCollectorTests(_Process):
    """
    Each scrape reads the sessions, counts and gauges as they are now.
    """

    async def test_sessions_rise_and_fall(self) -> None:
        """The sessions gauge follows connections by carrier and role; counts only grow."""
        customer = Client(self.services, 1)
        customer.connect()
        employee = Client(self.services, 2)
        employee.connect(mint(EMPLOYEE, "nurse", "employee"))
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_stomp_sessions", carrier="tcp", role="customer"),
                         1)
        self.assertEqual(value(now, "medichat_stomp_sessions", carrier="tcp", role="employee"),
                         1)
        self.assertEqual(value(now, "medichat_stomp_sessions_opened_total"), 2)
        self.assertEqual(value(now, "medichat_online_employees"), 1)
        self.assertEqual(value(now, "medichat_stomp_frames_received_total", command="CONNECT"),
                         2)
        self.assertEqual(value(now, "medichat_stomp_frames_sent_total", command="CONNECTED"), 2)
        employee.protocol.connectionLost(Failure(ConnectionDone()))
        customer.send("DISCONNECT")
        later = samples_of(self.metrics)
        self.assertIsNone(value(later, "medichat_stomp_sessions", carrier="tcp",
                                role="customer"))
        self.assertIsNone(value(later, "medichat_stomp_sessions", carrier="tcp",
                                role="employee"))
        self.assertEqual(value(later, "medichat_stomp_sessions_opened_total"), 2)
        self.assertEqual(value(later, "medichat_stomp_sessions_closed_total",
                               reason="disconnect"), 2)
        self.assertEqual(value(later, "medichat_online_employees"), 0)

    async def test_fanout_and_messages(self) -> None:
        """A message to two subscriptions: committed once, published once, delivered twice."""
        conversation = await self.conversations.create(CUSTOMER)
        topic = f"/v1/topic/conversation/{conversation.id}"
        clients = [Client(self.services, port) for port in (1, 2)]
        for client in clients:
            client.connect()
            client.send("SUBSCRIBE", {"id": "s", "destination": topic})
        before = samples_of(self.metrics)
        self.assertEqual(value(before, "medichat_stomp_subscriptions"), 2)
        await self.conversations.post_message(CUSTOMER, conversation.id, "hello")
        after = samples_of(self.metrics)
        self.assertEqual(value(after, "medichat_messages_committed_total"), 1)
        self.assertEqual(
            (value(after, "medichat_message_transactions_total") or 0)
            - (value(before, "medichat_message_transactions_total") or 0),
            1,
        )
        # The conversationCreated of the employees' feed was published before.
        self.assertEqual(value(before, "medichat_events_published_total"), 1)
        self.assertEqual(value(after, "medichat_events_published_total"), 2)
        self.assertEqual(value(after, "medichat_events_caught_up_by_poll_total"), 0)
        # Both were committed here and handed over by the store, none read back.
        self.assertEqual(value(after, "medichat_events_handed_over_total"), 2)
        published = value(after, "medichat_publications_total") or 0
        delivered = value(after, "medichat_deliveries_total") or 0
        self.assertEqual(published - (value(before, "medichat_publications_total") or 0), 1)
        self.assertEqual(delivered - (value(before, "medichat_deliveries_total") or 0), 2)
        self.assertEqual(value(after, "medichat_stomp_frames_sent_total", command="MESSAGE"),
                         delivered)
        self.assertEqual(value(after, "medichat_stomp_sent_bytes_total"),
                         self.services.counters.bytes_sent)
        text = self.metrics.scrape().decode("utf-8")
        for secret in (CUSTOMER.user_id, conversation.id, "hello"):
            self.assertNotIn(secret, text)

    async def test_no_cluster_families_alone(self) -> None:
        """One process on SQLite reports no cluster families."""
        names = {name for name, _ in samples_of(self.metrics)}
        self.assertEqual({n for n in names if n.startswith("medichat_cluster_")}, set())

    async def test_cluster_families(self) -> None:
        """With a node and a LISTEN connection, their gauges and counts are reported."""
        node_presence = ClusterPresence(self.store, self.hub, "node-a")
        node = NodeService(self.store, node_presence, self.clock)
        await node.register()
        broadcast = PostgreSQLBroadcast("postgresql://nobody@127.0.0.1:1/none", self.clock,
                                        node_id="node-a")
        self.live.node = node
        self.live.broadcast = broadcast
        self.live.presence = node_presence
        # The first scrape asks the store (inline here, as if it had answered earlier).
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_cluster_nodes"), 1)
        self.assertEqual(value(now, "medichat_cluster_listen_connected"), 0)
        self.assertEqual(value(now, "medichat_cluster_listen_reconnects_total"), 0)
        self.assertEqual(value(now, "medichat_cluster_dead_nodes_removed_total"), 0)
        self.assertEqual(value(now, "medichat_online_employees"), 0)

    async def test_connections(self) -> None:
        """The cap's open connections, its limit and its refusals since start."""
        cap = ConnectionCap(2, self.clock)
        self.live.connections = cap
        cap.open = 2
        for _ in range(3):
            self.assertFalse(cap.admit(None))
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_connections"), 2)
        self.assertEqual(value(now, "medichat_connections_limit"), 2)
        self.assertEqual(value(now, "medichat_connections_refused_total"), 3)
        # The log's count starts again at each report; this one only grows.
        self.clock.advance(61)
        self.assertFalse(cap.admit(None))
        self.assertEqual(value(samples_of(self.metrics), "medichat_connections_refused_total"),
                         4)

    async def test_store_slow_reports_last_answer(self) -> None:
        """While the store has not answered, a scrape reports the last answer it gave."""
        node = NodeService(self.store, ClusterPresence(self.store, self.hub, "a"), self.clock)
        await node.register()
        self.live.node = node
        self.assertEqual(value(samples_of(self.metrics), "medichat_cluster_nodes"), 1)
        self.store.hold()
        other = NodeService(self.store, ClusterPresence(self.store, self.hub, "b"), self.clock)
        registered = other.register()
        self.assertEqual(value(samples_of(self.metrics), "medichat_cluster_nodes"), 1)
        self.store.release()
        await registered
        self.assertEqual(value(samples_of(self.metrics), "medichat_cluster_nodes"), 2)


class HookTests(_Process):
    """
    The hooks that the store and the feed call feed the histograms.
    """

    async def test_store_latency(self) -> None:
        """Each store operation is timed under its name."""
        self.store.observer = self.metrics.store_operation
        self.store.hold()
        pinged = self.store.ping()
        self.clock.advance(0.25)
        self.store.release()
        await pinged
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_count",
                               operation="ping"), 1)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_sum",
                               operation="ping"), 0.25)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_bucket",
                               operation="ping", le="0.1"), 0)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_bucket",
                               operation="ping", le="0.25"), 1)

    async def test_store_errors(self) -> None:
        """A failed operation is counted by operation and kind."""
        self.store.observer = self.metrics.store_operation
        conversation = Conversation(new_id(), micros(NOW), "c", "C")
        await self.store.create_conversation(conversation)
        with self.assertRaises(DuplicateError):
            await self.store.create_conversation(conversation)
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_store_errors_total",
                               operation="create_conversation", kind="duplicate"), 1)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_count",
                               operation="create_conversation"), 2)

    async def test_private_helpers_named_as_their_method(self) -> None:
        """An operation run by a method's coroutine helper is named as the method."""
        self.store.observer = self.metrics.store_operation
        await self.store.prune_events(0)
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_count",
                               operation="prune_events"), 1)

    async def test_message_commit_timed(self) -> None:
        """A posted message's group-committed transaction is timed as C{commit_message}."""
        self.store.observer = self.metrics.store_operation
        conversation = await self.conversations.create(CUSTOMER)
        await self.conversations.post_message(CUSTOMER, conversation.id, "hi")
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_store_operation_duration_seconds_count",
                               operation="commit_message"), 1)

    async def test_event_lag(self) -> None:
        """The feed's lag hook fills the lag histogram."""
        self.metrics.event_lag(0.003)
        self.metrics.event_lag(2.0)
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_event_delivery_lag_seconds_count"), 2)
        self.assertEqual(value(now, "medichat_event_delivery_lag_seconds_bucket", le="0.005"),
                         1)

    async def test_http_request(self) -> None:
        """An answered request is counted by route, method and status, and timed."""
        answered = self.metrics.http_request()
        self.clock.advance(0.02)
        answered("/v1/conversation", "POST", 201)
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_http_requests_total", route="/v1/conversation",
                               method="POST", status="201"), 1)
        self.assertAlmostEqual(value(now, "medichat_http_request_duration_seconds_sum",
                                     route="/v1/conversation", method="POST"), 0.02, places=6)


class GarbageCollectorTests(_Process):
    """
    Collections are timed while the metrics service runs, and only then.
    """

    async def test_pause_timed(self) -> None:
        """A collection's start and stop make one observation, by generation."""
        self.metrics.gc_phase("start", {"generation": 2})
        self.clock.advance(0.004)
        self.metrics.gc_phase("stop", {"generation": 2, "collected": 0})
        now = samples_of(self.metrics)
        self.assertEqual(value(now, "medichat_gc_pause_seconds_count", generation="2"), 1)
        self.assertAlmostEqual(value(now, "medichat_gc_pause_seconds_sum", generation="2"),
                               0.004, places=6)

    async def test_stop_without_start_ignored(self) -> None:
        """A stop seen without its start (installed mid-collection) is not observed."""
        self.metrics.gc_phase("stop", {"generation": 0})
        self.assertIsNone(value(samples_of(self.metrics), "medichat_gc_pause_seconds_count",
                                generation="0"))

    async def test_installed_while_running(self) -> None:
        """The callback is in gc.callbacks between start and stop of the service."""
        self.assertNotIn(self.metrics.gc_phase, gc.callbacks)
        self.metrics.startService()
        self.addCleanup(lambda: self.metrics.running and self.metrics.stopService())
        self.assertIn(self.metrics.gc_phase, gc.callbacks)
        gc.collect()
        self.metrics.stopService()
        self.assertNotIn(self.metrics.gc_phase, gc.callbacks)
        self.assertEqual(value(samples_of(self.metrics), "medichat_gc_pause_seconds_count",
                               generation="2"), 1)


class RegistryTests(_Process):
    """
    Each service has a registry of its own.
    """

    async def test_own_registry(self) -> None:
        """Two services' metrics do not clash, do not share, and stay out of the global one."""
        other = Metrics(self.clock.seconds, process=False)
        other.event_lag(1.0)
        self.assertEqual(value(samples_of(other), "medichat_event_delivery_lag_seconds_count"),
                         1)
        self.assertEqual(value(samples_of(self.metrics),
                               "medichat_event_delivery_lag_seconds_count"), 0)
        global_names = {m.name for m in REGISTRY.collect()}
        self.assertEqual({n for n in global_names if n.startswith("medichat")}, set())

    async def test_process_collector(self) -> None:
        """By default the process's own figures (memory, CPU, files) are included."""
        names = {name for name, _ in samples_of(Metrics(self.clock.seconds))}
        self.assertIn("process_resident_memory_bytes", names)


class ResourceTests(_Process):
    """
    C{/metrics} answers a scrape; nothing else is served.
    """

    async def test_scrape(self) -> None:
        """GET /metrics: 200 in the Prometheus text format."""
        treq: Any = StubTreq(MetricsResource(self.metrics))
        response = await treq.get("http://metrics.test/metrics")
        self.assertEqual(response.code, 200)
        (content_type,) = response.headers.getRawHeaders("content-type")
        # The text format of the installed prometheus-client (0.0.4 or 1.0.0).
        self.assertTrue(content_type.startswith("text/plain; version="), content_type)
        body = await response.text()
        self.assertIn("# TYPE medichat_stomp_sessions_opened_total counter", body)

    async def test_nothing_else(self) -> None:
        """Any other path is 404."""
        treq: Any = StubTreq(MetricsResource(self.metrics))
        for path in ("/", "/metrics/x", "/api/health"):
            response = await treq.get(f"http://metrics.test{path}")
            await response.content()
            self.assertEqual(response.code, 404, path)


class MetricsOptionTests(SynchronousTestCase):
    """
    C{--metrics-listen} takes endpoints, repeatedly; without it there are no metrics.
    """

    def service(self, *args: str) -> Any:
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), *args])
        return makeService(options, reactor)

    def test_off_by_default(self) -> None:
        """No option: no metrics listener, no metrics service, no store hook."""
        service = self.service()
        self.assertEqual(service.metrics_listeners, [])
        self.assertEqual([s for s in service if isinstance(s, Metrics)], [])
        self.assertIsNone(service.store.observer)

    def test_own_listeners(self) -> None:
        """Each --metrics-listen is a listener of its own, never among the public ones."""
        service = self.service("--metrics-listen", "tcp:0:interface=127.0.0.1",
                               "--metrics-listen", "tcp:0:interface=\\:\\:1")
        self.assertEqual(len(service.metrics_listeners), 2)
        self.assertEqual(len(service.listeners), 1)
        for listener in service.metrics_listeners:
            self.assertNotIn(listener, service.listeners)
        (metrics,) = [s for s in service if isinstance(s, Metrics)]
        self.assertEqual(service.store.observer, metrics.store_operation)

    def test_bad_endpoint(self) -> None:
        """An endpoint that is not one is a usage error naming the option."""
        error = self.assertRaises(usage.UsageError, Options().parseOptions,
                                  ["--metrics-listen", "nonsense:9464"])
        self.assertIn("--metrics-listen", str(error))


class DocumentedTests(_Process):
    """
    Every metric the service serves is listed in the operators' documentation.
    """

    async def test_every_family_documented(self) -> None:
        """Each family of a scrape that saw everything happen is in docs/operations.md."""
        node = NodeService(self.store, ClusterPresence(self.store, self.hub, "a"), self.clock)
        await node.register()
        self.live.node = node
        self.live.broadcast = PostgreSQLBroadcast("postgresql://nobody@127.0.0.1:1/none",
                                                  self.clock, node_id="a")
        self.live.connections = ConnectionCap(1, self.clock)
        self.store.observer = self.metrics.store_operation
        await self.store.ping()
        self.metrics.http_request()("/livez", "GET", 200)
        self.metrics.event_lag(0.1)
        self.metrics.gc_phase("start", {"generation": 0})
        self.metrics.gc_phase("stop", {"generation": 0})
        Client(self.services).connect()
        self.services.registry.shutdown()
        self.samples_of_twice()
        text = self.metrics.scrape().decode("utf-8")
        documented = self.operations_doc()
        names = set()
        for family in text_string_to_metric_families(text):
            # prometheus-client adds a _created gauge beside each counter and histogram.
            if family.name.startswith("medichat_") and not family.name.endswith("_created"):
                names.add(family.name + ("_total" if family.type == "counter" else ""))
        self.assertGreaterEqual(len(names), 25)
        self.assertEqual({name for name in names if f"`{name}`" not in documented}, set())

    def samples_of_twice(self) -> None:
        # The figures read from the store appear from the second scrape on.
        samples_of(self.metrics)

    def operations_doc(self) -> str:
        return operations_doc()
