"""
Presence shared through the store: nodes and their heartbeats, and what each node's STOMP
sessions hold (migration 0005), as transaction scripts (see L{medichat.store.scripts}) and
the L{PresenceOperations} that both stores mix in.

Every change that may alter what the cluster sees runs in one transaction that also updates
the shared counters: C{presence_members} (subscriptions per conversation and user, over
every node), C{presence_employees} (open sessions per employee) and the one row of
C{presence_online} (distinct employees online).  The row lock that each C{INSERT ... ON
CONFLICT ... RETURNING} or C{UPDATE ... RETURNING} takes on a counter makes the answer
("this was the user's first subscription", "the last", "the count is now N") exact for the
whole cluster: a concurrent change of the same key waits for this one to commit and then
sees its result.  On SQLite, C{BEGIN IMMEDIATE} serialises every write anyway.

Locks are always taken in one order (nodes, sessions, subscriptions, members by key,
employees by id, the online row), so that transactions on PostgreSQL do not deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from medichat.model import NodePresence, PresenceChange
from medichat.store.scripts import Dialect, Script


def _key_share(dialect: Dialect) -> str:
    """
    A lock on the rows a C{SELECT} reads that keeps them from being deleted until the end
    of the transaction (PostgreSQL), or nothing where the writer holds the whole database.
    """
    return " FOR KEY SHARE" if dialect.name == "postgresql" else ""


def register_node(dialect: Dialect, node_id: str, now: int) -> Script[bool]:
    """
    Record a heartbeat of a node, adding its row if there is none.

    @return: C{True} if the row was added: the node is new, or others had removed it as
        dead (and its presence rows with it).
    """
    result = yield dialect.statement("UPDATE nodes SET heartbeat = ? WHERE id = ?", now, node_id)
    if result.rowcount > 0:
        return False
    yield dialect.statement(
        "INSERT INTO nodes (id, started, heartbeat) VALUES (?, ?, ?)", node_id, now, now
    )
    return True


def _node_alive(dialect: Dialect, node_id: str) -> Script[bool]:
    """Lock the node's row (if any) against removal; C{True} if it exists."""
    result = yield dialect.statement(
        "SELECT id FROM nodes WHERE id = ?" + _key_share(dialect), node_id
    )
    return bool(result.rows)


def _add_online(dialect: Dialect, delta: int) -> Script[int]:
    result = yield dialect.statement(
        "UPDATE presence_online SET online = online + ? WHERE id = 1 RETURNING online", delta
    )
    return int(result.rows[0][0])


def _add_employees(dialect: Dialect, sessions: dict[str, int]) -> Script[int]:
    """
    Count more open sessions of employees.

    @return: how many of them had none before.
    """
    arrived = 0
    for user_id in sorted(sessions):
        count = sessions[user_id]
        result = yield dialect.statement(
            "INSERT INTO presence_employees (user_id, sessions) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE"
            " SET sessions = presence_employees.sessions + excluded.sessions"
            " RETURNING sessions",
            user_id,
            count,
        )
        if int(result.rows[0][0]) == count:
            arrived += 1
    return arrived


def _remove_employees(dialect: Dialect, sessions: dict[str, int]) -> Script[int]:
    """
    Count fewer open sessions of employees.

    @return: how many of them have none left.
    """
    gone = 0
    for user_id in sorted(sessions):
        result = yield dialect.statement(
            "UPDATE presence_employees SET sessions = sessions - ? WHERE user_id = ?"
            " RETURNING sessions",
            sessions[user_id],
            user_id,
        )
        if result.rows and int(result.rows[0][0]) <= 0:
            yield dialect.statement("DELETE FROM presence_employees WHERE user_id = ?", user_id)
            gone += 1
    return gone


def _add_members(
    dialect: Dialect, members: dict[tuple[str, str], int]
) -> Script[set[tuple[str, str]]]:
    """
    Count more subscriptions of users to conversations.

    @param members: subscriptions to add by C{(conversation_id, user_id)}.
    @return: the keys that had none before.
    """
    first = set()
    for key in sorted(members):
        count = members[key]
        result = yield dialect.statement(
            "INSERT INTO presence_members (conversation_id, user_id, subscriptions)"
            " VALUES (?, ?, ?) ON CONFLICT (conversation_id, user_id) DO UPDATE"
            " SET subscriptions = presence_members.subscriptions + excluded.subscriptions"
            " RETURNING subscriptions",
            key[0],
            key[1],
            count,
        )
        if int(result.rows[0][0]) == count:
            first.add(key)
    return first


