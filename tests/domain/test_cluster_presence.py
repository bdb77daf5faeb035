"""
Tests for L{medichat.domain.cluster_presence}: the presence scenarios, and what only
presence shared by several nodes does (a second tab on another node, dead nodes, nodes
that leave or come back), on the in-memory SQLite store and on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import TestCase

from medichat.domain.cluster_presence import DEFAULT_NODE_TTL, ClusterPresence, NodeService
from medichat.errors import StoreUnavailable
from medichat.interfaces import IHub, IPresence, IStore
from medichat.pubsub.hub import InProcessHub
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC, conversation_topic
from medichat.store.postgres import PostgreSQLStore
from medichat.testing import MemoryStore, memory_database
from tests._inline import InlineTestCase
from tests._pg import create_test_database
from tests.domain.test_presence import (
    CHAT,
    CUSTOMER,
    DOCTOR,
    NURSE,
    OTHER_CHAT,
    Events,
    PresenceTestsMixin,
    connected,
    disconnected,
    online,
)


class _Stores:
    """
    Where the stores of the tests below come from: several stores (one per node) on one
    database.
    """

    async def new_database(self) -> Any:
        """Make a new, empty database; return what L{store_on} needs to reach it."""
        raise NotImplementedError

    def store_on(self, database: Any) -> IStore:
        """A new store, not started, on C{database}."""
        raise NotImplementedError

    async def started_store(self, database: Any) -> IStore:
        """A started store on C{database}, stopped after the test."""
        test: Any = self
        store = self.store_on(database)
        await store.start()
        test.addCleanup(store.stop)
        return store


class _MemoryStores(_Stores):
    async def new_database(self) -> Any:
        database = memory_database()
        test: Any = self
        test.addCleanup(database.close)
        return database

    def store_on(self, database: Any) -> IStore:
        return MemoryStore(Clock(), database=database)


class _PostgreSQLStores(_Stores):
    async def new_database(self) -> Any:
        test: Any = self
        return await create_test_database(test)

    def store_on(self, database: Any) -> IStore:
        return PostgreSQLStore(database, reactor)


class _ClusterPresenceScenarios(_Stores):
    """
    L{ClusterPresence} passes the presence scenarios, as the one node on a database.
    """

    async def setUp(self) -> None:
        self.database = await self.new_database()
        self.store = await self.started_store(self.database)
        await self.store.register_node("node-a", 0)
        await super().setUp()  # type: ignore[misc]

    def presence_on(self, hub: IHub) -> IPresence:
        return ClusterPresence(self.store, hub, "node-a")


class ClusterPresenceMemoryTests(_MemoryStores, _ClusterPresenceScenarios, PresenceTestsMixin,
                                 InlineTestCase):
    """
    L{ClusterPresence} passes the presence scenarios on the in-memory SQLite store.
    """


class ClusterPresencePostgreSQLTests(_PostgreSQLStores, _ClusterPresenceScenarios,
                                     PresenceTestsMixin, TestCase):
    """
    L{ClusterPresence} passes the presence scenarios on PostgreSQL.
    """


class _Node:
    """One process of the cluster, as far as presence goes: its store, presence and node."""

    def __init__(self, store: IStore, hub: InProcessHub, clock: Clock, name: str) -> None:
        self.store = store
        self.presence = ClusterPresence(store, hub, name)
        self.service = NodeService(store, self.presence, clock)


class _ClusterScenarios(_Stores):
    """
    Several nodes on one database, each with its own store, sharing one hub (as the hub
    that crosses processes will make them) and one clock.
    """

    async def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.hub = InProcessHub("cluster-test")
        self.events = Events()
        for destination in (
            ONLINE_EMPLOYEES_TOPIC,
            conversation_topic(CHAT),
            conversation_topic(OTHER_CHAT),
        ):
            self.hub.subscribe(destination, self.events)
        self.database = await self.new_database()

    async def node(self, name: str, running: bool = False) -> _Node:
        """
        A registered node; one not C{running} beats only when a test calls
        L{NodeService.beat}.
        """
        test: Any = self
        node = _Node(await self.started_store(self.database), self.hub, self.clock, name)
        if running:
            node.service.startService()
        await node.service.register()

        def stop() -> Deferred[None] | None:
            return node.service.stopService() if node.service.running else None

        test.addCleanup(stop)
        return node

    async def elapse(self, seconds: float, *alive: _Node) -> None:
        """Let C{seconds} pass, the C{alive} nodes beating every interval meanwhile."""
        while seconds > 0:
            step = min(seconds, min(node.service.interval for node in alive))
            self.clock.advance(step)
            seconds -= step
            await gatherResults([node.service.beat() for node in alive])

    async def test_second_tab_elsewhere(self) -> None:
        """A user's subscriptions on two nodes announce them once and remove them once."""
        test: Any = self
        a, b = await self.node("a"), await self.node("b")
        await a.presence.session_opened("tab1", NURSE, True)
        await b.presence.session_opened("tab2", NURSE, True)
        await a.presence.joined("tab1", CHAT)
        await b.presence.joined("tab2", CHAT)
        test.assertEqual(self.events.take(), [online(1), connected(CHAT, NURSE)])
        test.assertEqual(await b.presence.online_employees(), 1)
        test.assertEqual(await b.presence.subscribed_users(CHAT), {NURSE})
        await a.presence.session_closed("tab1")
        test.assertEqual(self.events.take(), [], "tab2 on b holds the nurse's presence")
        await b.presence.left("tab2", CHAT)
        test.assertEqual(self.events.take(), [disconnected(CHAT, NURSE)])
        await b.presence.session_closed("tab2")
        test.assertEqual(self.events.take(), [online(0)])

    async def test_concurrent_first_subscriptions(self) -> None:
        """Of two nodes subscribing the same user at once, exactly one announces them."""
        test: Any = self
        a, b = await self.node("a"), await self.node("b")
        await a.presence.session_opened("tab1", DOCTOR, True)
        await b.presence.session_opened("tab2", DOCTOR, True)
        self.events.take()
        await gatherResults([a.presence.joined("tab1", CHAT), b.presence.joined("tab2", CHAT)])
        test.assertEqual(self.events.take(), [connected(CHAT, DOCTOR)])
        await gatherResults([a.presence.left("tab1", CHAT), b.presence.left("tab2", CHAT)])
        test.assertEqual(self.events.take(), [disconnected(CHAT, DOCTOR)])

    async def test_dead_node_reaped_once(self) -> None:
        """A node silent for the TTL is removed by one survivor, which publishes once."""
        test: Any = self
        a, b, c = await self.node("a"), await self.node("b"), await self.node("c")
        await a.presence.session_opened("phone", CUSTOMER, False)
        await a.presence.joined("phone", CHAT)
        await b.presence.session_opened("tab1", NURSE, True)
        await b.presence.joined("tab1", CHAT)
        await b.presence.joined("tab1", OTHER_CHAT)
        await c.presence.session_opened("tab2", DOCTOR, True)
        self.events.take()
        test.assertEqual(await a.store.count_nodes(), 3)
        # b dies: it stops beating, without goodbye.
        self.clock.advance(DEFAULT_NODE_TTL / 2)
        await gatherResults([a.service.beat(), c.service.beat()])
        test.assertEqual(self.events.take(), [], "within the TTL b is still alive")
        self.clock.advance(DEFAULT_NODE_TTL / 2 + 1)
        await gatherResults([a.service.beat(), c.service.beat()])
        test.assertEqual(
            self.events.take(),
            [disconnected(CHAT, NURSE), disconnected(OTHER_CHAT, NURSE), online(1)],
        )
        test.assertEqual(await a.presence.subscribed_users(CHAT), {CUSTOMER})
        test.assertEqual(await c.presence.online_employees(), 1)
        await gatherResults([a.service.beat(), c.service.beat()])
        test.assertEqual(self.events.take(), [], "reaped once")
        test.assertEqual(a.service.removed_nodes + c.service.removed_nodes, 1)
        test.assertEqual(await c.store.count_nodes(), 2)

    async def test_heartbeats_scheduled(self) -> None:
        """A running node beats every interval on its clock, which keeps it alive."""
        test: Any = self
        a, b = await self.node("a"), await self.node("b", running=True)
        await b.presence.session_opened("tab1", NURSE, True)
        self.events.take()
        for _ in range(int(3 * DEFAULT_NODE_TTL / b.service.interval)):
            self.clock.advance(b.service.interval)
            await b.service._beating if b.service._beating is not None else None
            await a.service.beat()
        test.assertEqual(self.events.take(), [], "b beat all along")
        test.assertEqual(await a.presence.online_employees(), 1)

    async def test_leave_at_once(self) -> None:
        """A stopping node removes its presence at once, except what others still hold."""
        test: Any = self
        a, b = await self.node("a"), await self.node("b")
        await a.presence.session_opened("tab1", NURSE, True)
        await a.presence.joined("tab1", CHAT)
        await b.presence.session_opened("tab2", NURSE, True)
        await b.presence.joined("tab2", CHAT)
        await b.presence.session_opened("phone", CUSTOMER, False)
        await b.presence.joined("phone", CHAT)
        self.events.take()
        await b.service.stopService()
        test.assertEqual(self.events.take(), [disconnected(CHAT, CUSTOMER)])
        test.assertEqual(await a.presence.subscribed_users(CHAT), {NURSE})
        test.assertEqual(await a.presence.online_employees(), 1)
        await b.presence.session_closed("tab2")
        test.assertEqual(self.events.take(), [], "the node's sessions were removed already")

    async def test_restored_after_pause(self) -> None:
        """A node taken for dead while alive restores its sessions at its next beat."""
        test: Any = self
        logged = EventLoggingObserver.createWithCleanup(test, _global_publisher())
        a, b = await self.node("a"), await self.node("b")
        await b.presence.session_opened("tab1", NURSE, True)
        await b.presence.joined("tab1", CHAT)
        await b.presence.joined("tab1", CHAT)
        self.events.take()
        await self.elapse(DEFAULT_NODE_TTL + 1, a)
        test.assertEqual(self.events.take(), [disconnected(CHAT, NURSE), online(0)])
        await b.presence.session_opened("tab3", DOCTOR, True)
        test.assertEqual(self.events.take(), [], "b is not a node now")
        await b.service.beat()
        test.assertEqual(self.events.take(), [connected(CHAT, NURSE), online(2)])
        test.assertEqual(await a.presence.subscribed_users(CHAT), {NURSE})
        await b.presence.left("tab1", CHAT)
        test.assertEqual(self.events.take(), [])
        await b.presence.left("tab1", CHAT)
        test.assertEqual(self.events.take(), [disconnected(CHAT, NURSE)])
        warnings = [e for e in logged if e["log_level"] == LogLevel.warn]
        test.assertEqual(len(warnings), 1)
        test.assertIn("taken for dead", warnings[0]["log_format"])

    async def test_heartbeat_failure_logged(self) -> None:
        """Heartbeats the store cannot record are logged once, and the node beats on."""
        test: Any = self
        logged = EventLoggingObserver.createWithCleanup(test, _global_publisher())
        a = await self.node("a", running=True)
        await a.store.stop()
        await a.service.beat()
        await a.service.beat()
        warnings = [e for e in logged if e["log_level"] == LogLevel.warn]
        test.assertEqual(len(warnings), 1)
        test.assertIn("heartbeat failed", warnings[0]["log_format"])
        test.assertIsNotNone(a.service._call, "the next beat is scheduled")

    async def test_no_reaping_after_own_gap(self) -> None:
        """A node whose own beats failed past the TTL lets the others beat before reaping."""
        test: Any = self
        a, b = await self.node("a"), await self.node("b")
        await b.presence.session_opened("tab1", NURSE, True)
        self.events.take()
        stored = a.store.register_node
        a.store.register_node = lambda *args: fail(StoreUnavailable("down"))  # type: ignore
        await a.service.beat()
        await self.elapse(DEFAULT_NODE_TTL + 1, a)
        a.store.register_node = stored  # type: ignore[method-assign]
        await a.service.beat()
        test.assertEqual(self.events.take(), [], "b was as silent as a, for the same reason")
        await b.service.beat()
        self.clock.advance(a.service.interval)
        await a.service.beat()
        test.assertEqual(self.events.take(), [])
        test.assertEqual(await a.presence.online_employees(), 1)
        await self.elapse(DEFAULT_NODE_TTL + 1, a)
        test.assertEqual(self.events.take(), [online(0)], "b really stopped")


