"""
Tests for L{medichat.interfaces.IPresence}, written once as L{PresenceTestsMixin} so that
every implementation runs the same scenarios, and run here for
L{medichat.domain.presence.InProcessPresence}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from medichat.domain.presence import InProcessPresence
from medichat.interfaces import IHub, IPresence, ISubscriber
from medichat.pubsub.hub import InProcessHub, Publication
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC, conversation_topic

NURSE = "3d43c23b-c637-4a7a-a780-28c2c29f1194"
DOCTOR = "a9c7e1f2-58d4-4d6b-9a0e-7f3c2b1d4e5f"
CUSTOMER = "0be8c544-9518-4bce-8519-0eee0356989f"
CHAT = "6b92c178-c22b-4bbb-8dec-8d497660b5bf"
OTHER_CHAT = "28ccd489-f588-4d35-99a9-1e74ec2475b2"


@implementer(ISubscriber)
class Events:
    """
    Records what is published on some destinations, as C{(destination, event)} pairs.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def deliver(self, publication: Publication) -> None:
        self.seen.append((publication.destination, json.loads(publication.body)))

    def take(self) -> list[tuple[str, Any]]:
        """What arrived since the last call."""
        seen, self.seen = self.seen, []
        return seen


def connected(conversation_id: str, user_id: str) -> tuple[str, Any]:
    """The userConnected event as published."""
    return (conversation_topic(conversation_id), {"userConnected": {"userId": user_id}})


def disconnected(conversation_id: str, user_id: str) -> tuple[str, Any]:
    """The userDisconnected event as published."""
    return (conversation_topic(conversation_id), {"userDisconnected": {"userId": user_id}})


def online(count: int) -> tuple[str, Any]:
    """The online-employees event as published."""
    return (ONLINE_EMPLOYEES_TOPIC, {"online": count})