def _remove_members(
    dialect: Dialect, members: dict[tuple[str, str], int]
) -> Script[set[tuple[str, str]]]:
    """
    Count fewer subscriptions of users to conversations.

    @return: the keys that have none left.
    """
    last = set()
    for key in sorted(members):
        result = yield dialect.statement(
            "UPDATE presence_members SET subscriptions = subscriptions - ?"
            " WHERE conversation_id = ? AND user_id = ? RETURNING subscriptions",
            members[key],
            key[0],
            key[1],
        )
        if result.rows and int(result.rows[0][0]) <= 0:
            yield dialect.statement(
                "DELETE FROM presence_members WHERE conversation_id = ? AND user_id = ?",
                key[0],
                key[1],
            )
            last.add(key)
    return last


def session_opened(
    dialect: Dialect, node_id: str, session_key: str, user_id: str, employee: bool
) -> Script[int | None]:
    """
    Record an open session of a node.

    @return: the number of employees online if it changed, else L{None}.
    """
    if not (yield from _node_alive(dialect, node_id)):
        # Removed as dead: the node restores its rows when its heartbeat finds out.
        return None
    result = yield dialect.statement(
        "INSERT INTO presence_sessions (node_id, session_key, user_id, employee)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (node_id, session_key) DO NOTHING RETURNING user_id",
        node_id,
        session_key,
        user_id,
        employee,
    )
    if not result.rows or not employee:
        return None
    if (yield from _add_employees(dialect, {user_id: 1})):
        return (yield from _add_online(dialect, 1))
    return None


def joined(
    dialect: Dialect, node_id: str, session_key: str, conversation_id: str, position: int
) -> Script[str | None]:
    """
    Record one more subscription of a session to a conversation.

    @param position: orders the session's conversations, for L{session_closed}.
    @return: the session's user if this is their first subscription to the conversation
        anywhere, else L{None} (also when the session is not open).
    """
    result = yield dialect.statement(
        "SELECT user_id FROM presence_sessions WHERE node_id = ? AND session_key = ?"
        + _key_share(dialect),
        node_id,
        session_key,
    )
    if not result.rows:
        return None
    user_id = result.rows[0][0]
    yield dialect.statement(
        "INSERT INTO presence_subscriptions"
        " (node_id, session_key, conversation_id, user_id, subscriptions, position)"
        " VALUES (?, ?, ?, ?, 1, ?)"
        " ON CONFLICT (node_id, session_key, conversation_id) DO UPDATE"
        " SET subscriptions = presence_subscriptions.subscriptions + 1",
        node_id,
        session_key,
        conversation_id,
        user_id,
        position,
    )
    first = yield from _add_members(dialect, {(conversation_id, user_id): 1})
    return user_id if first else None


def left(
    dialect: Dialect, node_id: str, session_key: str, conversation_id: str
) -> Script[str | None]:
    """
    Record one subscription fewer of a session to a conversation.

    @return: the session's user if that was their last subscription to the conversation
        anywhere, else L{None} (also when the session held none).
    """
    result = yield dialect.statement(
        "UPDATE presence_subscriptions SET subscriptions = subscriptions - 1"
        " WHERE node_id = ? AND session_key = ? AND conversation_id = ?"
        " RETURNING user_id, subscriptions",
        node_id,
        session_key,
        conversation_id,
    )
    if not result.rows:
        return None
    user_id, remaining = result.rows[0]
    if int(remaining) <= 0:
        yield dialect.statement(
            "DELETE FROM presence_subscriptions"
            " WHERE node_id = ? AND session_key = ? AND conversation_id = ?",
            node_id,
            session_key,
            conversation_id,
        )
    last = yield from _remove_members(dialect, {(conversation_id, user_id): 1})
    return str(user_id) if last else None


def _release_counts(
    dialect: Dialect,
    sessions: Iterable[Sequence[Any]],
    subscriptions: Iterable[Sequence[Any]],
) -> Script[tuple[list[tuple[str, str]], int]]:
    """
    Take deleted rows off the shared counters (all but the online row).

    @param sessions: deleted C{(user_id, employee)} rows.
    @param subscriptions: deleted C{(conversation_id, user_id, subscriptions, node_id,
        position)} rows.
    @return: the C{(conversation_id, user_id)} keys left without subscriptions, in the
        order their rows were joined, and how many employees have no session left.
    """
    members: dict[tuple[str, str], int] = {}
    order: dict[tuple[str, str], tuple[str, int]] = {}
    for conversation_id, user_id, count, node_id, position in subscriptions:
        key = (str(conversation_id), str(user_id))
        members[key] = members.get(key, 0) + int(count)
        place = (str(node_id), int(position))
        order[key] = min(order.get(key, place), place)
    employees: dict[str, int] = {}
    for user_id, employee in sessions:
        if employee:
            employees[str(user_id)] = employees.get(str(user_id), 0) + 1
    last = yield from _remove_members(dialect, members)
    gone = yield from _remove_employees(dialect, employees)
    return sorted(last, key=order.__getitem__), gone


