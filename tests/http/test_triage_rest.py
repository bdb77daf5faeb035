"""
Tests for the triage routes of L{medichat.http.rest}: resolve, reopen, claim, release
(employees only), and what the list adds (unread, lastMessage, order by last activity,
filters), as JSON and problem+json; each answer is checked against openapi.json.
"""

from __future__ import annotations

from typing import Any

from medichat.pubsub.topics import CONVERSATIONS_TOPIC
from tests.http.test_rest import (
    CUSTOMER_ID,
    DASHBOARD,
    APITestCase,
    Recorder,
)

UNKNOWN = "28ccd489-f588-4d35-99a9-1e74ec2475b2"
AT = "2021-07-26T12:05:22Z"
ACTIONS = ("resolve", "reopen", "claim", "release")


class TriageRouteTests(APITestCase):
    """
    C{POST /v1/conversation/{id}/resolve|reopen|claim|release}.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.nurse = self.token("nurse-2", "Olga", "employee")
        self.dashboard = Recorder("dashboard")
        self.hub.subscribe(CONVERSATIONS_TOPIC, self.dashboard)

    async def act(self, action: str, conversation_id: str, **kwargs: Any) -> Any:
        return await self.request(
            "POST", f"/api/v1/conversation/{conversation_id}/{action}", **kwargs
        )

    async def test_resolve_and_reopen(self) -> None:
        """Both answer 200 with the conversation summary, status changed."""
        conversation_id = await self.create()
        reply = await self.act("resolve", conversation_id, token=self.nurse)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(
            reply.json,
            {
                "id": conversation_id,
                "created": AT,
                "customerId": CUSTOMER_ID,
                "customerName": "c1",
                "status": "resolved",
                "assigneeId": None,
                "assigneeName": None,
                "lastActivity": AT,
            },
        )
        reply = await self.act("reopen", conversation_id, token=self.nurse)
        self.assertEqual((reply.status, reply.json["status"]), (200, "open"))
        self.assertEqual(
            [next(iter(e)) for e in self.dashboard.events],
            ["conversationCreated", "conversationUpdated", "conversationUpdated"],
        )

    async def test_claim_with_cookie(self) -> None:
        """An employee logged in with the session cookie claims from the dashboard."""
        conversation_id = await self.create()
        cookie = await self.login(headers={"Origin": DASHBOARD})
        reply = await self.act(
            "claim", conversation_id, cookie=cookie, headers={"Origin": DASHBOARD}
        )
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(
            (reply.json["assigneeId"], reply.json["assigneeName"]),
            (self.employee.id, "Nurse Joy"),
        )
        detail = await self.problem(
            403, "POST", f"/api/v1/conversation/{conversation_id}/release", cookie=cookie,
            headers={"Origin": "https://evil.example"},
        )
        self.assertIn("origin", detail)

    async def test_claim_conflict(self) -> None:
        """A second employee's claim is 409 naming the assignee, also as members."""
        conversation_id = await self.create()
        reply = await self.act("claim", conversation_id, token=self.nurse)
        self.assertEqual(reply.status, 200)
        again = await self.act("claim", conversation_id, token=self.nurse)
        self.assertEqual(again.status, 200)
        other = self.token("nurse-3", "Petra", "employee")
        reply = await self.act("claim", conversation_id, token=other)
        self.assertEqual(reply.status, 409)
        self.assertEqual(
            reply.json,
            {
                "type": "https://medichat.invalid/problems/conflict",
                "title": "Conflict",
                "status": 409,
                "detail": "conversation is assigned to Olga (nurse-2)",
                "assigneeId": "nurse-2",
                "assigneeName": "Olga",
            },
        )
        detail = await self.problem(
            409, "POST", f"/api/v1/conversation/{conversation_id}/release", token=other
        )
        self.assertEqual(detail, "conversation is assigned to Olga (nurse-2); only they can "
                                 "release it")
        reply = await self.act("release", conversation_id, token=self.nurse)
        self.assertEqual((reply.status, reply.json["assigneeId"]), (200, None))
        detail = await self.problem(
            409, "POST", f"/api/v1/conversation/{conversation_id}/release", token=self.nurse
        )
        self.assertEqual(detail, "conversation is not assigned to anyone")

    async def test_customers_forbidden(self) -> None:
        """Every triage route is 403 for customers, their own conversation included."""
        conversation_id = await self.create()
        for action in ACTIONS:
            for token in (self.customer, self.other):
                detail = await self.problem(
                    403, "POST", f"/api/v1/conversation/{conversation_id}/{action}", token=token
                )
                self.assertEqual(detail, "only employees triage conversations")

    async def test_unknown_and_unauthenticated(self) -> None:
        """Unknown or malformed ids are 404, no credentials 401, GET 405, bad bodies 400."""
        conversation_id = await self.create()
        for action in ACTIONS:
            for cid in (UNKNOWN, "nope"):
                detail = await self.problem(
                    404, "POST", f"/api/v1/conversation/{cid}/{action}", token=self.nurse
                )
                self.assertIn(detail, ("no such conversation", "no such path"))
            await self.problem(401, "POST", f"/api/v1/conversation/{conversation_id}/{action}")
            await self.problem(
                405, "GET", f"/api/v1/conversation/{conversation_id}/{action}", token=self.nurse
            )
            detail = await self.problem(
                400, "POST", f"/api/v1/conversation/{conversation_id}/{action}",
                token=self.nurse, body=b"{nope", headers={"Content-Type": "application/json"},
            )
            self.assertTrue(detail.startswith("body: malformed JSON"), detail)
        # Nothing above changed the conversation.
        reply = await self.request("GET", "/api/v1/conversation", token=self.nurse)
        [listed] = reply.json["conversations"]
        self.assertEqual((listed["status"], listed["assigneeId"]), ("open", None))