class PresenceTestsMixin:
    """
    Scenarios every L{IPresence} must pass.  A test case mixes this in with a trial
    L{TestCase} and provides L{presence_on}; one whose publications arrive later than the
    calls that cause them also overrides L{settled}.
    """

    def presence_on(self, hub: IHub) -> IPresence:
        """A fresh presence publishing through C{hub}."""
        raise NotImplementedError

    async def settled(self) -> None:
        """Wait until what the calls so far publish has been delivered."""

    async def setUp(self) -> None:
        self.hub = InProcessHub("presence-test")
        self.presence = self.presence_on(self.hub)
        self.events = Events()
        for destination in (
            ONLINE_EMPLOYEES_TOPIC,
            conversation_topic(CHAT),
            conversation_topic(OTHER_CHAT),
        ):
            self.hub.subscribe(destination, self.events)

    async def published(self) -> list[tuple[str, Any]]:
        await self.settled()
        return self.events.take()

    def test_interface(self) -> None:
        """The implementation provides IPresence."""
        test: Any = self
        test.assertTrue(verifyObject(IPresence, self.presence))

    async def test_online_count(self) -> None:
        """Distinct employees with an open session are counted; each change is published."""
        test: Any = self
        p = self.presence
        test.assertEqual(await p.online_employees(), 0)
        await p.session_opened("s1", NURSE, True)
        test.assertEqual(await self.published(), [online(1)])
        await p.session_opened("s2", NURSE, True)
        await p.session_opened("s3", CUSTOMER, False)
        test.assertEqual(await self.published(), [], "same nurse again, and a customer")
        test.assertEqual(await p.online_employees(), 1)
        await p.session_opened("s4", DOCTOR, True)
        test.assertEqual(await self.published(), [online(2)])
        test.assertEqual(await p.online_employees(), 2)
        await p.session_closed("s1")
        await p.session_closed("s3")
        test.assertEqual(await self.published(), [], "the nurse is still online elsewhere")
        await p.session_closed("s2")
        test.assertEqual(await self.published(), [online(1)])
        await p.session_closed("s4")
        test.assertEqual(await self.published(), [online(0)])
        test.assertEqual(await p.online_employees(), 0)

    async def test_first_and_last_subscription(self) -> None:
        """userConnected on a user's first subscription (any session), userDisconnected on last."""
        test: Any = self
        p = self.presence
        await p.session_opened("tab1", NURSE, True)
        await p.session_opened("tab2", NURSE, True)
        await self.published()
        await p.joined("tab1", CHAT)
        test.assertEqual(await self.published(), [connected(CHAT, NURSE)])
        await p.joined("tab1", CHAT)
        await p.joined("tab2", CHAT)
        test.assertEqual(await self.published(), [], "more subscriptions of the same user")
        await p.left("tab1", CHAT)
        await p.left("tab1", CHAT)
        test.assertEqual(await self.published(), [], "tab2 still subscribes")
        await p.left("tab2", CHAT)
        test.assertEqual(await self.published(), [disconnected(CHAT, NURSE)])
        await p.joined("tab2", CHAT)
        test.assertEqual(await self.published(), [connected(CHAT, NURSE)])

    async def test_close_leaves_conversations(self) -> None:
        """Closing a session leaves what it had joined, then updates the online count."""
        test: Any = self
        p = self.presence
        await p.session_opened("tab1", NURSE, True)
        await p.session_opened("phone", CUSTOMER, False)
        await p.joined("tab1", CHAT)
        await p.joined("tab1", CHAT)
        await p.joined("tab1", OTHER_CHAT)
        await p.joined("phone", CHAT)
        await self.published()
        await p.session_closed("tab1")
        test.assertEqual(
            await self.published(),
            [disconnected(CHAT, NURSE), disconnected(OTHER_CHAT, NURSE), online(0)],
        )
        test.assertEqual(await p.subscribed_users(CHAT), {CUSTOMER})
        test.assertEqual(await p.subscribed_users(OTHER_CHAT), frozenset())

    async def test_close_keeps_other_sessions(self) -> None:
        """A closing session does not end the user's presence held by another session."""
        test: Any = self
        p = self.presence
        await p.session_opened("tab1", NURSE, True)
        await p.session_opened("tab2", NURSE, True)
        await p.joined("tab1", CHAT)
        await p.joined("tab2", CHAT)
        await self.published()
        await p.session_closed("tab1")
        test.assertEqual(await self.published(), [])
        test.assertEqual(await p.subscribed_users(CHAT), {NURSE})

    async def test_subscribed_users(self) -> None:
        """The users subscribed to a conversation, each once, however many subscriptions."""
        test: Any = self
        p = self.presence
        await p.session_opened("tab1", NURSE, True)
        await p.session_opened("tab2", NURSE, True)
        await p.session_opened("phone", CUSTOMER, False)
        test.assertEqual(await p.subscribed_users(CHAT), frozenset())
        await p.joined("tab1", CHAT)
        await p.joined("tab2", CHAT)
        await p.joined("phone", CHAT)
        await p.joined("phone", OTHER_CHAT)
        test.assertEqual(await p.subscribed_users(CHAT), {NURSE, CUSTOMER})
        test.assertEqual(await p.subscribed_users(OTHER_CHAT), {CUSTOMER})
        await p.left("phone", CHAT)
        test.assertEqual(await p.subscribed_users(CHAT), {NURSE})

    async def test_unknown_ignored(self) -> None:
        """Unknown sessions and subscriptions, and joins of closed sessions, change nothing."""
        test: Any = self
        p = self.presence
        await p.left("nobody", CHAT)
        await p.session_closed("nobody")
        await p.session_opened("tab1", NURSE, True)
        await p.session_closed("tab1")
        await self.published()
        await p.joined("tab1", CHAT)
        await p.left("tab1", OTHER_CHAT)
        await p.session_closed("tab1")
        test.assertEqual(await self.published(), [])
        test.assertEqual(await p.subscribed_users(CHAT), frozenset())
        test.assertEqual(await p.online_employees(), 0)


class InProcessPresenceTests(PresenceTestsMixin, TestCase):
    """
    L{InProcessPresence} passes the presence scenarios.
    """

    def presence_on(self, hub: IHub) -> IPresence:
        return InProcessPresence(hub)

    def test_answers_at_once(self) -> None:
        """Every answer of the in-process presence has already fired."""
        p = self.presence
        self.assertIsNone(self.successResultOf(p.session_opened("tab1", NURSE, True)))
        self.assertIsNone(self.successResultOf(p.joined("tab1", CHAT)))
        self.assertEqual(self.successResultOf(p.subscribed_users(CHAT)), {NURSE})
        self.assertEqual(self.successResultOf(p.online_employees()), 1)
        self.assertIsNone(self.successResultOf(p.left("tab1", CHAT)))
        self.assertIsNone(self.successResultOf(p.session_closed("tab1")))
