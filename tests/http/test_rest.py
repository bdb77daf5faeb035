"""
Tests for L{medichat.http.rest}: the REST API over L{treq.testing.StubTreq}, mounted under
C{/api} as the server mounts it, on the real SQL store (run inline by
L{medichat.testing.MemoryStore}), the real hub and the real cred portal (JWT and
session-cookie checkers) and employee accounts, on a L{Clock}: nothing waits for the
reactor, a thread or the passing of time.
"""

from __future__ import annotations

import importlib.resources
import json
from io import BytesIO
from typing import Any

import argon2
import jwt
from attrs import frozen
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from zope.interface import implementer

from medichat._ratelimit import TokenBuckets
from medichat._readiness import Readiness
from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.realm import build_portal
from medichat.domain.accounts import Accounts, run_here
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.errors import PayloadTooLarge, StoreError, StoreUnavailable
from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI, query_params
from medichat.http.site import build_root
from medichat.interfaces import ISubscriber
from medichat.model import Conversation, micros
from medichat.pubsub.hub import InProcessHub, Publication
from medichat.pubsub.topics import conversation_topic
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests._inline import InlineTestCase

SECRET = b"k" * 32
NOW = 1627301122.0  # 2021-07-26T12:05:22Z
CUSTOMER_ID = "0be8c544-9518-4bce-8519-0eee0356989f"
OTHER_ID = "6f1c0f7e-32a4-4b0e-9a59-6a3f3c1f0a11"
SEED_CONVERSATION = "28ccd489-f588-4d35-99a9-1e74ec2475b2"
SEED_URL = (
    "/api/v1/conversation/28ccd489-f588-4d35-99a9-1e74ec2475b2/"
    "?order=created&query=created=le=2021-07-15T11:44:52Z;created=ge=2021-07-14T13:56:35Z"
)
EMAIL = "nurse@example.org"
PASSWORD = "correct horse battery"
DASHBOARD = "https://dashboard.example"
HOST = "medichat.test"

OPENAPI = json.loads(
    importlib.resources.files("medichat.http").joinpath("openapi.json").read_text("utf-8")
)
_URL_MAP = RestAPI.router.url_map

LIST_ORDERS = "order: must be one of 'created', '-created', 'lastActivity', '-lastActivity'"


def documented(method: str, path: str, status: int) -> bool:
    """
    C{True} if the OpenAPI document lists C{status} for what answered C{method path}.
    """
    path_info = path.partition("?")[0]
    if not path_info.startswith("/api/"):
        return status == 404
    adapter = _URL_MAP.bind(HOST, "/api")
    try:
        rule, _ = adapter.match(path_info[len("/api") :], method, return_rule=True)
    except RouteNotFound:
        return status == 404 and "NotFound" in OPENAPI["components"]["responses"]
    except MethodNotAllowed:
        template = _template_for(adapter, path_info[len("/api") :])
        if method == "OPTIONS":
            return str(status) in OPENAPI["paths"][template]["options"]["responses"]
        return status == 405 and "405" in OPENAPI["paths"][template]["x-other-methods"]
    template = _openapi_path(rule.rule)
    operation = OPENAPI["paths"][template]["get" if method == "HEAD" else method.lower()]
    return str(status) in operation["responses"]


def _template_for(adapter: Any, path_info: str) -> str:
    for rule in _URL_MAP.iter_rules():
        for method in rule.methods or ():
            try:
                matched, _ = adapter.match(path_info, method, return_rule=True)
            except Exception:
                continue
            return _openapi_path(matched.rule)
    raise AssertionError(f"no rule for {path_info}")


def _openapi_path(rule: str) -> str:
    return rule.replace("<conversation_id>", "{id}")


@frozen
class Reply:
    """One response, read whole."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else values[-1]

    def headers_named(self, name: str) -> list[str]:
        return list(self.headers.getRawHeaders(name) or [])

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@implementer(ISubscriber)
class Recorder:
    """A subscriber keeping each event's JSON text."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.bodies: list[str] = []

    def deliver(self, publication: Publication) -> None:
        self.bodies.append(publication.body.decode("utf-8"))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.bodies]


async def _settle(treq: StubTreq, d: Deferred[Any]) -> Any:
    """
    Deliver what the in-memory connection holds; C{d} must then have its result, since
    the store answers before it returns.
    """
    treq.flush()
    if not d.called:
        d.addErrback(lambda _: None)
        d.cancel()
        raise AssertionError("no response once everything was delivered: something waits")
    return await d


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_NO_BODY = object()


class APITestCase(InlineTestCase):
    """
    The API at C{http://medichat.test/api/}, with a customer's and another customer's
    bearer tokens, and an employee account.
    """

    secure_cookies = False
    with_accounts = True

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore(self.clock)
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.hub = InProcessHub()
        jwt_checker = JWTChecker(secret=SECRET, clock=self.clock)
        cookie_checker = SessionCookieChecker(3600, store=self.store, clock=self.clock)
        self.portal = build_portal([jwt_checker, cookie_checker])
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.accounts = Accounts(
            self.store, self.clock, session_ttl=3600, hasher=hasher, run_blocking=run_here
        )
        self.employee = await self.accounts.add_employee(EMAIL, "Nurse Joy", PASSWORD)
        # Presence publishes on a hub of its own: these tests record conversation events.
        self.presence = InProcessPresence(InProcessHub())
        self.service = ConversationService(
            self.store, self.hub, self.clock, self.presence,
            started_feed(self.store, self.hub, self.clock),
        )
        self.api = RestAPI(
            conversations=self.service,
            portal=self.portal,
            accounts=self.accounts if self.with_accounts else None,
            origins=OriginPolicy([DASHBOARD]),
            store=self.store,
            clock=self.clock,
            secure_cookies=self.secure_cookies,
        )
        self.treq: Any = StubTreq(build_root("/api", self.api.resource(), Resource()))
        self.customer = self.token(CUSTOMER_ID, "c1")
        self.other = self.token(OTHER_ID, "c2")

    def token(self, sub: str, name: str, role: str = "customer", **claims: Any) -> str:
        payload = {"sub": sub, "name": name, "role": role, "exp": NOW + 3600, **claims}
        return jwt.encode(payload, SECRET, algorithm="HS256")

    async def settle(self, d: Deferred[Any]) -> Any:
        """Deliver what the in-memory connection holds; C{d} must then have fired."""
        return await _settle(self.treq, d)

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        cookie: str | None = None,
        json_body: object = _NO_BODY,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        scheme: str = "http",
    ) -> Reply:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            all_headers["Cookie"] = f"medichat_session={cookie}"
        if json_body is not _NO_BODY:
            body = json.dumps(json_body).encode("utf-8")
            all_headers.setdefault("Content-Type", "application/json")
        d = self.treq.request(method, f"{scheme}://{HOST}{path}", headers=all_headers, data=body)
        response = await self.settle(d)
        content = await self.settle(self.treq.content(response))
        reply = Reply(response.code, response.headers, content)
        self.assertTrue(
            documented(method, path, reply.status),
            f"{method} {path} answered {reply.status}, which openapi.json does not list",
        )
        if not path.startswith("/api"):
            return reply
        self.assertEqual(reply.header("Cache-Control"), "no-store")
        if reply.status >= 400 and method != "HEAD" and not path.startswith(
            ("/api/health", "/api/readyz")
        ):
            self.assertEqual(reply.header("Content-Type"), "application/problem+json")
            problem = reply.json
            # RFC 9457's members first; a 409 names the assignee after them.
            self.assertEqual(list(problem)[:4], ["type", "title", "status", "detail"])
            if reply.status != 409:
                self.assertEqual(len(problem), 4)
            self.assertEqual(problem["status"], reply.status)
            self.assertNotIn("Traceback", problem["detail"])
        return reply

    async def problem(self, status: int, method: str, path: str, **kwargs: Any) -> str:
        """Make a request that must fail with C{status}; return the problem's detail."""
        reply = await self.request(method, path, **kwargs)
        self.assertEqual(reply.status, status, reply.body)
        detail: str = reply.json["detail"]
        return detail

    async def create(self, token: str | None = None) -> str:
        reply = await self.request("POST", "/api/v1/conversation", token=token or self.customer)
        self.assertEqual(reply.status, 201, reply.body)
        conversation_id: str = reply.json["id"]
        return conversation_id

    async def login(self, **kwargs: Any) -> str:
        reply = await self.request(
            "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": PASSWORD}, **kwargs
        )
        self.assertEqual(reply.status, 200, reply.body)
        cookie = reply.header("Set-Cookie")
        assert cookie is not None
        return cookie.split(";")[0].partition("=")[2]

    def subscribe(self, conversation_id: str, user_id: str) -> Recorder:
        recorder = Recorder(user_id)
        self.hub.subscribe(conversation_topic(conversation_id), recorder)
        # As a STOMP session reports its subscription.
        session_key = f"session-{id(recorder)}"
        self.presence.session_opened(session_key, user_id, user_id == self.employee.id)
        self.presence.joined(session_key, conversation_id.lower())
        return recorder


