"""
End to end: webhooks reach a real receiver (a twisted.web site on a loopback port) that
verifies each signature as the Standard Webhooks specification says, fails on purpose
(500 then 2xx, 410, 429 with Retry-After) and counts duplicates; from the dispatcher on a
real SQLite store, from a whole server, and across a C{twistd -n medichat} process killed
between the commit and the delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from typing import Any

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from medichat.auth.devsecret import load_or_create_dev_secret
from medichat.domain.webhooks import WebhookDispatcher
from medichat.http.webhook_client import TreqSender, make_http_client
from medichat.model import Conversation, Message, OfflineNotice, micros, new_id
from medichat.store import SQLiteStore
from medichat.store.sqlite import SQLITE_FILE_NAME
from tests._pg import create_test_database
from tests._server import LiveServerMixin, in_thread
from tests.e2e.test_startup import TIMEOUT, _command, _env, _free_port

KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"


def verified(key: bytes, headers: dict[str, str], body: bytes, now: float) -> bool:
    """
    A receiver's check, from the specification: one of the space-separated v1 signatures
    is the base64 HMAC-SHA256 of C{id.timestamp.body} under the key, and the timestamp is
    within five minutes of now.
    """
    try:
        webhook_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"].split(" ")
    except KeyError:
        return False
    if not timestamp.isdigit() or abs(now - int(timestamp)) > 300:
        return False
    content = f"{webhook_id}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in signatures)


class Receiver(Resource):
    """
    The operator's webhook receiver: verifies, answers with the planned statuses (then
    204), and records everything.

    @ivar requests: C{(webhook-id, event, status answered)} of every request.
    """

    isLeaf = True

    def __init__(self, key: bytes, plan: list[tuple[int, dict[str, str]]] | None = None) -> None:
        super().__init__()
        self._key = key
        self.plan = list(plan or [])
        self.requests: list[tuple[str, dict[str, Any], int]] = []
        self.bad_signatures = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def render_POST(self, request: Request) -> bytes:
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        if not verified(self._key, headers, body, time.time()):
            self.bad_signatures += 1
            status, extra = 401, {}
        else:
            status, extra = self.plan.pop(0) if self.plan else (204, {})
        request.setResponseCode(status)
        for name, value in extra.items():
            request.setHeader(name, value)
        self.requests.append((headers.get("webhook-id", ""), json.loads(body), status))
        for count, waiter in list(self._waiters):
            if len(self.requests) >= count:
                self._waiters.remove((count, waiter))
                reactor.callLater(0, waiter.callback, None)
        return b""

    def received(self, count: int) -> Deferred[None]:
        """Fires once C{count} requests have come in."""
        d: Deferred[None] = Deferred()
        if len(self.requests) >= count:
            d.callback(None)
        else:
            self._waiters.append((count, d))
        return d

    def delivered(self) -> Counter[str]:
        """How many times each webhook id was answered with a 2xx: more than 1 is a duplicate."""
        return Counter(i for i, _, status in self.requests if 200 <= status < 300)


def listen(testcase: TestCase, receiver: Receiver, port: int = 0) -> int:
    """Serve C{receiver} on a loopback port until the test ends; its port."""
    listening = reactor.listenTCP(port, Site(receiver), interface="127.0.0.1")
    testcase.addCleanup(listening.stopListening)
    return int(listening.getHost().port)


def sleep(seconds: float) -> Deferred[None]:
    """Real time passing (end-to-end tests only)."""
    return deferLater(reactor, seconds, lambda: None)


class DispatcherTests(TestCase):
    """
    The dispatcher, the treq sender and a real SQLite store, against a real receiver.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.store = SQLiteStore(os.path.join(self.mktemp(), SQLITE_FILE_NAME), reactor)
        yield self.store.start()
        self.addCleanup(self.store.stop)

    @inlineCallbacks
    def queue(self, count: int = 1) -> Any:
        """C{count} conversations, each with a nurse's message for the away customer."""
        now = micros(reactor.seconds())
        for _ in range(count):
            conversation = Conversation(new_id(), now, CUSTOMER, "c1")
            yield self.store.create_conversation(conversation)
            message = Message(new_id(), conversation.id, now, NURSE, "Nurse", "employee", "hi")
            yield self.store.add_message(
                message, None, notice=OfflineNotice(frozenset(), now, False)
            )

    def dispatcher(self, receiver: Receiver, port: int | None = None) -> WebhookDispatcher:
        if port is None:
            port = listen(self, receiver)
        client, pool = make_http_client(reactor)
        sender = TreqSender(client, f"http://127.0.0.1:{port}/hook", reactor, 5.0, pool=pool)
        dispatcher = WebhookDispatcher(
            self.store, sender, reactor, KEY, owner=new_id(), timeout=5.0,
            poll_interval=0.05, delays=(0.3, 0.3, 0.3), sample=lambda: 0.5,
        )
        dispatcher.start()
        self.addCleanup(dispatcher.stop)
        return dispatcher

    @inlineCallbacks
    def test_delivered_once_verified(self) -> Any:
        """Each of several events arrives once, signed; the outbox is then empty."""
        receiver = Receiver(KEY)
        yield self.queue(3)
        self.dispatcher(receiver)
        yield receiver.received(3)
        yield sleep(0.3)
        self.assertEqual(receiver.bad_signatures, 0)
        self.assertEqual(sorted(receiver.delivered().values()), [1, 1, 1])
        self.assertEqual(len(receiver.requests), 3)
        self.assertEqual({e["data"]["recipientUserId"] for _, e, _ in receiver.requests},
                         {CUSTOMER})
        left = yield self.store.claim_webhooks("x", 2**62, 2**62, 10)
        self.assertEqual(list(left), [])

    @inlineCallbacks
    def test_500_then_success(self) -> Any:
        """A 500 is retried with the same id, then delivered once."""
        receiver = Receiver(KEY, [(500, {})])
        yield self.queue()
        self.dispatcher(receiver)
        yield receiver.received(2)
        (first, _, status1), (second, _, status2) = receiver.requests
        self.assertEqual((first, status1, status2), (second, 500, 204))
        self.assertEqual(receiver.delivered(), Counter({first: 1}))

    @inlineCallbacks
    def test_410_stops(self) -> Any:
        """After a 410 nothing more is sent, though more is queued."""
        receiver = Receiver(KEY, [(410, {})])
        yield self.queue()
        dispatcher = self.dispatcher(receiver)
        yield receiver.received(1)
        yield self.queue(2)
        yield sleep(1.0)
        self.assertTrue(dispatcher.disabled)
        self.assertEqual([status for _, _, status in receiver.requests], [410])

    @inlineCallbacks
    def test_429_retry_after(self) -> Any:
        """429 with Retry-After: 1 holds every send back for a second."""
        receiver = Receiver(KEY, [(429, {"Retry-After": "1"})])
        yield self.queue()
        self.dispatcher(receiver)
        yield receiver.received(1)
        started = time.monotonic()
        yield self.queue()
        yield receiver.received(3)
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertEqual(sorted(receiver.delivered().values()), [1, 1])

    @inlineCallbacks
    def test_receiver_down_then_up(self) -> Any:
        """Refused connections are retried; once the receiver listens, it gets the event."""
        port = _free_port()
        receiver = Receiver(KEY)
        self.dispatcher(receiver, port)
        yield self.queue()
        yield sleep(0.5)
        listen(self, receiver, port)
        yield receiver.received(1)
        self.assertEqual(sum(receiver.delivered().values()), 1)