def _global_publisher() -> Any:
    from twisted.logger import globalLogPublisher

    return globalLogPublisher


class ClusterMemoryTests(_MemoryStores, _ClusterScenarios, InlineTestCase):
    """
    Several nodes on one in-memory SQLite database, and what needs operations held.
    """

    async def test_restore_waits_for_calls(self) -> None:
        """A restore waits for the calls in flight, and calls made during it wait."""
        a, b = await self.node("a"), await self.node("b")
        store: Any = b.store
        await b.presence.session_opened("tab1", NURSE, True)
        await b.presence.joined("tab1", CHAT)
        await self.elapse(DEFAULT_NODE_TTL + 1, a)
        await b.store.register_node("b", 0)
        self.events.take()
        store.hold()
        joining = b.presence.joined("tab1", OTHER_CHAT)
        restoring = b.presence.restore()
        leaving = b.presence.left("tab1", CHAT)
        store.flush()
        self.successResultOf(joining)
        self.assertNoResult(restoring)
        store.flush()
        self.successResultOf(restoring)
        self.assertNoResult(leaving)
        self.assertEqual(
            self.events.take(),
            [connected(CHAT, NURSE), connected(OTHER_CHAT, NURSE), online(1)],
        )
        store.release()
        self.successResultOf(leaving)
        self.assertEqual(self.events.take(), [disconnected(CHAT, NURSE)])
        self.assertEqual(await a.presence.subscribed_users(OTHER_CHAT), {NURSE})
        self.assertEqual(await a.presence.subscribed_users(CHAT), frozenset())

    async def test_failed_restore_retried(self) -> None:
        """A restore that fails is tried again at the next heartbeat."""
        a, b = await self.node("a"), await self.node("b")
        await b.presence.session_opened("tab1", NURSE, True)
        await self.elapse(DEFAULT_NODE_TTL + 1, a)
        self.events.take()
        failing = [False, True]  # popped from the end: fail once, then work
        restore_node = b.store.restore_node

        def flaky(*args: Any) -> Any:
            if failing.pop():
                return fail(StoreUnavailable("gone for a moment"))
            return restore_node(*args)

        b.store.restore_node = flaky  # type: ignore[method-assign]
        await b.service.beat()
        self.assertEqual(self.events.take(), [])
        await b.service.beat()
        self.assertEqual(self.events.take(), [online(1)])


class ClusterPostgreSQLTests(_PostgreSQLStores, _ClusterScenarios, TestCase):
    """
    Several nodes on one PostgreSQL database, each with its own connections.
    """