class CustomerFlowTests(APITestCase):
    """
    The seed's customer flow, steps 2, 4, 5, 6 and 7, over HTTP.
    """

    async def test_step2_create(self) -> None:
        """POST /v1/conversation (no body) answers 201 with the new conversation."""
        reply = await self.request("POST", "/api/v1/conversation", token=self.customer)
        self.assertEqual(reply.status, 201)
        self.assertEqual(reply.header("Content-Type"), "application/json")
        conversation_id = reply.json["id"]
        self.assertEqual(
            reply.body.decode(),
            compact(
                {
                    "id": conversation_id,
                    "created": "2021-07-26T12:05:22Z",
                    "customerId": CUSTOMER_ID,
                    "customerName": "c1",
                    "status": "open",
                    "assigneeId": None,
                    "assigneeName": None,
                    "lastActivity": "2021-07-26T12:05:22Z",
                    "messages": [],
                    "read": [],
                    "received": [],
                }
            ),
        )
        self.assertEqual(reply.header("Location"), f"/api/v1/conversation/{conversation_id}")

    async def test_step2_create_empty_object(self) -> None:
        """POST /v1/conversation with {} works too."""
        reply = await self.request(
            "POST", "/api/v1/conversation", token=self.customer, json_body={}
        )
        self.assertEqual(reply.status, 201)

    async def test_step4_message(self) -> None:
        """POST .../message answers 201 with the message and publishes the seed's event."""
        conversation_id = await self.create()
        recorder = self.subscribe(conversation_id, CUSTOMER_ID)
        reply = await self.request(
            "POST",
            f"/api/v1/conversation/{conversation_id}/message",
            token=self.customer,
            json_body={"message": "Hello"},
        )
        self.assertEqual(reply.status, 201)
        message = {
            "userId": CUSTOMER_ID,
            "userName": "c1",
            "userRole": "customer",
            "id": reply.json["id"],
            "created": "2021-07-26T12:05:22Z",
            "message": "Hello",
        }
        self.assertEqual(reply.body.decode(), compact(message))
        self.assertEqual(recorder.bodies, [compact({"message": message})])

    async def test_step5_read(self) -> None:
        """POST .../read answers 204 and publishes the read event."""
        conversation_id = await self.create()
        recorder = self.subscribe(conversation_id, CUSTOMER_ID)
        self.clock.advance(72.713856)
        reply = await self.request(
            "POST", f"/api/v1/conversation/{conversation_id}/read", token=self.customer
        )
        self.assertEqual((reply.status, reply.body), (204, b""))
        self.assertEqual(
            recorder.bodies,
            [compact({"read": {"userId": CUSTOMER_ID, "readAt": "2021-07-26T12:06:34.713856Z"}})],
        )

    async def test_step6_received(self) -> None:
        """POST .../received answers 204 and publishes the received event."""
        conversation_id = await self.create()
        recorder = self.subscribe(conversation_id, CUSTOMER_ID)
        self.clock.advance(0.935376)
        reply = await self.request(
            "POST", f"/api/v1/conversation/{conversation_id}/received", token=self.customer
        )
        self.assertEqual(reply.status, 204)
        self.assertEqual(
            recorder.bodies,
            [
                compact(
                    {
                        "received": {
                            "userId": CUSTOMER_ID,
                            "receivedAt": "2021-07-26T12:05:22.935376Z",
                        }
                    }
                )
            ],
        )

    async def test_step6_get_marks_received(self) -> None:
        """GET of the conversation marks it received for the caller."""
        conversation_id = await self.create()
        recorder = self.subscribe(conversation_id, CUSTOMER_ID)
        reply = await self.request(
            "GET", f"/api/v1/conversation/{conversation_id}", token=self.customer
        )
        self.assertEqual(reply.status, 200)
        received = {"userId": CUSTOMER_ID, "receivedAt": "2021-07-26T12:05:22Z"}
        self.assertEqual(reply.json["received"], [received])
        self.assertEqual(recorder.bodies, [compact({"received": received})])

    async def seed_conversation(self) -> list[str]:
        """The seed's conversation id, with messages around the seed's query window."""
        await self.store.create_conversation(
            Conversation(SEED_CONVERSATION, micros(1626170000.0), CUSTOMER_ID, "c1")
        )
        ids = []
        for when, text in [
            (1626270994.0, "before"),  # 2021-07-14T13:56:34Z
            (1626270995.0, "first"),  # 2021-07-14T13:56:35Z, on the lower bound
            (1626300000.0, "middle"),
            (1626349492.0, "last"),  # 2021-07-15T11:44:52Z, on the upper bound
            (1626349493.0, "after"),
        ]:
            self.clock.rightNow = when
            reply = await self.request(
                "POST",
                f"/api/v1/conversation/{SEED_CONVERSATION}/message",
                token=self.customer,
                json_body={"message": text},
            )
            self.assertEqual(reply.status, 201, reply.body)
            ids.append(reply.json["id"])
        self.clock.rightNow = NOW
        return ids

    async def test_step7_seed_url(self) -> None:
        """The seed's URL, unencoded = and ; and trailing slash, returns the window."""
        ids = await self.seed_conversation()
        reply = await self.request("GET", SEED_URL, token=self.customer)
        self.assertEqual(reply.status, 200, reply.body)
        result = reply.json
        self.assertEqual(
            list(result),
            [
                "id", "created", "customerId", "customerName", "status", "assigneeId",
                "assigneeName", "lastActivity", "messages", "read", "received",
            ],
        )
        self.assertEqual(result["id"], SEED_CONVERSATION)
        self.assertEqual([m["message"] for m in result["messages"]], ["first", "middle", "last"])
        self.assertEqual([m["id"] for m in result["messages"]], ids[1:4])
        self.assertEqual(
            result["messages"][0],
            {
                "userId": CUSTOMER_ID,
                "userName": "c1",
                "userRole": "customer",
                "id": ids[1],
                "created": "2021-07-14T13:56:35Z",
                "message": "first",
            },
        )

    async def test_step7_without_query(self) -> None:
        """Without query parameters every message comes back, oldest first."""
        await self.seed_conversation()
        reply = await self.request(
            "GET", f"/api/v1/conversation/{SEED_CONVERSATION}/", token=self.customer
        )
        self.assertEqual(
            [m["message"] for m in reply.json["messages"]],
            ["before", "first", "middle", "last", "after"],
        )

    async def test_step7_newest_first_with_limit(self) -> None:
        """order=-created&limit=2 gives the two newest, newest first."""
        await self.seed_conversation()
        reply = await self.request(
            "GET",
            f"/api/v1/conversation/{SEED_CONVERSATION}?order=-created&limit=2",
            token=self.customer,
        )
        self.assertEqual([m["message"] for m in reply.json["messages"]], ["after", "last"])

    async def test_step7_recovery_query(self) -> None:
        """A created=ge= query with the last cached time returns that message and newer."""
        await self.seed_conversation()
        reply = await self.request(
            "GET",
            f"/api/v1/conversation/{SEED_CONVERSATION}/?query=created=ge=2021-07-15T11:44:52Z",
            token=self.customer,
        )
        self.assertEqual([m["message"] for m in reply.json["messages"]], ["last", "after"])

    async def test_encoded_query(self) -> None:
        """A percent-encoded query means the same, and + is a plus sign (a UTC offset)."""
        await self.seed_conversation()
        encoded = "created%3Dge%3D2021-07-15T13%3A44%3A52%2B02%3A00"
        for query in [encoded, "created=ge=2021-07-15T13:44:52+02:00"]:
            reply = await self.request(
                "GET",
                f"/api/v1/conversation/{SEED_CONVERSATION}/?query={query}",
                token=self.customer,
            )
            self.assertEqual([m["message"] for m in reply.json["messages"]], ["last", "after"])

    async def test_me(self) -> None:
        """GET /v1/me describes the caller."""
        reply = await self.request("GET", "/api/v1/me", token=self.customer)
        self.assertEqual(
            reply.body.decode(),
            compact({"userId": CUSTOMER_ID, "userName": "c1", "userRole": "customer"}),
        )

    async def test_list(self) -> None:
        """A customer lists their own conversations, paged with next cursors."""
        mine = []
        for _ in range(3):
            self.clock.advance(1)
            mine.append(await self.create())
        await self.create(self.other)
        reply = await self.request("GET", "/api/v1/conversation?limit=2", token=self.customer)
        self.assertEqual(reply.status, 200)
        page = reply.json
        self.assertEqual([c["id"] for c in page["conversations"]], mine[:2])
        self.assertEqual(
            list(page["conversations"][0]),
            [
                "id", "created", "customerId", "customerName", "status", "assigneeId",
                "assigneeName", "lastActivity", "unread", "lastMessage",
            ],
        )
        reply = await self.request(
            "GET", f"/api/v1/conversation?limit=2&cursor={page['next']}", token=self.customer
        )
        self.assertEqual(
            reply.json, {"conversations": [reply.json["conversations"][0]], "next": None}
        )
        self.assertEqual(reply.json["conversations"][0]["id"], mine[2])


