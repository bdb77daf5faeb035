"""
Tests for what the REST edge answers about the store on both stores: values that one store
could not hold (a NUL) are refused before they reach it, and a store that fails answers
503 with C{Retry-After}, logged once per outage.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import argon2
import jwt
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.realm import build_portal
from medichat.domain.accounts import Accounts
from medichat.domain.conversations import ConversationService
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root
from medichat.pubsub.hub import InProcessHub
from medichat.store import open_store
from medichat.store.scripts import SQLStore
from tests._pg import create_test_database
from tests.http.test_rest import Reply, _settle

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
        self.api = RestAPI(
            conversations=ConversationService(self.store, InProcessHub(), self.clock),
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
