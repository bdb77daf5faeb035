"""
Presence: who is online, and who is in which conversation.

The STOMP session reports what happens to it (opened, closed, a conversation subscription
added or ended) by plain ids; L{InProcessPresence} keeps the tally for one process and
publishes what changes, in the seed's shapes::

    {"online": N}                              on /v1/topic/online-employees
    {"userConnected": {"userId"}}              on /v1/topic/conversation/{id}
    {"userDisconnected": {"userId"}}           on /v1/topic/conversation/{id}

The conversation service asks it which users are subscribed to a conversation, to mark a
new message received for them.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from medichat.interfaces import IHub, IPresence
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC, conversation_topic

__all__ = ["InProcessPresence"]

_log = Logger()


@define
class _Session:
    """
    One open session: its user, and how many subscriptions it holds per conversation (in
    the order it first joined them).
    """

    user_id: str
    employee: bool
    joined: dict[str, int] = field(factory=dict)


@implementer(IPresence)
class InProcessPresence:
    """
    L{IPresence} for one process: everything in memory, every answer at once.

    @param hub: where changes are published.
    """

    def __init__(self, hub: IHub) -> None:
        self._hub = hub
        self._sessions: dict[str, _Session] = {}
        # employee id -> open sessions of that employee
        self._employees: dict[str, int] = {}
        # conversation id -> user id -> subscriptions of that user, over all their sessions
        self._members: dict[str, dict[str, int]] = {}

    def session_opened(self, session_key: str, user_id: str, employee: bool) -> Deferred[None]:
        if session_key not in self._sessions:
            self._sessions[session_key] = _Session(user_id, employee)
            if employee:
                count = self._employees.get(user_id, 0)
                self._employees[user_id] = count + 1
                if count == 0:
                    self._online_changed()
        return succeed(None)

    def session_closed(self, session_key: str) -> Deferred[None]:
        session = self._sessions.pop(session_key, None)
        if session is not None:
            for conversation_id, count in session.joined.items():
                self._release(session.user_id, conversation_id, count)
            if session.employee:
                count = self._employees[session.user_id] - 1
                if count:
                    self._employees[session.user_id] = count
                else:
                    del self._employees[session.user_id]
                    self._online_changed()
        return succeed(None)

    def joined(self, session_key: str, conversation_id: str) -> Deferred[None]:
        # A session that is not open (it ended while its SUBSCRIBE was being checked) has
        # nothing to join.
        session = self._sessions.get(session_key)
        if session is not None:
            session.joined[conversation_id] = session.joined.get(conversation_id, 0) + 1
            users = self._members.setdefault(conversation_id, {})
            count = users.get(session.user_id, 0)
            users[session.user_id] = count + 1
            if count == 0:
                self._hub.publish(
                    conversation_topic(conversation_id),
                    {"userConnected": {"userId": session.user_id}},
                )
        return succeed(None)

    def left(self, session_key: str, conversation_id: str) -> Deferred[None]:
        session = self._sessions.get(session_key)
        if session is not None and conversation_id in session.joined:
            count = session.joined[conversation_id] - 1
            if count:
                session.joined[conversation_id] = count
            else:
                del session.joined[conversation_id]
            self._release(session.user_id, conversation_id, 1)
        return succeed(None)

    def subscribed_users(self, conversation_id: str) -> Deferred[frozenset[str]]:
        return succeed(frozenset(self._members.get(conversation_id, ())))

    def online_employees(self) -> Deferred[int]:
        return succeed(len(self._employees))

    def _release(self, user_id: str, conversation_id: str, subscriptions: int) -> None:
        """
        Take C{subscriptions} of C{user_id}'s away from a conversation; publish
        C{userDisconnected} if none remain.
        """
        users = self._members[conversation_id]
        count = users[user_id] - subscriptions
        if count:
            users[user_id] = count
            return
        del users[user_id]
        if not users:
            del self._members[conversation_id]
        self._hub.publish(
            conversation_topic(conversation_id), {"userDisconnected": {"userId": user_id}}
        )

    def _online_changed(self) -> None:
        count = len(self._employees)
        _log.debug("online employees: {count}", count=count)
        self._hub.publish(ONLINE_EMPLOYEES_TOPIC, {"online": count})