def _release(
    dialect: Dialect,
    sessions: Iterable[Sequence[Any]],
    subscriptions: Iterable[Sequence[Any]],
) -> Script[PresenceChange]:
    """
    Take deleted rows off the shared counters (see L{_release_counts}), and say what
    changed.
    """
    last, gone = yield from _release_counts(dialect, sessions, subscriptions)
    online = (yield from _add_online(dialect, -gone)) if gone else None
    return PresenceChange(disconnected=tuple(last), online=online)


_SUBSCRIPTION_ROWS = "conversation_id, user_id, subscriptions, node_id, position"


def session_closed(dialect: Dialect, node_id: str, session_key: str) -> Script[PresenceChange]:
    """
    Remove an open session of a node, and what it had joined.
    """
    sessions = yield dialect.statement(
        "DELETE FROM presence_sessions WHERE node_id = ? AND session_key = ?"
        " RETURNING user_id, employee",
        node_id,
        session_key,
    )
    if not sessions.rows:
        return PresenceChange()
    subscriptions = yield dialect.statement(
        "DELETE FROM presence_subscriptions WHERE node_id = ? AND session_key = ?"
        f" RETURNING {_SUBSCRIPTION_ROWS}",
        node_id,
        session_key,
    )
    return (yield from _release(dialect, sessions.rows, subscriptions.rows))