class ServerTests(LiveServerMixin, TestCase):
    """
    A whole server with webhooks on: a nurse's answer to an away customer is notified.
    """

    def server_args(self) -> Any:
        self.receiver = Receiver(KEY)
        port = listen(self, self.receiver)
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write(SECRET)
        return ["--webhook-url", f"http://127.0.0.1:{port}/hook",
                "--webhook-secret-file", secret, "--webhook-coalesce", "0"]

    @inlineCallbacks
    def test_answer_notified(self) -> Any:
        """The event names the conversation, the message and the customer, not the text."""
        customer = self.token(CUSTOMER, "c1", "customer")
        nurse = self.token(NURSE, "Nurse", "employee")
        code, conversation = yield self.http("POST", "/v1/conversation", customer)
        code, message = yield self.http("POST", f"/v1/conversation/{conversation['id']}/message",
                                        nurse, {"message": "your results are fine"})
        self.assertEqual(code, 201)
        yield self.receiver.received(1)
        [(_, event, status)] = self.receiver.requests
        self.assertEqual(event["type"], "message.created")
        self.assertEqual(event["data"], {
            "conversationId": conversation["id"], "messageId": message["id"],
            "recipientUserId": CUSTOMER, "recipientRole": "customer",
        })
        self.assertEqual(event["timestamp"], message["created"])
        self.assertNotIn("results", json.dumps(event))