class ListTests(APITestCase):
    """
    What C{GET /v1/conversation} adds for triage.
    """

    async def test_unread_last_message_and_order(self) -> None:
        """unread per caller, lastMessage as the message object, -lastActivity first."""
        nurse = self.token("nurse-2", "Olga", "employee")
        first = await self.create()
        self.clock.advance(1)
        second = await self.create()
        self.clock.advance(1)
        for text in ("one", "two"):
            reply = await self.request(
                "POST", f"/api/v1/conversation/{first}/message", token=self.customer,
                json_body={"message": text},
            )
            self.assertEqual(reply.status, 201)
        last = reply.json
        reply = await self.request(
            "GET", "/api/v1/conversation?order=-lastActivity", token=nurse
        )
        self.assertEqual(reply.status, 200, reply.body)
        listed = reply.json["conversations"]
        self.assertEqual([c["id"] for c in listed], [first, second])
        self.assertEqual((listed[0]["unread"], listed[0]["lastMessage"]), (2, last))
        self.assertEqual((listed[1]["unread"], listed[1]["lastMessage"]), (0, None))
        self.assertEqual(listed[0]["lastActivity"], last["created"])
        mine = await self.request("GET", "/api/v1/conversation", token=self.customer)
        self.assertEqual([c["unread"] for c in mine.json["conversations"]], [0, 0])

    async def test_filters_and_paging(self) -> None:
        """assigneeId==me and status filters; pages by last activity chain with next."""
        nurse = self.token("nurse-2", "Olga", "employee")
        made = []
        for _ in range(3):
            self.clock.advance(1)
            made.append(await self.create())
        await self.request("POST", f"/api/v1/conversation/{made[0]}/claim", token=nurse)
        await self.request("POST", f"/api/v1/conversation/{made[2]}/resolve", token=nurse)
        reply = await self.request(
            "GET", "/api/v1/conversation?query=assigneeId==me", token=nurse
        )
        self.assertEqual([c["id"] for c in reply.json["conversations"]], [made[0]])
        reply = await self.request(
            "GET", "/api/v1/conversation?query=status==open;assigneeId==none", token=nurse
        )
        self.assertEqual([c["id"] for c in reply.json["conversations"]], [made[1]])
        seen: list[str] = []
        path = "/api/v1/conversation?order=-lastActivity&limit=2"
        while True:
            page = (await self.request("GET", path, token=nurse)).json
            seen.extend(c["id"] for c in page["conversations"])
            if page["next"] is None:
                break
            path = f"/api/v1/conversation?order=-lastActivity&limit=2&cursor={page['next']}"
        self.assertEqual(seen, made[::-1])

    async def test_bad_list_parameters(self) -> None:
        """A bad status, order or a cursor of the other order is 400, saying which."""
        await self.create()
        await self.create()
        page = (await self.request("GET", "/api/v1/conversation?limit=1", token=self.customer)
                ).json
        for query, expected in [
            ("query=status==closed",
             "query: at position 0: bad value for status: must be one of open, resolved"),
            ("order=lastactivity", "order: must be one of 'created', '-created', "
             "'lastActivity', '-lastActivity'"),
            (f"order=-lastActivity&cursor={page['next']}",
             "cursor: from a list in another order; start again without it"),
        ]:
            detail = await self.problem(
                400, "GET", f"/api/v1/conversation?{query}", token=self.customer
            )
            self.assertEqual(detail, expected)