class EmployeeFlowTests(APITestCase):
    """
    The seed's employee flow, steps 3, 5 and 6, with a session cookie.
    """

    async def test_flow(self) -> None:
        """An employee logs in, answers, marks read, and fetches with the seed's URL."""
        await CustomerFlowTests.seed_conversation(self)  # type: ignore[arg-type]
        cookie = await self.login()
        recorder = self.subscribe(SEED_CONVERSATION, CUSTOMER_ID)
        # Step 3: a message.
        reply = await self.request(
            "POST",
            f"/api/v1/conversation/{SEED_CONVERSATION}/message",
            cookie=cookie,
            json_body={"message": "How can I help?"},
        )
        self.assertEqual(reply.status, 201, reply.body)
        self.assertEqual(
            reply.json,
            {
                "userId": self.employee.id,
                "userName": "Nurse Joy",
                "userRole": "employee",
                "id": reply.json["id"],
                "created": "2021-07-26T12:05:22Z",
                "message": "How can I help?",
            },
        )
        # The subscribed customer had it marked received at once.
        self.assertEqual([next(iter(e)) for e in recorder.events], ["message", "received"])
        # Step 5: read.
        self.clock.advance(1)
        reply = await self.request(
            "POST", f"/api/v1/conversation/{SEED_CONVERSATION}/read", cookie=cookie
        )
        self.assertEqual(reply.status, 204)
        self.assertEqual(
            recorder.events[-1],
            {"read": {"userId": self.employee.id, "readAt": "2021-07-26T12:05:23Z"}},
        )
        # Step 6: fetch with the seed's URL.
        reply = await self.request("GET", SEED_URL, cookie=cookie)
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            [m["message"] for m in reply.json["messages"]], ["first", "middle", "last"]
        )
        self.assertEqual(
            reply.json["read"], [{"userId": self.employee.id, "readAt": "2021-07-26T12:05:23Z"}]
        )
        self.assertEqual(
            sorted(r["userId"] for r in reply.json["received"]),
            sorted([CUSTOMER_ID, self.employee.id]),
        )

    async def test_employee_reads_all(self) -> None:
        """An employee sees every customer's conversation, and lists them all."""
        first = await self.create()
        second = await self.create(self.other)
        cookie = await self.login()
        for conversation_id in (first, second):
            reply = await self.request(
                "GET", f"/api/v1/conversation/{conversation_id}", cookie=cookie
            )
            self.assertEqual(reply.status, 200)
        reply = await self.request("GET", "/api/v1/conversation", cookie=cookie)
        self.assertEqual({c["id"] for c in reply.json["conversations"]}, {first, second})

    async def test_employee_bearer(self) -> None:
        """An employee with a bearer token (role employee) is an employee too."""
        conversation_id = await self.create()
        nurse = self.token("e2", "Nurse Bob", "employee")
        reply = await self.request("GET", f"/api/v1/conversation/{conversation_id}", token=nurse)
        self.assertEqual(reply.status, 200)

    async def test_employee_cannot_create(self) -> None:
        """Employees do not open conversations: 403."""
        cookie = await self.login()
        detail = await self.problem(403, "POST", "/api/v1/conversation", cookie=cookie)
        self.assertEqual(detail, "only customers open conversations")

    async def test_me(self) -> None:
        """GET /v1/me with the cookie describes the employee."""
        cookie = await self.login()
        reply = await self.request("GET", "/api/v1/me", cookie=cookie)
        self.assertEqual(
            reply.json,
            {"userId": self.employee.id, "userName": "Nurse Joy", "userRole": "employee"},
        )


