"""
Presence shared by every process on one database (SPEC §8).

Each process is a I{node}: L{NodeService} registers it in the store, records a heartbeat
every few seconds, and removes the nodes whose heartbeat is older than the node TTL (a
process killed without goodbye), publishing what their removal means once, from the one
survivor whose transaction claimed them.  L{ClusterPresence} stores what this node's STOMP
sessions hold under its node id; the store decides, in the transaction that adds or
removes a row, whether that was a user's first or last subscription to a conversation on
any node, and whether the number of online employees changed.  The events are then
published through the L{IHub}, in the seed's shapes (see L{medichat.domain.presence}), so
that a hub that carries events across processes delivers them everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from medichat.interfaces import IHub, IPresence, IStore
from medichat.model import NodePresence, PresenceChange, micros, new_id
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC, conversation_topic

__all__ = ["DEFAULT_NODE_TTL", "ClusterPresence", "NodeService"]

T = TypeVar("T")

_log = Logger()

DEFAULT_NODE_TTL = 15.0
"""Seconds without a heartbeat after which a node is taken for dead."""


@define
class _Held:
    """What one open session of this node holds, as this node knows it."""

    user_id: str
    employee: bool
    # conversation id -> [subscriptions, position]
    joined: dict[str, list[int]] = field(factory=dict)


@implementer(IPresence)
class ClusterPresence:
    """
    L{IPresence} kept in the store, per node, so that every process sharing the database
    counts and announces presence once for all.

    Calls about one session run one after the other, in the order made (a C{left} never
    overtakes its C{joined}); what they change is published after it committed.  This
    node's sessions are also kept in memory, to restore its rows if the others removed it
    while it was alive (a pause longer than the node TTL).

    @ivar node_id: this process's node.
    """

    def __init__(self, store: IStore, hub: IHub, node_id: str | None = None) -> None:
        """
        @param store: where presence is kept; it must be started before the first call.
        @param hub: where changes are published.
        @param node_id: this process's node; a new random one by default.
        """
        self._store = store
        self._hub = hub
        self.node_id = node_id if node_id is not None else new_id()
        # Sessions open as far as calls go (checked when a call is made) ...
        self._open: set[str] = set()
        # ... and what they hold as far as the store was told (updated as each call runs).
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._positions = itertools.count(1)
        # Calls in flight, and who waits for none to be (a restore).
        self._active = 0
        self._idle: list[Deferred[None]] = []
        # While a restore runs, calls wait for it: (waiting, session, action, arguments).
        self._restoring: list[tuple[Deferred[None], str, Callable[..., Deferred[None]],
                                    tuple[Any, ...]]] | None = None

    # -- IPresence

    def session_opened(self, session_key: str, user_id: str, employee: bool) -> Deferred[None]:
        if session_key in self._open:
            return succeed(None)
        self._open.add(session_key)
        return self._serially(session_key, self._opened, session_key, user_id, employee)

    def session_closed(self, session_key: str) -> Deferred[None]:
        if session_key not in self._open:
            return succeed(None)
        self._open.discard(session_key)
        return self._serially(session_key, self._closed, session_key)

    def joined(self, session_key: str, conversation_id: str) -> Deferred[None]:
        if session_key not in self._open:
            return succeed(None)
        return self._serially(
            session_key, self._joined, session_key, conversation_id, next(self._positions)
        )

    def left(self, session_key: str, conversation_id: str) -> Deferred[None]:
        if session_key not in self._open:
            return succeed(None)
        return self._serially(session_key, self._left, session_key, conversation_id)

    def subscribed_users(self, conversation_id: str) -> Deferred[frozenset[str]]:
        d: Deferred[frozenset[str]] = self._store.presence_subscribed_users(conversation_id)
        return d

    def online_employees(self) -> Deferred[int]:
        d: Deferred[int] = self._store.presence_online_employees()
        return d

    # -- the node

    def restore(self) -> Deferred[None]:
        """
        Make this node's rows in the store match its open sessions again, after the others
        removed it as dead; publish the net change.  Calls made meanwhile wait for it, and
        it waits for those in flight, so that the store and this node agree on what was
        applied.
        """
        if self._restoring is not None:
            return succeed(None)
        self._restoring = []
        return Deferred.fromCoroutine(self._restore())

    async def _restore(self) -> None:
        try:
            if self._active:
                idle: Deferred[None] = Deferred()
                self._idle.append(idle)
                await idle
            sessions = [
                NodePresence(
                    session_key=key,
                    user_id=held.user_id,
                    employee=held.employee,
                    joined=tuple(
                        (conversation_id, count, position)
                        for conversation_id, (count, position) in held.joined.items()
                    ),
                )
                for key, held in self._held.items()
            ]
            _log.warn(
                "node {node} was taken for dead by another process: restoring the presence "
                "of its {count} sessions",
                node=self.node_id,
                count=len(sessions),
            )
            self.publish(await self._store.restore_node(self.node_id, sessions))
        finally:
            waiting, self._restoring = self._restoring or [], None
            for d, session_key, action, args in waiting:
                self._serially(session_key, action, *args).chainDeferred(d)

    def leave(self) -> Deferred[None]:
        """
        Remove this node and all its presence from the store (it stops); publish what
        that changes at once.
        """
        self._open.clear()
        self._held.clear()
        d: Deferred[PresenceChange] = self._store.leave_node(self.node_id)
        return d.addCallback(self.publish)

    def publish(self, change: PresenceChange) -> None:
        """
        Publish a change decided by the store, in one batch: arrivals, departures, then
        the online count.
        """
        for conversation_id, user_id in change.connected:
            self._hub.publish(
                conversation_topic(conversation_id), {"userConnected": {"userId": user_id}}
            )
        for conversation_id, user_id in change.disconnected:
            self._hub.publish(
                conversation_topic(conversation_id), {"userDisconnected": {"userId": user_id}}
            )
        if change.online is not None:
            self._online_changed(change.online)

    # -- one session's calls, in order

    def _serially(
        self, session_key: str, action: Callable[..., Deferred[None]], *args: Any
    ) -> Deferred[None]:
        if self._restoring is not None:
            waiting: Deferred[None] = Deferred()
            self._restoring.append((waiting, session_key, action, args))
            return waiting
        lock = self._locks.get(session_key)
        if lock is None:
            lock = self._locks[session_key] = DeferredLock()
        self._active += 1
        d: Deferred[None] = lock.run(action, *args)

        def finished(result: object) -> object:
            if not lock.locked and not lock.waiting and self._locks.get(session_key) is lock:
                del self._locks[session_key]
            self._active -= 1
            if not self._active:
                idle, self._idle = self._idle, []
                for waiter in idle:
                    waiter.callback(None)
            return result

        return d.addBoth(finished)

    def _opened(self, session_key: str, user_id: str, employee: bool) -> Deferred[None]:
        self._held[session_key] = _Held(user_id, employee)
        d: Deferred[int | None] = self._store.presence_session_opened(
            self.node_id, session_key, user_id, employee
        )
        return d.addCallback(
            lambda online: None if online is None else self._online_changed(online)
        )

    def _closed(self, session_key: str) -> Deferred[None]:
        if self._held.pop(session_key, None) is None:
            return succeed(None)  # the node left meanwhile
        d: Deferred[PresenceChange] = self._store.presence_session_closed(
            self.node_id, session_key
        )
        return d.addCallback(self.publish)

    def _joined(self, session_key: str, conversation_id: str, position: int) -> Deferred[None]:
        held = self._held.get(session_key)
        if held is None:
            return succeed(None)
        entry = held.joined.setdefault(conversation_id, [0, position])
        entry[0] += 1
        d: Deferred[str | None] = self._store.presence_joined(
            self.node_id, session_key, conversation_id, position
        )
        return d.addCallback(
            lambda user_id: None
            if user_id is None
            else self.publish(PresenceChange(connected=((conversation_id, user_id),)))
        )

    def _left(self, session_key: str, conversation_id: str) -> Deferred[None]:
        held = self._held.get(session_key)
        if held is None or conversation_id not in held.joined:
            return succeed(None)
        entry = held.joined[conversation_id]
        entry[0] -= 1
        if entry[0] <= 0:
            del held.joined[conversation_id]
        d: Deferred[str | None] = self._store.presence_left(
            self.node_id, session_key, conversation_id
        )
        return d.addCallback(
            lambda user_id: None
            if user_id is None
            else self.publish(PresenceChange(disconnected=((conversation_id, user_id),)))
        )

    def _online_changed(self, count: int) -> None:
        _log.debug("online employees: {count}", count=count)
        self._hub.publish(ONLINE_EMPLOYEES_TOPIC, {"online": count})


class NodeService(Service):
    """
    This process's node: registered when the service starts, a heartbeat every
    C{interval} seconds, and at each heartbeat the removal of the nodes that sent none for
    C{ttl} seconds.  When it stops, it removes its node and presence (others see its users
    leave at once, not after the TTL).

    Nodes compare heartbeats written with their own clocks: the hosts' clocks must agree
    to well within the TTL (NTP does).

    @ivar ttl: seconds without a heartbeat after which a node is dead.
    @ivar interval: seconds between heartbeats.
    @ivar removed_nodes: dead nodes whose presence this node removed (for metrics).
    """

    def __init__(
        self,
        store: IStore,
        presence: ClusterPresence,
        clock: IReactorTime,
        ttl: float = DEFAULT_NODE_TTL,
        interval: float | None = None,
    ) -> None:
        """
        @param store: the store, started before this service (the server starts the
            store first, then calls L{register}).
        @param presence: the node's presence, which publishes what removals change.
        @param clock: gives the time of heartbeats and schedules them.
        @param ttl: see L{ttl}.
        @param interval: see L{interval}; a fifth of the TTL by default.
        """
        self._store = store
        self._presence = presence
        self._clock = clock
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 5
        self._call: IDelayedCall | None = None
        self._beating: Deferred[None] | None = None
        self._registered = False
        # Removed as dead while alive, and not yet restored (a restore that failed is
        # tried again at the next beat).
        self._restore_pending = False
        # When this node last recorded a heartbeat (microseconds), and why the last failed.
        self._last_beat: int | None = None
        self._failing: str | None = None
        self.removed_nodes = 0

    @property
    def node_id(self) -> str:
        """This process's node id."""
        return self._presence.node_id

    def register(self) -> Deferred[None]:
        """
        Add this node to the store and start its heartbeats; the server calls it once the
        store has started, before it accepts connections.
        """

        def registered(_: bool) -> None:
            self._registered = True
            self._last_beat = self._now()
            _log.info("cluster node {node} registered", node=self.node_id)
            if self.running:
                self._call = self._clock.callLater(self.interval, self.beat)

        d: Deferred[bool] = self._store.register_node(self.node_id, self._now())
        return d.addCallback(registered)

    def _now(self) -> int:
        return micros(self._clock.seconds())

    def beat(self) -> Deferred[None]:
        """
        Record a heartbeat, restore this node's presence if it had been removed, and remove
        the dead nodes; then schedule the next beat.  A store that fails is logged and
        tried again at the next beat.
        """
        self._call = None
        d = Deferred.fromCoroutine(self._beat())
        self._beating = d

        def done(_: object) -> None:
            self._beating = None
            if self.running:
                self._call = self._clock.callLater(self.interval, self.beat)

        d.addBoth(done)
        return d

    async def _beat(self) -> None:
        now = self._now()
        # After a gap in this node's own heartbeats longer than the TTL (the database was
        # unreachable for everyone, say), the others' rows are stale for the same reason:
        # give them one interval to beat again before taking any of them for dead.
        others_may_lag = self._last_beat is not None and now - self._last_beat > micros(self.ttl)
        try:
            if await self._store.register_node(self.node_id, now):
                self._restore_pending = True
            self._last_beat = now
            if self._restore_pending:
                await self._presence.restore()
                self._restore_pending = False
            if others_may_lag:
                dead, change = (), PresenceChange()
            else:
                dead, change = await self._store.reap_nodes(
                    self.node_id, now - micros(self.ttl)
                )
        except Exception as e:
            if self._failing is None:
                _log.warn(
                    "cluster node heartbeat failed: {reason}; trying again every {interval} s",
                    reason=str(e) or type(e).__name__,
                    interval=self.interval,
                )
            self._failing = str(e) or type(e).__name__
            return
        if self._failing is not None:
            _log.info("cluster node heartbeats recorded again (were failing: {reason})",
                      reason=self._failing)
            self._failing = None
        if dead:
            self.removed_nodes += len(dead)
            _log.info(
                "removed {count} dead cluster nodes: {nodes}",
                count=len(dead),
                nodes=", ".join(dead),
            )
            self._presence.publish(change)

    def stopService(self) -> Deferred[None]:
        """Stop beating, and remove this node and its presence from the store."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._beating is not None:
            await self._beating
        if not self._registered:
            return
        self._registered = False
        try:
            await self._presence.leave()
        except Exception as e:
            _log.warn(
                "cluster node {node} could not remove its presence: {reason}; the others "
                "remove it after {ttl} seconds",
                node=self.node_id,
                reason=str(e) or type(e).__name__,
                ttl=self.ttl,
            )
        else:
            _log.info("cluster node {node} left", node=self.node_id)
