"""
Tests for the access log over HTTP: the rows every employee route leaves (with the client's
address, behind trusted proxies the forwarded one), none for customers, and
C{GET /v1/me/access-log}.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from treq.testing import StubTreq
from twisted.web.resource import Resource

from medichat.http.origins import OriginPolicy
from medichat.http.rest import RestAPI
from medichat.http.site import build_root
from medichat.model import AccessEntry
from tests.http.test_rest import CUSTOMER_ID, DASHBOARD, APITestCase

SECRET_TEXT = "my blood pressure is 180/110"


class AccessLogAPITestCase(APITestCase):
    """The API, and the access log as the store holds it."""

    async def log(self) -> list[AccessEntry]:
        return list(await self.store.access_log(descending=False, limit=1000))

    async def actions(self) -> list[tuple[str, str | None]]:
        return [(e.action, e.conversation_id) for e in await self.log()]


class EmployeeRouteTests(AccessLogAPITestCase):
    """
    Every employee route that touches conversation data leaves its row.
    """

    async def test_every_route(self) -> None:
        """list, view, message, read and received each leave one row with who and where."""
        conversation_id = await self.create()
        cookie = await self.login(headers={"Origin": DASHBOARD})
        headers = {"Origin": DASHBOARD}
        base = f"/api/v1/conversation/{conversation_id}"
        calls = [
            ("GET", "/api/v1/conversation", None),
            ("GET", base, None),
            ("GET", base + "/", None),
            ("POST", base + "/message", {"message": SECRET_TEXT}),
            ("POST", base + "/read", None),
            ("POST", base + "/received", None),
        ]
        for method, path, body in calls:
            kwargs: dict[str, Any] = {"cookie": cookie, "headers": headers}
            if body is not None:
                kwargs["json_body"] = body
            reply = await self.request(method, path, **kwargs)
            self.assertLess(reply.status, 300, (path, reply.body))
        rows = await self.log()
        self.assertEqual(
            [(e.action, e.conversation_id) for e in rows],
            [
                ("list", conversation_id),
                ("view", conversation_id),
                ("view", conversation_id),
                ("message", conversation_id),
                ("read", conversation_id),
                ("received", conversation_id),
            ],
        )
        for row in rows:
            self.assertEqual(
                (row.employee_id, row.employee_name, row.role, row.customer_id),
                (self.employee.id, "Nurse Joy", "employee", CUSTOMER_ID),
            )
            self.assertEqual(row.address, "127.0.0.1")
            self.assertNotIn(SECRET_TEXT, repr(row))

    async def test_bearer_employee(self) -> None:
        """An employee with a bearer token is recorded as well."""
        conversation_id = await self.create()
        nurse = self.token("nurse-7", "Nurse Seven", role="employee")
        reply = await self.request("GET", f"/api/v1/conversation/{conversation_id}", token=nurse)
        self.assertEqual(reply.status, 200)
        [row] = await self.log()
        self.assertEqual((row.employee_id, row.employee_name, row.action),
                         ("nurse-7", "Nurse Seven", "view"))

    async def test_refused_access_leaves_no_row(self) -> None:
        """An unknown conversation is refused with 404 and recorded nowhere."""
        nurse = self.token("nurse-7", "Nurse Seven", role="employee")
        await self.problem(404, "GET", "/api/v1/conversation/not-an-id", token=nurse)
        self.assertEqual(await self.log(), [])

    async def test_customers_leave_no_rows(self) -> None:
        """A customer's own requests on their own data are not recorded."""
        conversation_id = await self.create()
        base = f"/api/v1/conversation/{conversation_id}"
        await self.request("GET", "/api/v1/conversation", token=self.customer)
        await self.request("GET", base, token=self.customer)
        await self.request("POST", base + "/message", token=self.customer,
                           json_body={"message": "Hello"})
        await self.request("POST", base + "/read", token=self.customer)
        await self.request("POST", base + "/received", token=self.customer)
        self.assertEqual(await self.log(), [])