class PostgreSQLServerTests(ServerTests):
    """
    The same on PostgreSQL, where the outbox is shared by every process.
    """

    @inlineCallbacks
    def server_args(self) -> Any:
        url = yield create_test_database(self)
        return [*ServerTests.server_args(self), "--database", url]


class RestartTests(TestCase):
    """
    C{twistd -n medichat} killed between the commit and the delivery: the event arrives
    after the restart.
    """

    timeout = 120

    def start(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*_command("twistd -n", self.workdir), "--data-dir", self.data_dir,
             "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--webhook-url", f"http://127.0.0.1:{self.hook_port}/hook",
             "--webhook-secret-file", self.secret, "--webhook-coalesce", "3"],
            cwd=self.workdir, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True,
        )
        self.addCleanup(self.kill, process)
        return process

    def kill(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(TIMEOUT)

    def ready(self, process: subprocess.Popen[str]) -> None:
        """Block until the server answers /readyz."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/readyz",
                                            timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("medichat did not start") from None
                time.sleep(0.1)

    @inlineCallbacks
    def test_killed_before_delivery(self) -> Any:
        """The message commits, the process dies at once; the restarted one delivers it."""
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.data_dir = os.path.join(self.workdir, "data")
        self.secret = os.path.join(self.workdir, "webhook-secret")
        with open(self.secret, "w") as f:
            f.write(SECRET + "\n")
        self.port = _free_port()
        self.hook_port = _free_port()  # the receiver is down at first

        first = self.start()
        yield in_thread(self.ready, first)
        key = load_or_create_dev_secret(self.data_dir)
        customer = jwt.encode({"sub": CUSTOMER, "name": "c1", "role": "customer"}, key,
                              algorithm="HS256")
        nurse = jwt.encode({"sub": NURSE, "name": "Nurse", "role": "employee"}, key,
                           algorithm="HS256")
        base = f"http://127.0.0.1:{self.port}/api/v1/conversation"
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.post(base, headers={"Authorization": f"Bearer {customer}"},
                                   pool=pool)
        conversation = yield response.json()
        response = yield treq.post(
            f"{base}/{conversation['id']}/message", json={"message": "hello"},
            headers={"Authorization": f"Bearer {nurse}"}, pool=pool,
        )
        self.assertEqual(response.code, 201)
        message = yield response.json()
        # Committed; due in 3 s (the coalescing window): killed before it could leave.
        yield in_thread(self.kill, first)

        receiver = Receiver(KEY)
        listen(self, receiver, self.hook_port)
        second = self.start()
        yield in_thread(self.ready, second)
        yield receiver.received(1)
        yield sleep(1.0)
        [(webhook_id, event, status)] = receiver.requests
        self.assertEqual(receiver.bad_signatures, 0)
        self.assertEqual(status, 204)
        self.assertEqual(event["data"]["messageId"], message["id"])
        self.assertEqual(event["data"]["recipientUserId"], CUSTOMER)
