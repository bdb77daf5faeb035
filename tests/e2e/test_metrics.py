"""
End to end: the real server with C{--metrics-listen}; Prometheus scrapes of C{/metrics}
while real STOMP-over-WebSocket clients (stomp.py) and real HTTP (treq) act.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests._pg import create_test_database
from tests._server import LiveServerMixin, in_thread
from tests._stompclient import wait_for, wait_until, ws_connection
from tests.app.test_metrics import operations_doc

CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
EMPLOYEE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the scrape does not have it (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsEndToEndTests(LiveServerMixin, TestCase):
    """
    A scrape during a real session shows the sessions gauge rise and fall and the counters
    move; the metrics are served on their own listener only.
    """

    def server_args(self) -> list[str]:
        return ["--metrics-listen", "tcp:0:interface=127.0.0.1"]

    @property
    def metrics_url(self) -> str:
        (listener,) = self.server.service.metrics_listeners
        return f"http://127.0.0.1:{listener.port.getHost().port}/metrics"

    @inlineCallbacks
    def scrape(self) -> Any:
        """The text and parsed samples of one scrape."""
        response = yield treq.get(self.metrics_url, pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )
        text = yield response.text()
        return text, parse(text)

    def _connect(self, token: str) -> Any:
        conn, recorder = ws_connection(self.server.http_port,
                                       header={"Authorization": f"Bearer {token}"})
        conn.connect(wait=True)
        self.clients.append(conn)
        return conn, recorder

    def _subscribe(self, conn: Any, recorder: Any, destination: str, sub_id: str) -> None:
        conn.subscribe(destination, id=sub_id, receipt=f"r-{sub_id}")
        assert wait_for(recorder.receipts) == f"r-{sub_id}"

    def _disconnect(self, conn: Any) -> None:
        conn.disconnect()
        wait_until(lambda: not conn.is_connected())

    @inlineCallbacks
    def test_scrape_follows_a_session(self) -> Any:
        """Sessions rise and fall, frames, deliveries, messages and requests are counted."""
        _, before = yield self.scrape()
        self.assertEqual(value(before, "medichat_stomp_sessions", carrier="websocket",
                               role="customer"), 0)
        customer_token = self.token(CUSTOMER, "c1", "customer")
        employee_token = self.token(EMPLOYEE, "nurse", "employee")
        customer, c_events = yield in_thread(self._connect, customer_token)
        employee, e_events = yield in_thread(self._connect, employee_token)

        _, connected = yield self.scrape()
        self.assertEqual(value(connected, "medichat_stomp_sessions", carrier="websocket",
                               role="customer"), 1)
        self.assertEqual(value(connected, "medichat_stomp_sessions", carrier="websocket",
                               role="employee"), 1)
        self.assertEqual(value(connected, "medichat_stomp_sessions_opened_total")
                         - value(before, "medichat_stomp_sessions_opened_total"), 2)
        # stomp.py opens with STOMP (CONNECT under another name).
        self.assertEqual(sum(value(connected, "medichat_stomp_frames_received_total",
                                   command=command) for command in ("CONNECT", "STOMP")), 2)
        self.assertEqual(value(connected, "medichat_online_employees"), 1)

        code, conversation = yield self.http("POST", "/v1/conversation", customer_token)
        self.assertEqual(code, 201)
        cid = conversation["id"]
        topic = f"/v1/topic/conversation/{cid}"
        yield in_thread(self._subscribe, customer, c_events, topic, "c")
        yield in_thread(self._subscribe, employee, e_events, topic, "e")
        code, message = yield self.http("POST", f"/v1/conversation/{cid}/message",
                                        customer_token, {"message": "Hello"})
        self.assertEqual(code, 201)
        for events in (c_events, e_events):
            yield in_thread(wait_until, lambda events=events: any(
                "message" in json.loads(frame.body) for frame in list(events.messages.queue)
            ))

        text, acted = yield self.scrape()
        self.assertEqual(value(acted, "medichat_stomp_subscriptions"), 2)
        self.assertEqual(value(acted, "medichat_stomp_frames_received_total",
                               command="SUBSCRIBE"), 2)
        self.assertEqual(value(acted, "medichat_messages_committed_total"), 1)
        # The message and the automatic "received", each to both subscriptions, at least.
        self.assertGreaterEqual(value(acted, "medichat_deliveries_total")
                                - value(connected, "medichat_deliveries_total"), 4)
        self.assertGreaterEqual(value(acted, "medichat_stomp_frames_sent_total",
                                      command="MESSAGE"), 4)
        self.assertGreater(value(acted, "medichat_stomp_sent_bytes_total"),
                           value(connected, "medichat_stomp_sent_bytes_total"))
        self.assertGreaterEqual(value(acted, "medichat_event_delivery_lag_seconds_count"), 1)
        self.assertEqual(value(acted, "medichat_http_requests_total",
                               route="/v1/conversation/<conversation_id>/message",
                               method="POST", status="201"), 1)
        self.assertEqual(value(acted, "medichat_http_request_duration_seconds_count",
                               route="/v1/conversation", method="POST"), 1)
        self.assertGreaterEqual(value(acted, "medichat_store_operation_duration_seconds_count",
                                      operation="commit_message"), 1)
        # Patient data never becomes a label.
        for secret in (CUSTOMER, EMPLOYEE, cid, message["id"], "Hello"):
            self.assertNotIn(secret, text)

        yield in_thread(self._disconnect, customer)
        yield in_thread(self._disconnect, employee)
        # The server notices each DISCONNECT a moment after the client's receipt.
        for _ in range(50):
            _, after = yield self.scrape()
            if value(after, "medichat_stomp_sessions_closed_total", reason="disconnect") == 2:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(value(after, "medichat_stomp_sessions_closed_total",
                               reason="disconnect"), 2)
        self.assertEqual(value(after, "medichat_stomp_sessions", carrier="websocket",
                               role="customer"), 0)
        self.assertEqual(value(after, "medichat_stomp_sessions", carrier="websocket",
                               role="employee"), 0)
        self.assertEqual(value(after, "medichat_stomp_subscriptions"), 0)
        self.assertEqual(value(after, "medichat_stomp_frames_received_total",
                               command="DISCONNECT"), 2)

    def _refused(self) -> None:
        conn, recorder = ws_connection(self.server.http_port,
                                       header={"Authorization": "Bearer not-a-token"})
        self.clients.append(conn)
        try:
            conn.connect(wait=True)
        except Exception:
            pass
        wait_for(recorder.errors)

    @inlineCallbacks
    def test_refused_handshake_counted(self) -> Any:
        """A CONNECT with a bad token counts as a refused handshake and an ERROR frame."""
        yield in_thread(self._refused)
        _, samples = yield self.scrape()
        self.assertEqual(value(samples, "medichat_stomp_handshakes_refused_total",
                               reason="authentication failed"), 1)
        self.assertEqual(value(samples, "medichat_stomp_errors_total",
                               reason="authentication failed"), 1)
        self.assertEqual(value(samples, "medichat_stomp_sessions_opened_total"), 0)

    @inlineCallbacks
    def test_not_on_the_public_listener(self) -> Any:
        """/metrics is 404 on the public port (with and without the base path)."""
        for path in ("/metrics", "/api/metrics"):
            response = yield treq.get(f"http://127.0.0.1:{self.server.http_port}{path}",
                                      pool=self.pool)
            yield response.content()
            self.assertEqual(response.code, 404, path)

    @inlineCallbacks
    def test_only_metrics_on_the_metrics_listener(self) -> Any:
        """The metrics listener serves /metrics and nothing else: not the API."""
        base = self.metrics_url.rsplit("/", 1)[0]
        for path in ("/", "/api/health", "/api/v1/chat", "/metricsx"):
            response = yield treq.get(base + path, pool=self.pool)
            yield response.content()
            self.assertEqual(response.code, 404, path)

    @inlineCallbacks
    def test_standard_families(self) -> Any:
        """A scrape has the process collector, store latency and GC families, typed."""
        text, _ = yield self.scrape()
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        self.assertEqual(families["medichat_store_operation_duration_seconds"], "histogram")
        self.assertEqual(families["medichat_gc_pause_seconds"], "histogram")
        self.assertEqual(families["medichat_stomp_sessions"], "gauge")
        self.assertEqual(families["medichat_stomp_sessions_closed"], "counter")
        self.assertIn("process_resident_memory_bytes", families)

    @inlineCallbacks
    def test_database_thread(self) -> Any:
        """
        On SQLite, the database thread's counts: each transaction (a message's among
        them) counted, with the seconds it waited, ran and spent on the CPU; each family
        in docs/operations.md.
        """
        _, before = yield self.scrape()
        token = self.token(CUSTOMER, "c1", "customer")
        code, conversation = yield self.http("POST", "/v1/conversation", token)
        self.assertEqual(code, 201)
        code, _ = yield self.http("POST", f"/v1/conversation/{conversation['id']}/message",
                                  token, {"message": "Hello"})
        self.assertEqual(code, 201)
        _, after = yield self.scrape()
        names = ("operations", "wait_seconds", "busy_seconds", "cpu_seconds")
        moved = {
            name: value(after, f"medichat_store_thread_{name}_total")
            - value(before, f"medichat_store_thread_{name}_total")
            for name in names
        }
        # The conversation's and the message's transactions at least (and the
        # authentication's or the feed's reads, if any).
        self.assertGreaterEqual(moved["operations"], 2)
        self.assertGreater(moved["busy_seconds"], 0)
        self.assertGreater(moved["cpu_seconds"], 0)
        self.assertIn(("medichat_store_thread_wait_seconds_total", ()), after)
        self.assertGreaterEqual(moved["wait_seconds"], 0)
        documented = operations_doc()
        missing = [name for name in names
                   if f"`medichat_store_thread_{name}_total`" not in documented]
        self.assertEqual(missing, [])


class PostgreSQLMetricsTests(LiveServerMixin, TestCase):
    """
    With PostgreSQL, a scrape has the cluster's families, read from the real LISTEN
    connection and node.
    """

    @inlineCallbacks
    def server_args(self) -> Any:
        url = yield create_test_database(self)
        return ["--database", url, "--metrics-listen", "tcp:0:interface=127.0.0.1"]

    @inlineCallbacks
    def scrape(self) -> Any:
        (listener,) = self.server.service.metrics_listeners
        url = f"http://127.0.0.1:{listener.port.getHost().port}/metrics"
        response = yield treq.get(url, pool=self.pool)
        return parse((yield response.text()))

    @inlineCallbacks
    def test_cluster_families(self) -> Any:
        """LISTEN connected, no reconnects, one node (as of the previous scrape), none removed."""
        first = yield self.scrape()
        self.assertEqual(value(first, "medichat_cluster_listen_connected"), 1)
        self.assertEqual(value(first, "medichat_cluster_listen_reconnects_total"), 0)
        self.assertEqual(value(first, "medichat_cluster_dead_nodes_removed_total"), 0)
        # No SQLite thread here.
        self.assertNotIn(("medichat_store_thread_operations_total", ()), first)
        # The node count and online employees come from the database: asked at each
        # scrape, reported from the previous answer, which may still be on its way when
        # the next scrape comes (its read waits for a free connection).
        for _ in range(50):
            second = yield self.scrape()
            if value(second, "medichat_store_operation_duration_seconds_count",
                     operation="count_nodes") >= 1:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(value(second, "medichat_cluster_nodes"), 1)
        self.assertEqual(value(second, "medichat_online_employees"), 0)
        self.assertGreaterEqual(value(second, "medichat_store_operation_duration_seconds_count",
                                      operation="register_node"), 1)
        yield self.server.service.broadcast.stop()
        stopped = yield self.scrape()
        self.assertEqual(value(stopped, "medichat_cluster_listen_connected"), 0)