class LoginTests(APITestCase):
    """
    POST /v1/auth/login and /v1/auth/logout set and clear the session cookie.
    """

    async def test_cookie_attributes(self) -> None:
        """The cookie is HttpOnly, SameSite=Lax, scoped to the base path, not Secure on HTTP."""
        reply = await self.request(
            "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": PASSWORD}
        )
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            reply.json,
            {"userId": self.employee.id, "userName": "Nurse Joy", "userRole": "employee"},
        )
        (cookie,) = reply.headers_named("Set-Cookie")
        name_value, *attributes = cookie.split("; ")
        self.assertTrue(name_value.startswith("medichat_session="))
        self.assertGreater(len(name_value), len("medichat_session=") + 30)
        self.assertEqual(attributes, ["Path=/api", "HttpOnly", "SameSite=Lax"])

    async def test_secure_over_tls(self) -> None:
        """Over TLS the cookie is also Secure."""
        reply = await self.request(
            "POST",
            "/api/v1/auth/login",
            json_body={"email": EMAIL, "password": PASSWORD},
            scheme="https",
        )
        self.assertEqual(reply.status, 200)
        self.assertTrue(reply.header("Set-Cookie").endswith("; Secure"))  # type: ignore[union-attr]

    async def test_bad_password(self) -> None:
        """A wrong password is 401, and sets no cookie."""
        reply = await self.request(
            "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": "nope nope"}
        )
        self.assertEqual(reply.status, 401)
        self.assertEqual(reply.json["detail"], "invalid email or password")
        self.assertEqual(reply.headers_named("Set-Cookie"), [])

    async def test_bad_bodies(self) -> None:
        """Missing or mistyped fields are 400 naming the field; non-JSON is 415."""
        path = "/api/v1/auth/login"
        self.assertEqual(
            await self.problem(400, "POST", path, json_body={"password": PASSWORD}),
            "email: required",
        )
        self.assertEqual(
            await self.problem(400, "POST", path, json_body={"email": EMAIL, "password": 12345678}),
            "password: must be a string",
        )
        await self.problem(
            415,
            "POST",
            path,
            body=b"email=x&password=y",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(
            await self.problem(
                400, "POST", path, body=b"", headers={"Content-Type": "application/json"}
            ),
            "body: a JSON object is required",
        )

    async def test_foreign_origin(self) -> None:
        """A login from a page of a foreign origin is refused."""
        detail = await self.problem(
            403,
            "POST",
            "/api/v1/auth/login",
            json_body={"email": EMAIL, "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        self.assertEqual(detail, "origin https://evil.example is not allowed")

    async def test_logout(self) -> None:
        """Logout revokes the session and clears the cookie."""
        cookie = await self.login()
        reply = await self.request("POST", "/api/v1/auth/logout", cookie=cookie)
        self.assertEqual(reply.status, 204)
        (cleared,) = reply.headers_named("Set-Cookie")
        self.assertEqual(
            cleared,
            "medichat_session=; Path=/api; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; "
            "HttpOnly; SameSite=Lax",
        )
        detail = await self.problem(401, "GET", "/api/v1/me", cookie=cookie)
        self.assertEqual(detail, "session revoked")

    async def test_logout_without_session(self) -> None:
        """Logout without a cookie is harmless."""
        reply = await self.request("POST", "/api/v1/auth/logout")
        self.assertEqual(reply.status, 204)

    async def test_logout_foreign_origin(self) -> None:
        """A cross-site logout with the cookie is refused, and the session lives on."""
        cookie = await self.login()
        await self.problem(
            403,
            "POST",
            "/api/v1/auth/logout",
            cookie=cookie,
            headers={"Origin": "https://evil.example"},
        )
        reply = await self.request("GET", "/api/v1/me", cookie=cookie)
        self.assertEqual(reply.status, 200)


class SecureCookieTests(APITestCase):
    """
    With secure_cookies (behind a TLS-terminating proxy), the cookie is always Secure.
    """

    secure_cookies = True

    async def test_secure(self) -> None:
        """The cookie is Secure even over plain HTTP."""
        reply = await self.request(
            "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": PASSWORD}
        )
        self.assertEqual(
            reply.header("Set-Cookie").split("; ")[1:],  # type: ignore[union-attr]
            ["Path=/api", "HttpOnly", "SameSite=Lax", "Secure"],
        )


class NoAccountsTests(APITestCase):
    """
    Without employee accounts, login does not exist.
    """

    with_accounts = False

    async def test_login(self) -> None:
        """Login is 404 with a reason."""
        detail = await self.problem(
            404, "POST", "/api/v1/auth/login", json_body={"email": EMAIL, "password": PASSWORD}
        )
        self.assertEqual(detail, "employee login is not enabled on this server")


class AuthenticationTests(APITestCase):
    """
    Requests without valid credentials are 401 problems with WWW-Authenticate.
    """

    async def test_missing(self) -> None:
        """No credentials at all."""
        reply = await self.request("GET", "/api/v1/me")
        self.assertEqual((reply.status, reply.json["detail"]), (401, "missing credentials"))
        self.assertEqual(reply.header("WWW-Authenticate"), 'Bearer realm="medichat"')
        self.assertEqual(reply.json["type"], "https://medichat.invalid/problems/unauthorized")

    async def test_bad_tokens(self) -> None:
        """Expired, badly signed, alg:none, malformed and non-Bearer credentials are 401."""
        none_token = jwt.encode({"sub": CUSTOMER_ID}, None, algorithm="none")  # type: ignore[arg-type]
        cases = [
            ({"token": self.token(CUSTOMER_ID, "c1", exp=NOW - 1)}, "credential expired"),
            (
                {"token": jwt.encode({"sub": CUSTOMER_ID}, b"x" * 32, algorithm="HS256")},
                "bad signature",
            ),
            ({"token": none_token}, "unsupported algorithm"),
            ({"token": "not-a-jwt"}, "malformed token"),
            ({"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, "malformed token"),
            ({"cookie": "no-such-session"}, "invalid session"),
        ]
        for kwargs, reason in cases:
            detail = await self.problem(401, "GET", "/api/v1/me", **kwargs)  # type: ignore[arg-type]
            self.assertEqual(detail, reason)

    async def test_every_route_needs_credentials(self) -> None:
        """Each conversation route refuses anonymous callers."""
        conversation_id = await self.create()
        for method, path in [
            ("POST", "/api/v1/conversation"),
            ("GET", "/api/v1/conversation"),
            ("GET", f"/api/v1/conversation/{conversation_id}"),
            ("GET", f"/api/v1/conversation/{conversation_id}/"),
            ("POST", f"/api/v1/conversation/{conversation_id}/message"),
            ("POST", f"/api/v1/conversation/{conversation_id}/read"),
            ("POST", f"/api/v1/conversation/{conversation_id}/received"),
        ]:
            await self.problem(401, method, path)


class ErrorTests(APITestCase):
    """
    Bad input is a 4xx problem saying what is wrong; never a 500, never a traceback.
    """

    async def post_message(self, conversation_id: str, **kwargs: Any) -> Reply:
        return await self.request(
            "POST", f"/api/v1/conversation/{conversation_id}/message", token=self.customer, **kwargs
        )

    async def test_malformed_json(self) -> None:
        """Malformed JSON is 400 saying the line and column."""
        conversation_id = await self.create()
        reply = await self.post_message(
            conversation_id,
            body=b'{"message": "Hello",\n  oops}',
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(reply.status, 400)
        self.assertEqual(
            reply.json["detail"],
            "body: malformed JSON at line 2, column 3: "
            "Expecting property name enclosed in double quotes",
        )
        self.assertEqual(reply.json["type"], "https://medichat.invalid/problems/bad-request")
        self.assertEqual(reply.json["title"], "Bad Request")

    async def test_bodies(self) -> None:
        """Non-objects, wrong types, missing fields, NaN, duplicates, bad UTF-8: 400."""
        conversation_id = await self.create()
        cases: list[tuple[bytes, str]] = [
            (b'["Hello"]', "body: must be a JSON object"),
            (b'"Hello"', "body: must be a JSON object"),
            (b"{}", "message: required"),
            (b'{"message": 42}', "message: must be a string"),
            (b'{"message": null}', "message: must be a string"),
            (b'{"message": {"text": "x"}}', "message: must be a string"),
            (b'{"message": NaN}', "body: NaN is not JSON"),
            (b'{"message": "a", "message": "b"}', "body: duplicate key 'message'"),
            (b'{"message": "\xff"}', "body: not UTF-8 at byte 13"),
            ("\ufeff{\"message\": \"a\"}".encode(),
             "body: malformed JSON at line 1, column 1: Unexpected UTF-8 BOM"
             " (decode using utf-8-sig)"),
            (b'{"message": "\\ud800"}', "message: not valid Unicode (lone surrogate)"),
            (b'{"message": "a\\u0000b"}', "message: must not contain NUL characters"),
            (b"[" * 5000 + b"]" * 5000, "body: JSON nested too deeply"),
            (b'{"message": 1' + b"0" * 5000 + b"}", ""),
        ]
        for body, expected in cases:
            reply = await self.post_message(
                conversation_id, body=body, headers={"Content-Type": "application/json"}
            )
            self.assertEqual(reply.status, 400, body[:40])
            if expected:
                self.assertEqual(reply.json["detail"], expected)

    async def test_messages(self) -> None:
        """Empty, blank and 4,001-character messages are 400; 4,000 is fine."""
        conversation_id = await self.create()
        for text, detail in [
            ("", "message: must not be empty"),
            ("   \n\t ", "message: must not be blank"),
            ("x" * 4001, "message: longer than 4000 characters"),
        ]:
            reply = await self.post_message(conversation_id, json_body={"message": text})
            self.assertEqual((reply.status, reply.json["detail"]), (400, detail))
        reply = await self.post_message(conversation_id, json_body={"message": "x" * 4000})
        self.assertEqual(reply.status, 201)

    async def test_media_type(self) -> None:
        """A body that is not JSON is 415; application/*+json and charset=utf-8 are JSON."""
        conversation_id = await self.create()
        for content_type in [
            None,
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
            "application/jsonx",
        ]:
            headers = {} if content_type is None else {"Content-Type": content_type}
            reply = await self.post_message(
                conversation_id, body=b'{"message": "x"}', headers=headers
            )
            self.assertEqual(reply.status, 415, content_type)
        for content_type in [
            "application/json; charset=UTF-8",
            "application/merge-patch+json",
            "Application/JSON",
        ]:
            reply = await self.post_message(
                conversation_id, body=b'{"message": "x"}', headers={"Content-Type": content_type}
            )
            self.assertEqual(reply.status, 201, content_type)

    async def test_empty_bodies(self) -> None:
        """Create, read and received take an empty body of any type; a message does not."""
        conversation_id = await self.create()
        for path in [
            "/api/v1/conversation",
            f"/api/v1/conversation/{conversation_id}/read",
            f"/api/v1/conversation/{conversation_id}/received",
        ]:
            reply = await self.request(
                "POST", path, token=self.customer, body=b"", headers={"Content-Type": "text/plain"}
            )
            self.assertIn(reply.status, (201, 204))
            reply = await self.request(
                "POST", path, token=self.customer, body=b"x", headers={"Content-Type": "text/plain"}
            )
            self.assertEqual(reply.status, 415)
            reply = await self.request(
                "POST",
                path,
                token=self.customer,
                body=b"{",
                headers={"Content-Type": "application/json"},
            )
            self.assertEqual(reply.status, 400)
        await self.problem(
            415,
            "POST",
            f"/api/v1/conversation/{conversation_id}/message",
            token=self.customer,
            body=b"",
        )

    async def test_too_large(self) -> None:
        """A body over 64 KiB is 413, by Content-Length and by what actually arrived."""
        conversation_id = await self.create()
        big = json.dumps({"message": "x" * 70000}).encode()
        reply = await self.post_message(
            conversation_id, body=big, headers={"Content-Type": "application/json"}
        )
        self.assertEqual(
            (reply.status, reply.json["detail"]), (413, "the body may be at most 65536 bytes")
        )

    def test_too_large_without_length(self) -> None:
        """A body with no Content-Length (chunked) is measured as it is read."""
        request = DummyRequest([b"v1", b"conversation"])
        request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.content = BytesIO(b'{"message": "' + b"x" * 65536 + b'"}')  # type: ignore[attr-defined]
        error = self.assertRaises(PayloadTooLarge, self.api._json_body, request, allow_empty=False)
        self.assertEqual(error.detail, "the body may be at most 65536 bytes")
        request.content = BytesIO(b'{"message": "x"}')  # type: ignore[attr-defined]
        body = self.api._json_body(request, allow_empty=False)  # type: ignore[arg-type]
        self.assertEqual(body, {"message": "x"})

    async def test_unknown_and_malformed_ids(self) -> None:
        """Unknown and malformed conversation ids are 404 on every route."""
        for conversation_id in [SEED_CONVERSATION, "not-a-uuid", "1%3D1", "%27%20OR%201%3D1"]:
            for method, suffix, kwargs in [
                ("GET", "", {}),
                ("GET", "/", {}),
                ("POST", "/message", {"json_body": {"message": "Hi"}}),
                ("POST", "/read", {}),
                ("POST", "/received", {}),
            ]:
                detail = await self.problem(
                    404,
                    method,
                    f"/api/v1/conversation/{conversation_id}{suffix}",
                    token=self.customer,
                    **kwargs,
                )
                self.assertEqual(detail, "no such conversation")

    async def test_other_customers_conversation(self) -> None:
        """Another customer's conversation is 404, for reading and for writing."""
        conversation_id = await self.create()
        recorder = self.subscribe(conversation_id, CUSTOMER_ID)
        for method, suffix, kwargs in [
            ("GET", "", {}),
            ("GET", "/", {}),
            ("POST", "/message", {"json_body": {"message": "Hi"}}),
            ("POST", "/read", {}),
            ("POST", "/received", {}),
        ]:
            await self.problem(
                404,
                method,
                f"/api/v1/conversation/{conversation_id}{suffix}",
                token=self.other,
                **kwargs,
            )
        self.assertEqual(recorder.bodies, [])

    async def test_rsql_errors(self) -> None:
        """RSQL syntax errors, unknown fields and bad values are 400 saying where."""
        conversation_id = await self.create()
        base = f"/api/v1/conversation/{conversation_id}/?query="
        cases = [
            ("created=le=", "query: at position 11: expected value, found end of query"),
            ("created=xx=2021", "query: at position 7: unknown operator '=xx='"),
            (
                "(created=ge=2021-07-14T13:56:35Z",
                "query: at position 32: '(' at position 0 is never closed",
            ),
            (
                "1==1",
                "query: at position 0: unknown field '1'; allowed: created, userId, userRole, id",
            ),
            ("1=1", "query: at position 1: expected operator"),
            (
                "created=ge=now",
                "query: at position 0: bad value for created: not an RFC 3339 timestamp: 'now'",
            ),
            (
                "id==x%27%20OR%20%271%27=%271",
                "query: at position 5: expected ';', ',' or end of query, found \"'\"",
            ),
            ("id==x;--", "query: at position 8: expected operator, found end of query"),
            (
                "id==x;DROP%20TABLE%20messages",
                "query: at position 11: expected operator, found 'T'",
            ),
            ("x" * 2001, "query: at position 2000: query longer than 2000 characters"),
        ]
        for query, expected in cases:
            detail = await self.problem(400, "GET", base + query, token=self.customer)
            self.assertEqual(detail, expected)

    async def test_injection_values(self) -> None:
        """Quoted injection attempts are only values: they match nothing and harm nothing."""
        conversation_id = await self.create()
        await self.post_message(conversation_id, json_body={"message": "Hello"})
        for query in [
            "id==%22x'%20OR%20'1'='1%22",
            "userId=='x%22;%20DROP%20TABLE%20messages;%20--'",
            "userRole=in=('a','b/*','c')",
            "id==%22%25%22",
            "id=out=(%22%22)",
        ]:
            reply = await self.request(
                "GET", f"/api/v1/conversation/{conversation_id}?query={query}", token=self.customer
            )
            expected = ["Hello"] if "=out=" in query else []
            self.assertEqual(reply.status, 200, query)
            self.assertEqual([m["message"] for m in reply.json["messages"]], expected, query)
        reply = await self.request(
            "GET", f"/api/v1/conversation/{conversation_id}", token=self.customer
        )
        self.assertEqual([m["message"] for m in reply.json["messages"]], ["Hello"])

    async def test_list_parameters(self) -> None:
        """Bad order, limit, cursor and query on the list are 400."""
        cases = [
            ("order=newest", LIST_ORDERS),
            ("order=+created", LIST_ORDERS),
            ("limit=abc", "limit: must be an integer from 1 to 1000"),
            ("limit=0", "limit: must be an integer from 1 to 1000"),
            ("limit=-1", "limit: must be an integer from 1 to 1000"),
            ("limit=1001", "limit: must be an integer from 1 to 1000"),
            ("limit=99999999999999999999", "limit: must be an integer from 1 to 1000"),
            ("limit=1&limit=2", "limit: given more than once"),
            ("cursor=zzz", "cursor: malformed; use the 'next' value of the previous page"),
            (
                "query=userId==x",
                "query: at position 0: unknown field 'userId'; allowed: created, customerId,"
                " status, assigneeId, lastActivity",
            ),
            ("query=%FF", "query string: not UTF-8 once percent-decoded"),
        ]
        for query, expected in cases:
            detail = await self.problem(
                400, "GET", f"/api/v1/conversation?{query}", token=self.customer
            )
            self.assertEqual(detail, expected)

    async def test_conversation_parameters(self) -> None:
        """Bad order and limit on a conversation are 400."""
        conversation_id = await self.create()
        for query, expected in [
            ("order=id", "order: must be 'created' or '-created'"),
            ("limit=1.5", "limit: must be an integer from 1 to 1000"),
            ("query=a&query=b", "query: given more than once"),
        ]:
            detail = await self.problem(
                400, "GET", f"/api/v1/conversation/{conversation_id}?{query}", token=self.customer
            )
            self.assertEqual(detail, expected)

    async def test_method_not_allowed(self) -> None:
        """Wrong methods on known paths are 405 problems with Allow."""
        conversation_id = await self.create()
        for method, path, allow in [
            ("DELETE", "/api/v1/me", "GET, HEAD, OPTIONS"),
            ("PUT", "/api/v1/conversation", "GET, HEAD, OPTIONS, POST"),
            ("GET", f"/api/v1/conversation/{conversation_id}/message", "OPTIONS, POST"),
            ("POST", f"/api/v1/conversation/{conversation_id}", "GET, HEAD, OPTIONS"),
            ("GET", "/api/v1/auth/login", "OPTIONS, POST"),
            ("POST", "/api/health", "GET, HEAD, OPTIONS"),
        ]:
            reply = await self.request(method, path, token=self.customer)
            self.assertEqual(reply.status, 405)
            self.assertEqual(reply.header("Allow"), allow)
            self.assertEqual(
                reply.json["type"], "https://medichat.invalid/problems/method-not-allowed"
            )

    async def test_unknown_paths(self) -> None:
        """Unknown paths are 404 problems, under the base path and outside it."""
        for path in [
            "/api/v2/conversation",
            "/api/v1/conversation/x/y/z",
            "/api/",
            "/api",
            "/api/v1/%FF",
            "/elsewhere",
            "/api/v1/conversation//message",
            "/api/v1/conversations",
        ]:
            detail = await self.problem(404, "GET", path, token=self.customer)
            self.assertEqual(detail, "no such path")

    async def test_idempotency(self) -> None:
        """A retry with the same Idempotency-Key returns the first message; one is stored."""
        conversation_id = await self.create()
        recorder = self.subscribe(conversation_id, CUSTOMER_ID)
        replies = []
        for key in ["abc-123", '"abc-123"']:
            self.clock.advance(1)
            replies.append(
                await self.post_message(
                    conversation_id,
                    json_body={"message": "Hello"},
                    headers={"Idempotency-Key": key},
                )
            )
        self.assertEqual([r.status for r in replies], [201, 201])
        self.assertEqual(replies[0].body, replies[1].body)
        self.assertEqual(len(recorder.bodies), 1)
        reply = await self.post_message(
            conversation_id, json_body={"message": "Hello"}, headers={"Idempotency-Key": "other"}
        )
        self.assertNotEqual(reply.json["id"], replies[0].json["id"])
        reply = await self.request(
            "GET", f"/api/v1/conversation/{conversation_id}", token=self.customer
        )
        self.assertEqual(len(reply.json["messages"]), 2)

    async def test_bad_idempotency_keys(self) -> None:
        """Empty, over-long and non-ASCII keys are 400."""
        conversation_id = await self.create()
        for key in ["", "x" * 256, "\u00e9t\u00e9", '""']:
            reply = await self.post_message(
                conversation_id,
                json_body={"message": "Hi"},
                headers={"Idempotency-Key": key},
            )
            self.assertEqual(reply.status, 400, key)
            self.assertEqual(
                reply.json["detail"], "Idempotency-Key: must be 1 to 255 printable ASCII characters"
            )

    async def test_rate_limit(self) -> None:
        """The 21st message POST within 10 seconds is 429 with Retry-After; later it passes."""
        conversation_id = await self.create()
        for _ in range(20):
            reply = await self.post_message(conversation_id, json_body={"message": "spam"})
            self.assertEqual(reply.status, 201)
        reply = await self.post_message(conversation_id, json_body={"message": "spam"})
        self.assertEqual(reply.status, 429)
        self.assertEqual(reply.header("Retry-After"), "1")
        self.assertEqual(reply.json["type"], "https://medichat.invalid/problems/rate-limited")
        other = await self.create(self.other)
        reply = await self.request(
            "POST",
            f"/api/v1/conversation/{other}/message",
            token=self.other,
            json_body={"message": "not spam"},
        )
        self.assertEqual(reply.status, 201)
        self.clock.advance(0.5)
        reply = await self.post_message(conversation_id, json_body={"message": "later"})
        self.assertEqual(reply.status, 201)

    async def test_conversation_rate_limit(self) -> None:
        """The 11th conversation a user opens within a minute is 429; others are not held."""
        for _ in range(10):
            await self.create()
        reply = await self.request("POST", "/api/v1/conversation", token=self.customer)
        self.assertEqual(reply.status, 429)
        self.assertEqual(reply.header("Retry-After"), "6")
        self.assertEqual(reply.json["detail"], "at most 10 new conversations per 60 seconds")
        await self.create(self.other)
        self.clock.advance(6)
        await self.create()

    async def test_conversation_flood_refused_before_routing(self) -> None:
        """Over the limit, a known token's POST is refused before Klein, with the same 429."""
        for _ in range(10):
            await self.create()
        routed = self.api.router.resource()
        calls: list[object] = []
        self.patch(routed.__class__, "render", lambda _self, request: calls.append(request))
        early = await self.request("POST", "/api/v1/conversation", token=self.customer)
        self.assertEqual(calls, [])
        self.assertEqual(early.status, 429)
        self.assertEqual(early.header("Retry-After"), "6")
        self.assertEqual(early.json["detail"], "at most 10 new conversations per 60 seconds")
        self.assertEqual(early.header("Cache-Control"), "no-store")

    async def test_early_refusal_only_when_known_and_limited(self) -> None:
        """A new, an expired or an unlimited token, and other routes, go through routing."""
        self.assertIsNone(self.api.refuse_early(self._post_request(self.customer)))
        await self.create()
        self.assertIsNone(self.api.refuse_early(self._post_request(self.customer)))
        for _ in range(9):
            await self.create()
        self.assertIsNotNone(self.api.refuse_early(self._post_request(self.customer)))
        self.assertIsNone(self.api.refuse_early(self._post_request(self.customer, b"GET")))
        self.assertIsNone(self.api.refuse_early(
            self._post_request(self.customer, path=[b"v1", b"conversation", b"x", b"read"])
        ))
        self.clock.advance(3600)
        self.assertIsNone(self.api.refuse_early(self._post_request(self.customer)))

    def _post_request(
        self, token: str, method: bytes = b"POST", path: list[bytes] | None = None
    ) -> Any:
        request = DummyRequest(path or [b"v1", b"conversation"])
        request.method = method
        request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
        return request

    async def test_unexpected_failure(self) -> None:
        """An unexpected failure is a generic 500 problem; the traceback is only logged."""
        conversation_id = await self.create()
        await self.store.stop()
        reply = await self.request(
            "GET", f"/api/v1/conversation/{conversation_id}", token=self.customer
        )
        self.assertEqual(reply.status, 500)
        self.assertEqual(
            reply.json,
            {
                "type": "https://medichat.invalid/problems/internal-error",
                "title": "Internal Server Error",
                "status": 500,
                "detail": "the server failed to handle this request; it has been logged",
            },
        )
        self.assertTrue(self.flushLoggedErrors())


class OriginTests(APITestCase):
    """
    Cookie-authenticated changes need an allowed Origin; CORS answers allowed origins.
    """

    async def test_cookie_post_origins(self) -> None:
        """No Origin, our own origin and a listed one may post with the cookie; others not."""
        conversation_id = await self.create()
        cookie = await self.login()
        path = f"/api/v1/conversation/{conversation_id}/read"
        for origin in [None, "http://medichat.test", "http://MEDICHAT.test:80", DASHBOARD]:
            headers = {} if origin is None else {"Origin": origin}
            reply = await self.request("POST", path, cookie=cookie, headers=headers)
            self.assertEqual(reply.status, 204, origin)
        for origin in [
            "https://evil.example",
            "https://medichat.test",
            "http://medichat.test:8080",
            "null",
            "https://dashboard.example.evil",
        ]:
            detail = await self.problem(
                403, "POST", path, cookie=cookie, headers={"Origin": origin}
            )
            self.assertEqual(detail, f"origin {origin} is not allowed")

    async def test_cookie_get_any_origin(self) -> None:
        """Reading needs no Origin check (and gets no CORS headers for foreign origins)."""
        cookie = await self.login()
        reply = await self.request(
            "GET", "/api/v1/me", cookie=cookie, headers={"Origin": "https://evil.example"}
        )
        self.assertEqual(reply.status, 200)
        self.assertIsNone(reply.header("Access-Control-Allow-Origin"))
        self.assertEqual(reply.header("Vary"), "Origin")

    async def test_bearer_any_origin(self) -> None:
        """Bearer-authenticated changes are not subject to the Origin check."""
        conversation_id = await self.create()
        reply = await self.request(
            "POST",
            f"/api/v1/conversation/{conversation_id}/read",
            token=self.customer,
            headers={"Origin": "https://evil.example"},
        )
        self.assertEqual(reply.status, 204)

    async def test_cors_headers(self) -> None:
        """An allowed origin gets CORS headers with credentials, on successes and errors."""
        for path, status in [("/api/v1/me", 200), ("/api/v1/nothing", 404)]:
            reply = await self.request(
                "GET", path, token=self.customer, headers={"Origin": DASHBOARD}
            )
            self.assertEqual(reply.status, status)
            self.assertEqual(reply.header("Access-Control-Allow-Origin"), DASHBOARD)
            self.assertEqual(reply.header("Access-Control-Allow-Credentials"), "true")
            self.assertEqual(reply.header("Vary"), "Origin")

    async def test_preflight(self) -> None:
        """OPTIONS from an allowed origin answers the methods and headers allowed."""
        reply = await self.request(
            "OPTIONS",
            f"/api/v1/conversation/{SEED_CONVERSATION}/message",
            headers={
                "Origin": DASHBOARD,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        self.assertEqual(reply.status, 204)
        self.assertEqual(reply.header("Access-Control-Allow-Origin"), DASHBOARD)
        self.assertEqual(reply.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(reply.header("Access-Control-Allow-Methods"), "OPTIONS, POST")
        self.assertEqual(
            reply.header("Access-Control-Allow-Headers"),
            "Authorization, Content-Type, Idempotency-Key",
        )
        self.assertEqual(reply.header("Access-Control-Max-Age"), "600")

    async def test_preflight_refused(self) -> None:
        """OPTIONS from a foreign origin is 403 without CORS headers."""
        reply = await self.request(
            "OPTIONS",
            "/api/v1/conversation",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        self.assertEqual(reply.status, 403)
        self.assertIsNone(reply.header("Access-Control-Allow-Origin"))

    async def test_plain_options(self) -> None:
        """OPTIONS without Origin lists the methods; on an unknown path it is 404."""
        reply = await self.request("OPTIONS", "/api/v1/conversation")
        self.assertEqual((reply.status, reply.header("Allow")), (204, "GET, HEAD, OPTIONS, POST"))
        await self.problem(404, "OPTIONS", "/api/v1/nothing")


class OperationsTests(APITestCase):
    """
    /health and /v1/openapi.json.
    """

    async def test_health(self) -> None:
        """Health is ok while the store answers, 503 when it does not, logged once."""
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        reply = await self.request("GET", "/api/health")
        self.assertEqual((reply.status, reply.body), (200, b'{"status":"ok","store":"ok"}'))
        await self.store.stop()
        for _ in range(2):
            reply = await self.request("GET", "/api/health")
            self.assertEqual(reply.status, 503)
            self.assertEqual(reply.json, {"status": "unavailable", "store": "unreachable"})
        failing = [e for e in events if "health check failing" in e["log_format"]]
        self.assertEqual(len(failing), 1)
        self.assertIn("not running", failing[0]["reason"])
        self.assertEqual(self.flushLoggedErrors(StoreError), [])

    async def test_livez(self) -> None:
        """Liveness is 200 while the process answers: store down or draining alike."""
        reply = await self.request("GET", "/api/livez")
        self.assertEqual((reply.status, reply.json), (200, {"status": "ok"}))
        self.api.readiness = Readiness(draining=True)
        await self.store.stop()
        reply = await self.request("GET", "/api/livez")
        self.assertEqual((reply.status, reply.json), (200, {"status": "ok"}))

    async def test_readyz(self) -> None:
        """Ready while the store answers and writes; 503 unavailable when it does not."""
        reply = await self.request("GET", "/api/readyz")
        self.assertEqual(
            (reply.status, reply.json), (200, {"status": "ready", "store": "ok", "checks": {}})
        )
        await self.store.stop()
        reply = await self.request("GET", "/api/readyz")
        self.assertEqual(
            (reply.status, reply.json),
            (503, {"status": "unavailable", "store": "unreachable", "checks": {}}),
        )
        self.flushLoggedErrors(StoreError)

    async def test_readyz_draining(self) -> None:
        """A draining process is not ready, at once, without probing anything."""
        readiness = self.api.readiness = Readiness()
        probed: list[str] = []

        def check() -> Deferred[None]:
            probed.append("listen")
            return succeed(None)

        readiness.add_check("listen", check)
        reply = await self.request("GET", "/api/readyz")
        self.assertEqual(reply.json["checks"], {"listen": "ok"})
        readiness.draining = True
        reply = await self.request("GET", "/api/readyz")
        self.assertEqual((reply.status, reply.json), (503, {"status": "draining"}))
        self.assertEqual(probed, ["listen"])

    async def test_readyz_checks(self) -> None:
        """A registered check that fails (or never answers) makes the process unready."""
        readiness = self.api.readiness = Readiness()
        readiness.add_check("listen", lambda: fail(StoreUnavailable("LISTEN connection lost")))
        readiness.add_check("store-2", lambda: succeed(None))
        reply = await self.request("GET", "/api/readyz")
        self.assertEqual(reply.status, 503)
        self.assertEqual(
            reply.json,
            {"status": "unavailable", "store": "ok",
             "checks": {"listen": "failing", "store-2": "ok"}},
        )
        readiness.remove_check("listen")
        readiness.add_check("slow", Deferred)
        pending = self.treq.get("http://medichat.test/api/readyz")
        self.clock.advance(60)
        reply = await self.settle(pending)
        self.assertEqual(reply.code, 503)
        readiness.remove_check("slow")
        reply = await self.request("GET", "/api/readyz")
        self.assertEqual(reply.status, 200)

    async def test_head(self) -> None:
        """HEAD works where GET does."""
        reply = await self.request("HEAD", "/api/health")
        self.assertEqual((reply.status, reply.body), (200, b""))

    async def test_openapi_served(self) -> None:
        """The packaged OpenAPI document is served as JSON."""
        reply = await self.request("GET", "/api/v1/openapi.json")
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.json, OPENAPI)
        self.assertTrue(reply.json["openapi"].startswith("3."))


class MountTests(InlineTestCase):
    """
    The routes are relative to wherever the resource is mounted.
    """

    async def test_mounts(self) -> None:
        """Mounted under /api by putChild, under a deeper base, or at the root, it routes."""
        clock = Clock()
        store = MemoryStore(clock)
        await store.start()
        self.addCleanup(store.stop)
        api = RestAPI(
            conversations=ConversationService(
                store, InProcessHub(), clock, InProcessPresence(InProcessHub()),
                started_feed(store, InProcessHub(), clock),
            ),
            portal=build_portal([]),
            accounts=None,
            origins=OriginPolicy([]),
            store=store,
            clock=clock,
        )
        plain = Resource()
        plain.putChild(b"api", api.resource())
        for root, url in [
            (plain, "http://h/api/health"),
            (
                build_root("/chat/backend", api.resource(), Resource()),
                "http://h/chat/backend/health",
            ),
            (api.resource(), "http://h/health"),
        ]:
            treq: Any = StubTreq(root)
            response = await _settle(treq, treq.get(url))
            self.assertEqual(response.code, 200, url)


class DocumentTests(SynchronousTestCase):
    """
    openapi.json describes every route the router has, and nothing it lacks.
    """

    def test_every_route_documented(self) -> None:
        """
        Each rule and method of the router is an operation in the document, and back
        (besides the WebSocket endpoint, which is not the router's).
        """
        routed: set[tuple[str, str]] = set()
        for rule in RestAPI.router.url_map.iter_rules():
            for method in rule.methods or ():
                if method != "HEAD":
                    routed.add((_openapi_path(rule.rule), method.lower()))
            routed.add((_openapi_path(rule.rule), "options"))
        documented_ops = {
            (path, method)
            for path, item in OPENAPI["paths"].items()
            for method in item
            if method in ("get", "post", "put", "delete", "patch", "options", "head")
        }
        self.assertEqual(routed | {("/v1/chat", "get")}, documented_ops)

    def test_statuses_and_schemas(self) -> None:
        """Every operation lists 4xx/5xx as problem+json, and every $ref resolves."""
        refs: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    if key == "$ref":
                        refs.append(item)
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        walk(OPENAPI)
        for ref in refs:
            node: Any = OPENAPI
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]
        for name, response in OPENAPI["components"]["responses"].items():
            self.assertIn("application/problem+json", response["content"], name)
        for path, item in OPENAPI["paths"].items():
            # The WebSocket endpoint answers any other request with 426.
            other = "426" if path == "/v1/chat" else "405"
            self.assertIn(other, item["x-other-methods"], path)


class QueryStringTests(SynchronousTestCase):
    """
    query_params reads the raw query string faithfully.
    """

    def test_raw(self) -> None:
        """Only & separates pairs; = and ; stay in values; + stays a plus."""

        class FakeRequest:
            uri = (
                b"/api/v1/conversation/x/?order=created&query=created=le=2021-07-15T11:44:52Z;"
                b"created=ge=2021-07-14T13:56:35+02:00&&flag&e=%20%3D"
            )

        self.assertEqual(
            query_params(FakeRequest()),  # type: ignore[arg-type]
            {
                "order": ["created"],
                "query": ["created=le=2021-07-15T11:44:52Z;created=ge=2021-07-14T13:56:35+02:00"],
                "flag": [""],
                "e": [" ="],
            },
        )

    def test_parse_qs_agrees(self) -> None:
        """Python 3.11's parse_qs (request.args) splits on & only too, but turns + into a space."""
        from urllib.parse import parse_qs

        self.assertEqual(
            parse_qs("order=created&query=created=le=2021-07-15T11:44:52Z;created=ge=x+y"),
            {"order": ["created"], "query": ["created=le=2021-07-15T11:44:52Z;created=ge=x y"]},
        )


class TokenBucketTests(SynchronousTestCase):
    """
    TokenBuckets limit each key separately and in bounded memory.
    """

    def test_bucket(self) -> None:
        """A full bucket gives capacity tokens, then one per refill interval."""
        buckets = TokenBuckets(2, 10.0)
        self.assertIsNone(buckets.take("a", 0.0))
        self.assertIsNone(buckets.take("a", 0.0))
        self.assertEqual(buckets.take("a", 0.0), 5.0)
        self.assertIsNone(buckets.take("b", 0.0))
        self.assertIsNone(buckets.take("a", 5.0))

    def test_bounded(self) -> None:
        """Many keys do not grow the table without bound."""
        buckets = TokenBuckets(2, 10.0, max_keys=100)
        for i in range(1000):
            buckets.take(str(i), float(i))
        self.assertLessEqual(len(buckets._buckets), 101)


class OriginPolicyTests(SynchronousTestCase):
    """
    OriginPolicy allows no Origin, the server's own, and the listed ones.
    """

    def test_rules(self) -> None:
        """Each origin is judged against the request's scheme and Host."""
        policy = OriginPolicy(["https://Dashboard.example/", "http://localhost:3000", "null"])
        cases = [
            (None, "http", "api.example", True),
            ("https://dashboard.example", "http", "api.example", True),
            ("https://dashboard.example:443", "http", "api.example", True),
            ("http://dashboard.example", "http", "api.example", False),
            ("http://localhost:3000", "http", "api.example", True),
            ("http://localhost", "http", "api.example", False),
            ("null", "http", "api.example", True),
            ("https://api.example", "https", "api.example", True),
            ("https://api.example", "https", "API.example:443", True),
            ("https://api.example:8443", "https", "api.example:8443", True),
            ("https://api.example", "http", "api.example", False),
            ("http://api.example:8080", "http", "api.example", False),
            ("http://[::1]:8080", "http", "[::1]:8080", True),
            ("http://api.example", "ws", "api.example", True),
            ("https://api.example", "wss", "api.example", True),
            ("https://api.example", "https", None, False),
            ("https://api.example/path", "https", "api.example", False),
            ("garbage", "https", "api.example", False),
            ("https://evil.example", "https", "api.example", False),
        ]
        for origin, scheme, host, expected in cases:
            with self.subTest(origin=origin, scheme=scheme, host=host):
                self.assertEqual(
                    policy.is_allowed(origin, scheme=scheme, host_header=host), expected
                )

    def test_any(self) -> None:
        """* allows every origin, even null."""
        policy = OriginPolicy(["*"])
        for origin in ["https://evil.example", "null", "garbage"]:
            self.assertTrue(policy.is_allowed(origin, scheme="https", host_header="x"))
            self.assertTrue(policy.is_listed(origin))

    def test_nothing_listed(self) -> None:
        """With no list, only the server's own origin and no Origin pass."""
        policy = OriginPolicy([])
        self.assertTrue(policy.is_allowed(None, scheme="http", host_header="h"))
        self.assertTrue(policy.is_allowed("http://h", scheme="http", host_header="h:80"))
        self.assertFalse(policy.is_allowed("http://x", scheme="http", host_header="h"))


class ProblemTests(SynchronousTestCase):
    """
    Problems render domain errors faithfully and hide everything else.
    """

    def test_domain_error(self) -> None:
        """A DomainError keeps its status and detail; 429 gets a whole Retry-After."""
        from medichat.errors import RateLimited
        from medichat.http.problems import problem_for

        problem = problem_for(RateLimited("slow down", retry_after=0.2))
        self.assertEqual(
            problem.as_json(),
            {
                "type": "https://medichat.invalid/problems/rate-limited",
                "title": "Too Many Requests",
                "status": 429,
                "detail": "slow down",
            },
        )
        self.assertEqual(problem.headers, (("Retry-After", "1"),))
        self.assertEqual(
            problem_for(RateLimited("x", retry_after=2.5)).headers, (("Retry-After", "3"),)
        )

    def test_unexpected(self) -> None:
        """Anything else is a 500 that reveals nothing and is logged with its traceback."""
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher
        from twisted.python.failure import Failure

        from medichat.http.problems import render_failure

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        request = DummyRequest([b"x"])
        try:
            raise KeyError("secret table name")
        except KeyError:
            failure = Failure()
        body = json.loads(render_failure(request, failure))  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 500)
        self.assertNotIn("secret", json.dumps(body))
        self.assertEqual(body["status"], 500)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        (event,) = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(event["method"], "GET")