def _delete_node_rows(
    dialect: Dialect, node_ids: Sequence[str]
) -> Script[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """
    Delete every presence row of some nodes.

    @return: the deleted session rows and subscription rows, as L{_release_counts} takes
        them.
    """
    if not node_ids:
        return [], []
    marks = ", ".join("?" * len(node_ids))
    sessions = yield dialect.statement(
        f"DELETE FROM presence_sessions WHERE node_id IN ({marks}) RETURNING user_id, employee",
        *node_ids,
    )
    subscriptions = yield dialect.statement(
        f"DELETE FROM presence_subscriptions WHERE node_id IN ({marks})"
        f" RETURNING {_SUBSCRIPTION_ROWS}",
        *node_ids,
    )
    return sessions.rows, subscriptions.rows


def _remove_nodes(dialect: Dialect, node_ids: Sequence[str]) -> Script[PresenceChange]:
    """
    Remove every presence row of some nodes, whose own rows are already deleted (and
    locked by this transaction).
    """
    sessions, subscriptions = yield from _delete_node_rows(dialect, node_ids)
    if not sessions and not subscriptions:
        return PresenceChange()
    return (yield from _release(dialect, sessions, subscriptions))


def reap_nodes(
    dialect: Dialect, node_id: str, cutoff: int
) -> Script[tuple[tuple[str, ...], PresenceChange]]:
    """
    Remove the nodes other than C{node_id} whose last heartbeat is older than C{cutoff},
    with their presence.  The C{DELETE} claims them: of several nodes reaping at once,
    only the one whose statement deleted a node's row releases that node's presence.

    @return: the removed nodes, and what their removal changed.
    """
    result = yield dialect.statement(
        "DELETE FROM nodes WHERE heartbeat < ? AND id <> ? RETURNING id", cutoff, node_id
    )
    dead = tuple(sorted(str(row[0]) for row in result.rows))
    change = yield from _remove_nodes(dialect, dead)
    return dead, change


def leave_node(dialect: Dialect, node_id: str) -> Script[PresenceChange]:
    """
    Remove a node that stops, and all its presence.
    """
    yield dialect.statement("DELETE FROM nodes WHERE id = ?", node_id)
    return (yield from _remove_nodes(dialect, [node_id]))


def restore_node(
    dialect: Dialect, node_id: str, sessions: Sequence[NodePresence]
) -> Script[PresenceChange]:
    """
    Make a node's presence rows exactly C{sessions} (after others removed it as dead while
    it was alive): remove what it has, add what it holds, and report only the net change.
    """
    deleted_sessions, deleted_subscriptions = yield from _delete_node_rows(dialect, [node_id])
    employees: dict[str, int] = {}
    members: dict[tuple[str, str], int] = {}
    order: dict[tuple[str, str], int] = {}
    for session in sessions:
        yield dialect.statement(
            "INSERT INTO presence_sessions (node_id, session_key, user_id, employee)"
            " VALUES (?, ?, ?, ?)",
            node_id,
            session.session_key,
            session.user_id,
            session.employee,
        )
        if session.employee:
            employees[session.user_id] = employees.get(session.user_id, 0) + 1
        for conversation_id, count, position in session.joined:
            yield dialect.statement(
                "INSERT INTO presence_subscriptions"
                " (node_id, session_key, conversation_id, user_id, subscriptions, position)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                node_id,
                session.session_key,
                conversation_id,
                session.user_id,
                count,
                position,
            )
            key = (conversation_id, session.user_id)
            members[key] = members.get(key, 0) + count
            order[key] = min(order.get(key, position), position)
    # Take off, then add on, each counter in the one lock order.
    last, gone = yield from _release_counts(dialect, deleted_sessions, deleted_subscriptions)
    first = yield from _add_members(dialect, members)
    arrived = yield from _add_employees(dialect, employees)
    online = yield from _add_online(dialect, arrived - gone)
    return PresenceChange(
        connected=tuple(sorted(first - set(last), key=order.__getitem__)),
        disconnected=tuple(key for key in last if key not in first),
        online=online if arrived != gone else None,
    )


def subscribed_users(dialect: Dialect, conversation_id: str) -> Script[frozenset[str]]:
    """The users subscribed to a conversation on any node."""
    result = yield dialect.statement(
        "SELECT user_id FROM presence_members WHERE conversation_id = ?", conversation_id
    )
    return frozenset(str(row[0]) for row in result.rows)


def count_nodes(dialect: Dialect) -> Script[int]:
    """The registered nodes, alive or not yet removed as dead."""
    result = yield dialect.statement("SELECT COUNT(*) FROM nodes")
    return int(result.rows[0][0])


def online_employees(dialect: Dialect) -> Script[int]:
    """The distinct employees with an open session on any node."""
    result = yield dialect.statement("SELECT online FROM presence_online WHERE id = 1")
    return int(result.rows[0][0]) if result.rows else 0


class PresenceOperations:
    """
    The presence methods of L{medichat.interfaces.IStore}, mixed into the SQL stores
    (which provide C{_dialect} and C{_run}).
    """

    _dialect: Dialect
    _run: Callable[..., Deferred[Any]]

    def register_node(self, node_id: str, now: int) -> Deferred[bool]:
        """See L{medichat.interfaces.IStore.register_node}."""
        return self._run(register_node(self._dialect, node_id, now), True)

    def reap_nodes(
        self, node_id: str, cutoff: int
    ) -> Deferred[tuple[tuple[str, ...], PresenceChange]]:
        """See L{medichat.interfaces.IStore.reap_nodes}."""
        return self._run(reap_nodes(self._dialect, node_id, cutoff), True)

    def leave_node(self, node_id: str) -> Deferred[PresenceChange]:
        """See L{medichat.interfaces.IStore.leave_node}."""
        return self._run(leave_node(self._dialect, node_id), True)

    def restore_node(
        self, node_id: str, sessions: Sequence[NodePresence]
    ) -> Deferred[PresenceChange]:
        """See L{medichat.interfaces.IStore.restore_node}."""
        return self._run(restore_node(self._dialect, node_id, sessions), True)

    def presence_session_opened(
        self, node_id: str, session_key: str, user_id: str, employee: bool
    ) -> Deferred[int | None]:
        """See L{medichat.interfaces.IStore.presence_session_opened}."""
        return self._run(
            session_opened(self._dialect, node_id, session_key, user_id, employee), True
        )

    def presence_session_closed(self, node_id: str, session_key: str) -> Deferred[PresenceChange]:
        """See L{medichat.interfaces.IStore.presence_session_closed}."""
        return self._run(session_closed(self._dialect, node_id, session_key), True)

    def presence_joined(
        self, node_id: str, session_key: str, conversation_id: str, position: int
    ) -> Deferred[str | None]:
        """See L{medichat.interfaces.IStore.presence_joined}."""
        return self._run(
            joined(self._dialect, node_id, session_key, conversation_id, position), True
        )

    def presence_left(
        self, node_id: str, session_key: str, conversation_id: str
    ) -> Deferred[str | None]:
        """See L{medichat.interfaces.IStore.presence_left}."""
        return self._run(left(self._dialect, node_id, session_key, conversation_id), True)

    def presence_subscribed_users(self, conversation_id: str) -> Deferred[frozenset[str]]:
        """See L{medichat.interfaces.IStore.presence_subscribed_users}."""
        return self._run(subscribed_users(self._dialect, conversation_id))

    def presence_online_employees(self) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.presence_online_employees}."""
        return self._run(online_employees(self._dialect))

    def count_nodes(self) -> Deferred[int]:
        """See L{medichat.interfaces.IStore.count_nodes}."""
        return self._run(count_nodes(self._dialect))


__all__ = ["PresenceOperations"]
