"""
Integration tests of the REST edge with the real stores (SQLite in its thread, PostgreSQL
over its socket; so the real reactor runs them, beside the end-to-end tests): values that one store
could not hold (a NUL) are refused before they reach it, and a store that fails answers
503 with C{Retry-After}, logged once per outage.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import argon2
import jwt
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.realm import build_portal
from medichat.domain.accounts import Accounts
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.errors import StoreUnavailable
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root
from medichat.pubsub.hub import InProcessHub
from medichat.store import open_store
from medichat.store.scripts import SQLStore
from tests._feed import started_feed
from tests._pg import create_test_database
from tests.http.test_rest import Reply


async def _settle(treq: Any, d: Deferred[Any]) -> Any:
    """
    Pump the in-memory HTTP connection until C{d} has its result: the real stores answer
    from their own thread (SQLite) or socket (PostgreSQL), so the response is written some
    reactor turns later; hence these tests live with the end-to-end ones.
    """
    outcome: list[object] = []

    def done(result: object) -> object:
        outcome.append(result)
        return result

    d.addBoth(done)
    deadline = time.monotonic() + 10
    while not outcome:
        if time.monotonic() > deadline:
            d.cancel()
            break
        treq.flush()
        await deferLater(reactor, 0.001, lambda: None)
    return await d


SECRET = b"s" * 32
NOW = 1_700_000_000.0
EMAIL = "nurse@example.org"
PASSWORD = "correct horse battery"
CUSTOMER_ID = "0be8c544-9518-4bce-8519-0eee0356989f"


class _StoreAPI:
    """
    The REST API on a real store (SQLite or PostgreSQL), with an employee and a customer.
    """

    database: bool = False

    async def setUp(self) -> None:
        test: Any = self
        self.clock = Clock()
        self.clock.advance(NOW)
        url = await create_test_database(test) if self.database else None
        self.url = url
        self.store: SQLStore = open_store(url, test.mktemp(), reactor)  # type: ignore[assignment]
        await self.store.start()
        test.addCleanup(self.store.stop)
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.accounts = Accounts(self.store, self.clock, session_ttl=3600, hasher=hasher)
        await self.accounts.add_employee(EMAIL, "Nurse Joy", PASSWORD)
        portal = build_portal(
            [
                JWTChecker(secret=SECRET, clock=self.clock),
                SessionCookieChecker(3600, store=self.store, clock=self.clock),
            ]
        )
        hub = InProcessHub()
        self.api = RestAPI(
            conversations=ConversationService(
                self.store, hub, self.clock, InProcessPresence(hub),
                started_feed(self.store, hub, self.clock),
            ),
            portal=portal,
            accounts=self.accounts,
            origins=OriginPolicy([]),
            store=self.store,
            clock=self.clock,
        )
        self.treq: Any = StubTreq(build_root("/api", self.api.resource(), Resource()))
        claims = {"sub": CUSTOMER_ID, "name": "c1", "role": "customer", "exp": NOW + 3600}
        self.customer = jwt.encode(claims, SECRET, algorithm="HS256")

    async def request(
        self, method: str, path: str, *, json_body: object = None, token: str | None = None
    ) -> Reply:
        headers = {}
        body = None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        d = self.treq.request(method, f"http://medichat.test{path}", headers=headers, data=body)
        response = await _settle(self.treq, d)
        content = await _settle(self.treq, self.treq.content(response))
        return Reply(response.code, response.headers, content)


class NulMixin(_StoreAPI):
    """
    A NUL (which PostgreSQL's text cannot hold) is refused at the edge, on both stores.
    """

    async def test_nul_in_quoted_query_value(self) -> None:
        """A NUL in a quoted RSQL value, literal or escaped, is 400 naming the query."""
        for query in ('customerId=="a\x00b"', "customerId=='\\\x00'"):
            reply = await self.request(
                "GET", "/api/v1/conversation?query=" + quote(query), token=self.customer
            )
            self.assertEqual(reply.status, 400, reply.body)  # type: ignore[attr-defined]
            self.assertIn("query:", reply.json["detail"])  # type: ignore[attr-defined]
            self.assertIn("NUL", reply.json["detail"])  # type: ignore[attr-defined]

    async def test_nul_in_login_email(self) -> None:
        """A NUL in a login email is 400, not a store error."""
        for email in ("nurse\x00@example.org", EMAIL + "\x00"):
            reply = await self.request(
                "POST", "/api/v1/auth/login", json_body={"email": email, "password": PASSWORD}
            )
            self.assertEqual(reply.status, 400, reply.body)  # type: ignore[attr-defined]
            self.assertEqual(
                reply.json["detail"], "email: must not hold control characters"  # type: ignore[attr-defined]
            )


class SQLiteNulTests(NulMixin, TestCase):
    """NUL refusals on SQLite."""


class PostgreSQLNulTests(NulMixin, TestCase):
    """NUL refusals on PostgreSQL."""

    database = True


class OutageMixin(_StoreAPI):
    """
    A store that cannot write (read-only, as a full disk or a read-only mount would leave
    it) answers 503 with Retry-After, is logged once per outage, and fails /health.
    """

    async def set_read_only(self, read_only: bool) -> None:
        """Make every connection of the store refuse (or accept again) writes."""
        pool: Any = self.store._pool  # type: ignore[attr-defined]
        if self.database:
            setting = "on" if read_only else "off"
            for slot in pool.connections:
                await slot._connection.runOperation(
                    f"SET default_transaction_read_only = {setting}"
                )
        else:
            await pool.run(lambda cursor: cursor.execute(f"PRAGMA query_only = {int(read_only)}"))

    async def test_write_probe(self) -> None:
        """check_writable fails on a read-only store, and /health then answers 503."""
        await self.store.check_writable()
        reply = await self.request("GET", "/api/health")
        self.assertEqual((reply.status, reply.json), (200, {"status": "ok", "store": "ok"}))
        await self.set_read_only(True)
        await self.store.ping()
        await self.assertFailure(  # type: ignore[attr-defined]
            self.store.check_writable(), StoreUnavailable
        )
        reply = await self.request("GET", "/api/health")
        self.assertEqual(reply.status, 503)
        self.assertEqual(reply.json, {"status": "unavailable", "store": "cannot-write"})
        await self.set_read_only(False)
        reply = await self.request("GET", "/api/health")
        self.assertEqual(reply.status, 200)

    async def test_503_logged_once(self) -> None:
        """Requests during an outage get 503 + Retry-After; one log line for it, one after."""
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        await self.set_read_only(True)
        for _ in range(3):
            # Reads still work on a read-only store; they do not count as a recovery.
            reply = await self.request("GET", "/api/v1/conversation", token=self.customer)
            self.assertEqual(reply.status, 200, reply.body)
            reply = await self.request("POST", "/api/v1/conversation", token=self.customer)
            self.assertEqual(reply.status, 503, reply.body)
            self.assertEqual(reply.header("Retry-After"), "5")
            self.assertEqual(reply.header("Content-Type"), "application/problem+json")
            self.assertEqual(reply.json["title"], "Service Unavailable")
            self.assertNotIn("Traceback", reply.json["detail"])
        self.assertEqual(self.flushLoggedErrors(), [])  # type: ignore[attr-defined]
        self.assertEqual([e for e in events if "available again" in e["log_format"]], [])
        outages = [e for e in events if e.get("log_namespace", "").startswith("medichat")
                   and "unavailable" in e.get("log_format", "")]
        self.assertEqual(len(outages), 1, outages)
        self.assertEqual(outages[0]["log_level"], LogLevel.error)
        self.assertNotIn("log_failure", outages[0])
        await self.set_read_only(False)
        for _ in range(2):
            reply = await self.request("POST", "/api/v1/conversation", token=self.customer)
            self.assertEqual(reply.status, 201, reply.body)
        recoveries = [e for e in events if "available again" in e.get("log_format", "")]
        self.assertEqual(len(recoveries), 1, recoveries)


class SQLiteOutageTests(OutageMixin, TestCase):
    """Outages of the SQLite store."""


class PostgreSQLOutageTests(OutageMixin, TestCase):
    """Outages of the PostgreSQL store."""

    database = True