class TrustedProxyTests(AccessLogAPITestCase):
    """
    Behind a trusted proxy, the row holds the address it forwarded, as login limits use.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.api = RestAPI(
            conversations=self.service,
            portal=self.portal,
            accounts=self.accounts,
            origins=OriginPolicy([DASHBOARD]),
            store=self.store,
            clock=self.clock,
            trusted_proxies=(ip_network("127.0.0.0/8"),),
        )
        self.treq = StubTreq(build_root("/api", self.api.resource(), Resource()))

    async def test_forwarded(self) -> None:
        """X-Forwarded-For and Forwarded from the trusted proxy name the client."""
        conversation_id = await self.create()
        nurse = self.token("nurse-7", "Nurse Seven", role="employee")
        path = f"/api/v1/conversation/{conversation_id}"
        await self.request("GET", path, token=nurse,
                           headers={"X-Forwarded-For": "203.0.113.9, 10.9.9.9"})
        await self.request("GET", path, token=nurse,
                           headers={"Forwarded": 'for="[2001:db8::5]:4711"'})
        self.assertEqual([e.address for e in await self.log()], ["10.9.9.9", "2001:db8::5"])


class CustomerViewTests(AccessLogAPITestCase):
    """
    C{GET /v1/me/access-log}: the customer's own log, paged, newest first.
    """

    async def test_view_and_paging(self) -> None:
        """The customer sees time, employee name, action and conversation, page by page."""
        conversation_id = await self.create()
        theirs = await self.create(self.other)
        nurse = self.token("nurse-7", "Nurse Seven", role="employee")
        for path in (conversation_id, theirs, conversation_id, conversation_id):
            self.clock.advance(1)
            await self.request("GET", f"/api/v1/conversation/{path}", token=nurse)
        reply = await self.request("GET", "/api/v1/me/access-log?limit=2", token=self.customer)
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.header("Content-Type"), "application/json")
        page = reply.json
        self.assertEqual(list(page), ["accesses", "next"])
        self.assertEqual(
            page["accesses"],
            [
                {"time": "2021-07-26T12:05:26Z", "employeeName": "Nurse Seven",
                 "action": "view", "conversationId": conversation_id},
                {"time": "2021-07-26T12:05:25Z", "employeeName": "Nurse Seven",
                 "action": "view", "conversationId": conversation_id},
            ],
        )
        reply = await self.request(
            "GET", f"/api/v1/me/access-log?limit=2&cursor={page['next']}", token=self.customer
        )
        self.assertEqual(
            [(a["time"], a["conversationId"]) for a in reply.json["accesses"]],
            [("2021-07-26T12:05:23Z", conversation_id)],
        )
        self.assertIsNone(reply.json["next"])
        other = await self.request("GET", "/api/v1/me/access-log", token=self.other)
        self.assertEqual([a["conversationId"] for a in other.json["accesses"]], [theirs])
        # Employees' ids and addresses stay with the privacy officer.
        self.assertNotIn("127.0.0.1", reply.body.decode())
        self.assertNotIn("nurse-7", reply.body.decode())

    async def test_empty(self) -> None:
        """A customer nobody accessed sees an empty page."""
        reply = await self.request("GET", "/api/v1/me/access-log", token=self.customer)
        self.assertEqual(reply.json, {"accesses": [], "next": None})

    async def test_employees_refused(self) -> None:
        """Employees, by cookie or bearer token, get 403 problem+json."""
        cookie = await self.login()
        detail = await self.problem(403, "GET", "/api/v1/me/access-log", cookie=cookie)
        self.assertIn("customers", detail)
        nurse = self.token("nurse-7", "Nurse Seven", role="employee")
        await self.problem(403, "GET", "/api/v1/me/access-log", token=nurse)

    async def test_bad_input(self) -> None:
        """A bad limit or cursor is 400 saying which; no credentials is 401."""
        for query, word in (("limit=0", "limit"), ("limit=1001", "limit"),
                            ("limit=x", "limit"), ("cursor=!", "cursor"),
                            ("cursor=MTIz", "cursor"), ("limit=1&limit=2", "limit")):
            detail = await self.problem(
                400, "GET", f"/api/v1/me/access-log?{query}", token=self.customer
            )
            self.assertIn(word, detail)
        await self.problem(401, "GET", "/api/v1/me/access-log")
        await self.problem(405, "POST", "/api/v1/me/access-log", token=self.customer)
