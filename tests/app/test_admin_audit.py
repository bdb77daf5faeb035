"""
Tests for the privacy officer's commands of L{medichat.app.admin}: C{audit},
C{export-customer} and C{erase-customer}, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from twisted.internet import reactor

from medichat.model import AccessEntry, Conversation, Message, format_time, new_id, parse_time
from medichat.store import open_store
from tests._pg import create_test_database
from tests.app.test_admin import AdminTestCase

T0 = parse_time("2026-01-10T09:00:00Z")
ALICE = "alice-sub"
BOB = "bob-sub"
SECRET_TEXT = "my blood pressure is 180/110"


def an_access(
    conversation: Conversation, action: str, at: int, employee_id: str = "nurse-1"
) -> AccessEntry:
    return AccessEntry(at, employee_id, f"Nurse {employee_id}", "employee", action,
                       conversation.id, conversation.customer_id, "192.0.2.7")


class PrivacyCommandTests(AdminTestCase):
    """
    audit, export-customer and erase-customer on the embedded SQLite store.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        await self.populate()

    async def populate(self) -> None:
        """Two customers' conversations, messages, receipts and accesses."""
        store = open_store(self.database, self.data_dir, reactor)
        await store.start()
        try:
            self.alice = Conversation(new_id(), T0, ALICE, "Alice")
            self.alice2 = Conversation(new_id(), T0 + 1, ALICE, "Alice")
            self.bob = Conversation(new_id(), T0 + 2, BOB, "Bob")
            for conversation in (self.alice, self.alice2, self.bob):
                await store.create_conversation(conversation)
            message = Message(new_id(), self.alice.id, T0 + 10, "nurse-1", "Nurse nurse-1",
                              "employee", SECRET_TEXT)
            await store.add_message(message, "key",
                                    an_access(self.alice, "message", T0 + 10))
            await store.mark_read(self.alice.id, ALICE, T0 + 11)
            await store.record_access([
                an_access(self.alice, "view", T0 + 20),
                an_access(self.bob, "view", T0 + 30, "nurse-2"),
                an_access(self.alice2, "list", T0 + 40, "nurse-2"),
            ])
        finally:
            await store.stop()

    async def audit(self, *args: str) -> list[dict[str, Any]]:
        self.assertEqual(await self.admin("audit", *args), 0, self.stderr.getvalue())
        rows: list[dict[str, Any]] = json.loads(self.stdout.getvalue())
        return rows

    async def test_audit_json(self) -> None:
        """Every row, oldest first, with every field; never message text."""
        rows = await self.audit()
        self.assertEqual(
            rows[0],
            {
                "time": format_time(T0 + 10),
                "employeeId": "nurse-1",
                "employeeName": "Nurse nurse-1",
                "role": "employee",
                "action": "message",
                "conversationId": self.alice.id,
                "customerId": ALICE,
                "address": "192.0.2.7",
            },
        )
        self.assertEqual([r["action"] for r in rows], ["message", "view", "view", "list"])
        self.assertNotIn(SECRET_TEXT, self.stdout.getvalue())

    async def test_audit_filters(self) -> None:
        """Customer, employee, conversation, since and until filter, together too."""
        self.assertEqual([r["action"] for r in await self.audit("--customer", ALICE)],
                         ["message", "view", "list"])
        self.assertEqual([r["customerId"] for r in await self.audit("--employee", "nurse-2")],
                         [BOB, ALICE])
        self.assertEqual(len(await self.audit("--conversation", self.alice2.id)), 1)
        since = format_time(T0 + 20)
        until = format_time(T0 + 40)
        self.assertEqual([r["time"] for r in await self.audit("--since", since, "--until", until)],
                         [format_time(T0 + 20), format_time(T0 + 30)])
        self.assertEqual(
            await self.audit("--customer", ALICE, "--employee", "nurse-2", "--since", since),
            [r for r in await self.audit("--conversation", self.alice2.id)],
        )
        self.assertEqual(await self.audit("--customer", "nobody"), [])

    async def test_audit_csv(self) -> None:
        """csv: a header line, then one line per row, empty for a missing value."""
        self.assertEqual(await self.admin("audit", "--format", "csv", "--customer", BOB), 0)
        lines = list(csv.reader(io.StringIO(self.stdout.getvalue())))
        self.assertEqual(lines, [
            ["time", "employeeId", "employeeName", "role", "action", "conversationId",
             "customerId", "address"],
            [format_time(T0 + 30), "nurse-2", "Nurse nurse-2", "employee", "view", self.bob.id,
             BOB, "192.0.2.7"],
        ])

    async def test_audit_usage(self) -> None:
        """A bad time or format is a usage error (2), in one line plus the hint."""
        self.assertEqual(await self.admin("audit", "--since", "yesterday"), 2)
        self.assertIn("--since needs an RFC 3339 time", self.stderr.getvalue())
        self.assertEqual(await self.admin("audit", "--format", "xml"), 2)
        self.assertIn("--format must be json or csv", self.stderr.getvalue())

    async def test_export(self) -> None:
        """export-customer prints every conversation with messages and receipts, and logs it."""
        self.assertEqual(await self.admin("export-customer", ALICE), 0, self.stderr.getvalue())
        document = json.loads(self.stdout.getvalue())
        self.assertEqual(document["customerId"], ALICE)
        conversations = document["conversations"]
        self.assertEqual([c["id"] for c in conversations], [self.alice.id, self.alice2.id])
        self.assertEqual([m["message"] for m in conversations[0]["messages"]], [SECRET_TEXT])
        self.assertEqual(conversations[0]["read"],
                         [{"userId": ALICE, "readAt": format_time(T0 + 11)}])
        exports = [r for r in await self.audit("--customer", ALICE) if r["action"] == "export"]
        self.assertEqual([r["conversationId"] for r in exports], [self.alice.id, self.alice2.id])
        self.assertEqual({r["role"] for r in exports}, {"operator"})
        self.assertTrue(all(r["employeeId"].startswith("operator:") for r in exports))

    async def test_unknown_customer(self) -> None:
        """Both commands refuse an unknown id: exit 1, one line."""
        for command in (("export-customer", "nobody"), ("erase-customer", "nobody", "--confirm")):
            self.assertEqual(await self.admin(*command), 1)
            self.assertEqual(
                self.stderr.getvalue(),
                "medichat-admin: no customer 'nobody': no conversation has that customer id\n",
            )
            self.assertEqual(self.stdout.getvalue(), "")

    async def test_erase(self) -> None:
        """erase-customer removes the customer's data, keeps the log and adds to it."""
        before = await self.audit()
        self.assertEqual(await self.admin("erase-customer", ALICE, "--confirm"), 0,
                         self.stderr.getvalue())
        self.assertIn(f"erased customer {ALICE}: 2 conversations", self.stdout.getvalue())
        after = await self.audit()
        self.assertEqual([r for r in after if r["action"] != "erase"], before)
        erasures = [r for r in after if r["action"] == "erase"]
        self.assertEqual([r["conversationId"] for r in erasures], [self.alice.id, self.alice2.id])
        self.assertEqual(await self.admin("export-customer", ALICE), 1)
        self.assertEqual(await self.admin("export-customer", BOB), 0)
        store = open_store(self.database, self.data_dir, reactor)
        await store.start()
        try:
            self.assertIsNone(await store.get_conversation(self.alice.id))
            self.assertEqual(await store.receipts(self.alice.id), ([], []))
            self.assertEqual(list(await store.list_messages(self.alice.id, None, False, None)),
                             [])
            self.assertEqual(await store.get_conversation(self.bob.id), self.bob)
        finally:
            await store.stop()

    async def test_erase_needs_confirm(self) -> None:
        """Without --confirm nothing is erased: a usage error (2)."""
        self.assertEqual(await self.admin("erase-customer", ALICE), 2)
        self.assertIn("add --confirm", self.stderr.getvalue())
        self.assertEqual(await self.admin("export-customer", ALICE), 0)


class PostgreSQLPrivacyCommandTests(PrivacyCommandTests):
    """
    The same commands against PostgreSQL.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        AdminTestCase.setUp(self)
        self.database = await create_test_database(self)
        await self.populate()
