"""
The interfaces that medichat's layers talk through.

Data flows one way: transport adapter -> STOMP session -> hub / domain -> store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.cred.credentials import ICredentials
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

# --------------------------------------------------------------------------------------
# Credentials (twisted.cred)


class IBearerToken(ICredentials):
    """
    A bearer JWT, as sent in C{Authorization: Bearer <jwt>} or as a STOMP C{passcode}.
    """

    token = Attribute("The compact JWT (C{str}), without the C{Bearer } prefix.")


class ISessionCookie(ICredentials):
    """
    An employee session cookie: an opaque random token.
    """

    token = Attribute("The cookie value (C{str}) exactly as the client sent it.")


class IStoreBound(Interface):
    """
    A credential checker that needs the store and the clock, which a
    L{twisted.cred.strcred.ICheckerFactory} cannot give it when it is made from an
    C{--auth} argument string.  L{medichat.app.tap.makeService} calls L{attach} before use.
    """

    def attach(store: IStore, clock: Any) -> None:
        """
        Give the checker its store and its C{IReactorTime}.
        """


# --------------------------------------------------------------------------------------
# STOMP carriage


class IFrameTransport(Interface):
    """
    What a STOMP session needs from whatever carries it (a WebSocket, a TCP connection).

    Each call to L{send} carries exactly one whole STOMP frame or one heart-beat EOL, so a
    message-oriented carrier (WebSocket) sends each as one message.
    """

    def send(data: bytes) -> None:
        """
        Send one encoded frame, or a heart-beat (C{b"\\n"}).
        """

    def close(code: int, reason: str) -> None:
        """
        Close the connection after what was sent so far has been flushed.

        @param code: a WebSocket close code (1000 normal, 1001 going away, 1002 protocol
            error, 1008 policy, 1009 too big, 1011 server error); stream carriers ignore it.
        """

    def abort() -> None:
        """
        Drop the connection at once, discarding anything not yet written.
        """


class ISubscriber(Interface):
    """
    One subscription, as the hub sees it: something to deliver encoded events to.
    """

    user_id = Attribute("The subscribing user's id (C{str}).")

    def deliver(publication: Any) -> None:
        """
        Deliver one L{medichat.pubsub.hub.Publication}: an event encoded once for every subscriber.
        """


class IHub(Interface):
    """
    Publish/subscribe between sessions, reactor-driven.  In-process for one node; a
    PostgreSQL LISTEN/NOTIFY implementation lets several nodes act as one.

    Publishing encodes an event once; each subscriber then only adds what differs per
    subscription.
    """

    def subscribe(destination: str, subscriber: ISubscriber) -> bool:
        """
        Add C{subscriber} to C{destination}.

        @return: C{True} if this is the subscriber's user's first live subscription to
            C{destination}.
        """

    def unsubscribe(destination: str, subscriber: ISubscriber) -> bool:
        """
        Remove C{subscriber} from C{destination}; unknown pairs are ignored.

        @return: C{True} if that was the user's last live subscription to C{destination}.
        """

    def publish(destination: str, event: dict[str, Any]) -> None:
        """
        Deliver C{event} (JSON-serialisable) to every current subscriber of C{destination}.
        """

    def subscribed_users(destination: str) -> frozenset[str]:
        """
        The ids of users with at least one live subscription to C{destination}.
        """


# --------------------------------------------------------------------------------------
# Storage


class IStore(Interface):
    """
    Durable state: conversations, messages, receipts, employees and login sessions.

    Every method returns a L{Deferred}; none blocks the reactor.  Times are integer
    microseconds since the epoch (see L{medichat.model}).  C{query} arguments are RSQL
    strings already checked by L{medichat.rsql.parse}, passed as the parsed tree.
    """

    kind = Attribute("C{'sqlite'} or C{'postgresql'}.")

    def start() -> Deferred[None]:
        """
        Connect and apply pending schema migrations.
        """

    def stop() -> Deferred[None]:
        """
        Close connections.
        """

    def preflight() -> None:
        """
        Check, blocking, that C{start} can open the database (make the SQLite file, or
        connect to PostgreSQL once), so that a server that cannot start says so before it
        reports having started.  Only for process start-up, before the reactor serves.

        @raise medichat.errors.StoreError: saying why not, in one line.
        """

    def schema_version() -> Deferred[int]:
        """
        The number of the newest applied migration.
        """

    def ping() -> Deferred[None]:
        """
        Fail if the database cannot be reached.
        """

    def check_writable() -> Deferred[None]:
        """
        Fail (with L{medichat.errors.StoreUnavailable}) if the database cannot commit a
        write now: read-only, out of space, unreachable.  Writes one tiny row.
        """

    # conversations

    def create_conversation(conversation: Any) -> Deferred[None]:
        """
        Store a new L{medichat.model.Conversation}.
        """

    def get_conversation(conversation_id: str) -> Deferred[Any]:
        """
        The L{medichat.model.Conversation}, or L{None}.
        """

    def list_conversations(
        customer_id: str | None,
        query: Any,
        descending: bool,
        limit: int,
        after: tuple[int, str] | None,
    ) -> Deferred[Sequence[Any]]:
        """
        Conversations ordered by C{(created, id)}, ascending unless C{descending}.

        @param customer_id: only this customer's, or all when L{None}.
        @param query: a parsed RSQL tree over C{created} and C{customerId}, or L{None}.
        @param limit: at most this many.
        @param after: a cursor, the C{(created, id)} of the last row of the previous page;
            rows strictly after it (in the chosen order) are returned.
        """

    # messages

    def add_message(
        message: Any, idempotency_key: str | None
    ) -> Deferred[tuple[Any, bool]]:
        """
        Commit a L{medichat.model.Message} (its C{seq} is assigned by the store).

        With an C{idempotency_key}, a second call with the same key and the same
        C{(conversation_id, user_id)} stores nothing and returns the first message.

        @return: C{(stored message, created)}; C{created} is C{False} for a replay.
        """

    def list_messages(
        conversation_id: str, query: Any, descending: bool, limit: int | None
    ) -> Deferred[Sequence[Any]]:
        """
        The conversation's messages ordered by C{(created, seq)}.

        @param query: a parsed RSQL tree over C{created}, C{userId}, C{userRole}, C{id},
            or L{None} for all.
        """

    # receipts

    def mark_read(conversation_id: str, user_id: str, at: int) -> Deferred[bool]:
        """
        Move the user's read time forward to C{at}.

        @return: C{True} if the stored value changed (it never moves back).
        """

    def mark_received(conversation_id: str, user_id: str, at: int) -> Deferred[bool]:
        """
        Move the user's received time forward to C{at}.

        @return: C{True} if the stored value changed (it never moves back).
        """

    def receipts(conversation_id: str) -> Deferred[tuple[Sequence[Any], Sequence[Any]]]:
        """
        C{(read, received)}: lists of L{medichat.model.Receipt}, ordered by user id.
        """

    # employees and login sessions

    def add_employee(employee: Any) -> Deferred[None]:
        """
        Store a new L{medichat.model.Employee}.

        @raise DuplicateError: (asynchronously) if the email is taken (case-insensitive).
        """

    def get_employee(employee_id: str) -> Deferred[Any]:
        """
        The L{medichat.model.Employee} with this id, or L{None}.
        """

    def find_employee(email: str) -> Deferred[Any]:
        """
        The L{medichat.model.Employee} with this email (case-insensitive), or L{None}.
        """

    def list_employees() -> Deferred[Sequence[Any]]:
        """
        Every employee, ordered by email.
        """

    def update_employee(
        employee_id: str,
        *,
        name: str | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
        last_login: int | None = None,
    ) -> Deferred[bool]:
        """
        Change the given fields.

        @return: C{False} if there is no such employee.
        """

    def add_login_session(session: Any) -> Deferred[None]:
        """
        Store a new L{medichat.model.LoginSession}.
        """

    def find_login_session(token_hash: str) -> Deferred[Any]:
        """
        The L{medichat.model.LoginSession} with this token hash, or L{None}.
        """

    def extend_login_session(session_id: str, expires_at: int) -> Deferred[None]:
        """
        Slide a session's expiry.
        """

    def revoke_login_sessions(
        *, session_id: str | None = None, employee_id: str | None = None
    ) -> Deferred[int]:
        """
        Revoke one session, or every session of an employee.

        @return: how many were revoked.
        """
