"""
The live STOMP sessions of this process, by user and by login session, so that the server
can end them: on a revoked login, or when it stops.

Who counts as online, and who is in which conversation, is not kept here but in
L{medichat.interfaces.IPresence}, which the sessions report to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from attrs import frozen

from medichat.model import User


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
    """

    def __init__(self) -> None:
        self._by_user: dict[str, set[LiveSession]] = {}

    def add(self, session: LiveSession) -> None:
        """
        Register a session that has just been authenticated.
        """
        user = session.user
        assert user is not None
        self._by_user.setdefault(user.user_id, set()).add(session)

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
        if not sessions:
            del self._by_user[user.user_id]

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
        if user_id is None and session_id is None:
            return 0
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

    def sessions(self) -> list[LiveSession]:
        """
        Every live session, grouped by user.
        """
        return [s for group in self._by_user.values() for s in group]

    def shutdown(self) -> int:
        """
        End every live session because the server is going away.

        @return: how many sessions were ended.
        """
        sessions = [s for group in self._by_user.values() for s in group]
        for session in sessions:
            session.shutdown()
        return len(sessions)


@frozen
class RevocationObserver:
    """
    Ends live sessions whose login was revoked; give it to
    L{medichat.domain.accounts.Accounts.add_revocation_observer}.

    A logout names its login session, and ends only the STOMP sessions authenticated by
    that login (one device); a password change or disablement names only the employee, and
    ends all of their sessions.

    @ivar registry: the live sessions.
    """

    registry: SessionRegistry

    def __call__(self, session_id: str | None, employee_id: str | None) -> None:
        """
        Login session C{session_id} (or every login of C{employee_id}, when C{session_id}
        is L{None}) was revoked.
        """
        if session_id is not None:
            self.registry.end_sessions(session_id=session_id, message="session revoked")
        elif employee_id is not None:
            self.registry.end_sessions(user_id=employee_id, message="session revoked")
