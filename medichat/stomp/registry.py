"""
Who is connected: the live STOMP sessions of this process, by user and by login session,
and the count of distinct online employees published on C{/v1/topic/online-employees}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.logger import Logger

from medichat.interfaces import IHub
from medichat.model import User
from medichat.pubsub.topics import ONLINE_EMPLOYEES_TOPIC

_log = Logger()


class LiveSession(Protocol):
    """
    What the registry needs of a connected STOMP session.
    """

    user: User | None

    def end(self, message: str, detail: str = "") -> None:
        """End the session with an C{ERROR} frame."""

    def shutdown(self) -> None:
        """End the session because the server is going away."""


class SessionRegistry:
    """
    The authenticated STOMP sessions of this process.

    An employee counts as online while at least one of their sessions is live (an HTTP
    login alone does not count).  Every change of the distinct count is published.
    """

    def __init__(self, hub: IHub) -> None:
        self._hub = hub
        self._by_user: dict[str, set[LiveSession]] = {}
        self._online_employees: set[str] = set()
        self._observers: list[Callable[[int], Any]] = []

    @property
    def online_employees(self) -> int:
        """The number of distinct employees with a live session."""
        return len(self._online_employees)

    def add(self, session: LiveSession) -> None:
        """
        Register a session that has just been authenticated.
        """
        user = session.user
        assert user is not None
        self._by_user.setdefault(user.user_id, set()).add(session)
        if user.is_employee and user.user_id not in self._online_employees:
            self._online_employees.add(user.user_id)
            self._changed()

    def remove(self, session: LiveSession) -> None:
        """
        Forget a session that has ended; unknown sessions are ignored.
        """
        user = session.user
        if user is None:
            return
        sessions = self._by_user.get(user.user_id)
        if not sessions or session not in sessions:
            return
        sessions.discard(session)
        if sessions:
            return
        del self._by_user[user.user_id]
        if user.user_id in self._online_employees:
            self._online_employees.discard(user.user_id)
            self._changed()

    def session_count(self, user_id: str) -> int:
        """
        How many live sessions a user has.
        """
        return len(self._by_user.get(user_id, ()))

    def sessions_of(self, user_id: str) -> frozenset[LiveSession]:
        """
        The live sessions of a user.
        """
        return frozenset(self._by_user.get(user_id, ()))

    def end_sessions(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        message: str = "session revoked",
    ) -> int:
        """
        End the live sessions that belong to one login session, or to one user.

        @return: how many sessions were ended.
        """
        targets: Iterable[LiveSession]
        if user_id is not None:
            targets = list(self._by_user.get(user_id, ()))
        else:
            targets = [
                s
                for group in self._by_user.values()
                for s in group
                if s.user is not None and s.user.session_id == session_id
            ]
        count = 0
        for session in targets:
            session.end(message)
            count += 1
        return count

    def shutdown(self) -> int:
        """
        End every live session because the server is going away.

        @return: how many sessions were ended.
        """
        sessions = [s for group in self._by_user.values() for s in group]
        for session in sessions:
            session.shutdown()
        return len(sessions)

    def _changed(self) -> None:
        count = len(self._online_employees)
        _log.debug("online employees: {count}", count=count)
        self._hub.publish(ONLINE_EMPLOYEES_TOPIC, {"online": count})
