"""
The interfaces that medichat's layers talk through.

Data flows one way: carrier (WebSocket, TCP) -> STOMP session -> hub / domain -> store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class ICarrier(Interface):
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
    One subscription, as the hub sees it: something to deliver publications to.
    """

    def deliver(publication: Any) -> None:
        """
        Deliver one L{medichat.pubsub.hub.Publication}: an event encoded once for every
        subscriber.
        """


class IHub(Interface):
    """
    Publish/subscribe between sessions, reactor-driven.

    Publishing encodes an event once; each subscriber then only adds what differs per
    subscription.  The hub gives subscriptions no further meaning: who is present where is
    L{IPresence}'s business.
    """

    def subscribe(destination: str, subscriber: ISubscriber) -> None:
        """
        Add C{subscriber} to C{destination}; adding it twice changes nothing.
        """

    def unsubscribe(destination: str, subscriber: ISubscriber) -> None:
        """
        Remove C{subscriber} from C{destination}; unknown pairs are ignored.
        """

    def publish(destination: str, event: dict[str, Any]) -> None:
        """
        Deliver C{event} (JSON-serialisable) to every current subscriber of C{destination}.
        """

    def publish_encoded(destination: str, body: bytes, offset: int | None = None) -> None:
        """
        Deliver an event already encoded as JSON (C{body}, UTF-8) to every current
        subscriber of C{destination}; C{offset} is its place in the destination's stream,
        for a durable conversation event (see L{IEventFeed}).
        """


class IEventFeed(Interface):
    """
    Delivers the durable conversation events that the store committed to the hub, in
    commit order, each exactly once per process.
    """

    def catch_up() -> None:
        """
        Events were (or may have been) committed: publish every one committed since the
        last one published.  Calls while a read is under way are coalesced into one more
        read after it.
        """

    def committed() -> None:
        """
        This process committed events: have them published (by L{catch_up}, unless the
        store handed them over as it committed them, L{IStore.hand_off}), and have every
        other process that shares the store catch up too.
        """


class IBroadcast(Interface):
    """
    Small messages to every process of a cluster (each process holds one), fire and forget.

    Messages are JSON-serialisable values, kept small: a broadcast is a wake-up or an
    ephemeral event, never the carrier of anything that must arrive.  What is sent within
    one reactor turn travels together, in order (for PostgreSQL, one C{NOTIFY} transaction
    per turn at most); messages are received by every process, the sender included, in
    the order each sender sent them, tagged with the sender's L{node_id} so that a receiver
    can skip its own.  Messages sent while a process cannot listen are lost to it, which is
    why it is told when it listens again (L{set_reconnected}).
    """

    node_id = Attribute("This process's id (C{str}), sent with every message it sends.")

    connected = Attribute(
        "C{True} while this process is listening, so that it receives what is sent "
        "(for readiness checks)."
    )

    def start() -> Deferred[None]:
        """
        Begin listening, and keep doing so (reconnecting when the connection is lost)
        until L{stop}.

        @return: fires once the first attempt to listen has succeeded or failed; after a
            failure the attempts go on, and L{connected} stays C{False} until one succeeds.
        """

    def stop() -> Deferred[None]:
        """
        Send what is queued, then stop listening and sending.
        """

    def send(message: Any) -> bool:
        """
        Queue C{message} for every process; it leaves at the end of this reactor turn.

        @return: C{False} if the message is too big to send at all (it is dropped and
            logged); C{True} once queued, which does not promise delivery.
        """

    def set_receiver(receiver: Any) -> None:
        """
        Call C{receiver(node_id, message)} for each message received, in order.
        """

    def set_reconnected(callback: Any) -> None:
        """
        Call C{callback()} each time listening begins, the first time included: whatever
        was sent while this process was not listening has been lost to it.
        """


# --------------------------------------------------------------------------------------
# Domain services


class IPresence(Interface):
    """
    Who is where: the open sessions of each user, and which conversations each session has
    joined.

    Sessions and conversations are named by plain ids, so an implementation may keep this
    in one process or share it between processes through a store.  An implementation
    publishes through the hub (L{medichat.pubsub.topics}):

      - C{{"online": N}} on C{/v1/topic/online-employees} whenever the number of distinct
        employees with at least one open session changes;
      - C{{"userConnected": {"userId"}}} on a conversation's topic when a user's first
        subscription to it (over all of that user's sessions) appears, and
        C{{"userDisconnected": {"userId"}}} when their last one ends.

    Every method returns a L{Deferred}, which an in-process implementation fires at once.
    """

    def session_opened(session_key: str, user_id: str, employee: bool) -> Deferred[None]:
        """
        A session of C{user_id} was authenticated.

        @param session_key: unique among all live sessions, never reused.
        @param employee: whether the user counts towards the online employees.
        """

    def session_closed(session_key: str) -> Deferred[None]:
        """
        A session ended: everything it still had joined is left (as L{left} would), then it
        stops counting as online.  An unknown key is ignored.
        """

    def joined(session_key: str, conversation_id: str) -> Deferred[None]:
        """
        One more subscription of an open session to a conversation (a session may hold
        several to the same one).
        """

    def left(session_key: str, conversation_id: str) -> Deferred[None]:
        """
        One subscription of a session to a conversation ended; unknown pairs are ignored.
        """

    def subscribed_users(conversation_id: str) -> Deferred[frozenset[str]]:
        """
        The ids of the users with at least one subscription to the conversation.
        """

    def online_employees() -> Deferred[int]:
        """
        The number of distinct employees with at least one open session.
        """


class IWebhookSender(Interface):
    """
    Sends one signed webhook request to the configured receiver (the HTTP edge does,
    L{medichat.http.webhook_client}).
    """

    def send(headers: dict[str, str], body: bytes) -> Deferred[Any]:
        """
        POST C{body} (JSON) with C{headers} added.

        @return: the L{medichat.model.WebhookResponse}, whatever its status; fails if no
            response came (a timeout, a refused or reset connection).
        """

    def close() -> Deferred[None]:
        """
        Close the connections kept open to the receiver.
        """


class IConversations(Interface):
    """
    What a STOMP session needs of the conversations (implemented by
    L{medichat.domain.conversations.ConversationService}).
    """

    def check_participant(user: Any, conversation_id: str) -> Deferred[Any]:
        """
        The L{medichat.model.Conversation}, if the L{medichat.model.User} takes part in it.

        @raise medichat.errors.NotFound: (asynchronously) for a malformed or unknown id, or
            a conversation of another customer.
        """

    def subscribe(user: Any, conversation_id: str) -> Deferred[Any]:
        """
        As L{check_participant}, for a C{SUBSCRIBE} to the conversation's topic: an
        employee's is recorded in the access log (action C{subscribe}) before it fires.

        @raise medichat.errors.NotFound: (asynchronously) as L{check_participant}.
        """

    def typing(user: Any, conversation_id: str, started: bool) -> Deferred[None]:
        """
        Tell the conversation that the user started or stopped typing.

        @raise medichat.errors.NotFound: (asynchronously) as L{check_participant}.
        """

    def stream_start(
        conversation_id: str, offset: int | None, since: int | None, most: int
    ) -> Deferred[int]:
        """
        Where a replay of the conversation's stored events starts (for a subscriber the
        L{check_participant} check let in).

        @param offset: start at this offset (the oldest stored, if pruned); or L{None}.
        @param since: or start at the first event at or after this time (microseconds);
            L{None} with C{offset} L{None} means from the first stored event.
        @param most: replay at most this many of the events stored now: a start further
            back moves up to the newest C{most}.
        @return: the first offset to replay (past the last stored event if none is due).
        """

    def stream_events(conversation_id: str, offset: int, limit: int) -> Deferred[Sequence[Any]]:
        """
        Up to C{limit} stored events of the conversation (L{medichat.model.StoredEvent}s)
        from C{offset} on (inclusive), in offset order.
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
    observer = Attribute(
        "L{None}, or (for metrics) a callable given each operation's name as it starts, "
        "which returns a callable given the operation's result or L{Failure} as it ends."
    )

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
        Store a new L{medichat.model.Conversation}, with its C{conversationCreated} event
        for the employees' feed in the same transaction.
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

    def overview(
        viewer_id: str,
        customer_id: str | None,
        query: Any,
        order: str,
        descending: bool,
        limit: int,
        after: tuple[int, str] | None,
    ) -> Deferred[Sequence[tuple[Any, Any]]]:
        """
        Conversations as one user lists them: C{(conversation, overview)} pairs, each
        L{medichat.model.Overview} holding the user's unread count and the newest message,
        all read in one statement's snapshot.

        @param viewer_id: whose unread counts (messages by others after their read time).
        @param customer_id: only this customer's, or all when L{None}.
        @param query: a parsed RSQL tree over C{created}, C{customerId}, C{status},
            C{assigneeId} (C{""} is nobody) and C{lastActivity}, or L{None}.
        @param order: C{"created"} or C{"lastActivity"}; ties are broken by id.
        @param limit: at most this many.
        @param after: a cursor, the C{(order value, id)} of the last row of the previous
            page; rows strictly after it (in the chosen order) are returned.
        """

    # triage (each change writes a conversationUpdated event where it changed anything)

    def set_status(conversation_id: str, status: str, at: int) -> Deferred[Any]:
        """
        Set the conversation's status (C{"open"} or C{"resolved"}).

        @param at: the time of the change (the event's).
        @return: a L{medichat.model.TriageChange}, or L{None} for no such conversation.
        """

    def assign(
        conversation_id: str, assignee_id: str, assignee_name: str, take_over: bool, at: int
    ) -> Deferred[Any]:
        """
        Assign the conversation to an employee if nobody has it, or (C{take_over}) whoever
        has it; atomically, so that of concurrent calls exactly one finds it free.

        @return: a L{medichat.model.TriageChange} (unchanged if someone else has it and not
            C{take_over}, or it is the employee's already), or L{None} for no such
            conversation.
        """

    def unassign(conversation_id: str, assignee_id: str, at: int) -> Deferred[Any]:
        """
        Unassign the conversation if C{assignee_id} has it.

        @return: a L{medichat.model.TriageChange} (unchanged if that employee does not
            have it), or L{None} for no such conversation.
        """

    # messages

    def add_message(
        message: Any, idempotency_key: str | None, access: Any = None, *, notice: Any = None
    ) -> Deferred[tuple[Any, bool]]:
        """
        Commit a L{medichat.model.Message} (its C{seq} is assigned by the store).  Its
        conversation's C{last_activity} moves forward to the message's time and, for a
        customer's message, the conversation is C{open} again; a C{conversationUpdated}
        event is written where either changed.

        With an C{idempotency_key}, a second call with the same key and the same
        C{(conversation_id, user_id)} stores nothing and returns the first message.

        @param access: an L{medichat.model.AccessEntry} to record in the same transaction
            (a replay records it too), or L{None}.

        With a C{notice} (L{medichat.model.OfflineNotice}), the same transaction queues a
        webhook notification for each of the conversation's users (its customer and the
        employees who wrote in it) but the author and those it names as live.

        @return: C{(stored message, created)}; C{created} is C{False} for a replay.
        """

    def commit_message(commit: Any) -> Deferred[Any]:
        """
        Commit a L{medichat.model.MessageCommit} in one transaction: check that the poster
        takes part in the conversation, store the message (its C{seq} assigned) and its
        idempotency key, move the C{received} receipts of the users it reaches, and write
        the durable events (the message's, then one per receipt moved), all or nothing.
        Concurrent calls may share a transaction (a group commit); each still gets its own
        outcome or failure, and commit order is call order.

        @return: a L{medichat.model.MessageCommitted} (for a replayed idempotency key, the
            first message, C{created} C{False}, nothing written), or L{None} if the
            conversation does not exist or the poster may not post in it (nothing written).
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

    def mark_read(
        conversation_id: str, user_id: str, at: int, access: Any = None
    ) -> Deferred[bool]:
        """
        Move the user's read time forward to C{at}.

        @param access: an L{medichat.model.AccessEntry} to record in the same transaction
            (whether or not the time moves), or L{None}.

        @return: C{True} if the stored value changed (it never moves back).
        """

    def mark_received(
        conversation_id: str, user_id: str, at: int, access: Any = None
    ) -> Deferred[bool]:
        """
        Move the user's received time forward to C{at}.

        @param access: an L{medichat.model.AccessEntry} to record in the same transaction
            (whether or not the time moves), or L{None}.

        @return: C{True} if the stored value changed (it never moves back).
        """

    def receipts(conversation_id: str) -> Deferred[tuple[Sequence[Any], Sequence[Any]]]:
        """
        C{(read, received)}: lists of L{medichat.model.Receipt}, ordered by user id.
        """

    # durable events (written by add_message, mark_read and mark_received in their own
    # transaction, for every message stored and every receipt moved)

    def last_event_position() -> Deferred[int]:
        """
        The position of the newest event committed (0 if none ever was).
        """

    def hand_off(listener: Callable[[Sequence[Any]], object] | None) -> None:
        """
        From now on, once a transaction of this store has committed durable events, call
        C{listener} with them (L{medichat.model.StoredEvent}s, in position order, as
        L{events_after} would return them), on the reactor, before the operation that
        wrote them returns; L{None} stops that.  What another process (or another store
        on the same database) commits is not handed over.  A listener that raises is
        logged; the operation still succeeds.
        """

    def events_after(position: int, limit: int) -> Deferred[Sequence[Any]]:
        """
        Up to C{limit} committed L{medichat.model.StoredEvent}s with a position past
        C{position}, in position order: conversation events and the events of the
        employees' feed (L{medichat.model.CONVERSATION_FEED_KINDS}, offset 0) alike.
        Positions are gap-free and committed in order: once position M is visible, every
        smaller one is too (or pruned).
        """

    def conversation_events(
        conversation_id: str, offset: int, limit: int
    ) -> Deferred[Sequence[Any]]:
        """
        Up to C{limit} of the conversation's stored events with an offset of at least
        C{offset}, in offset order.
        """

    def stream_offsets(conversation_id: str, since: int | None) -> Deferred[tuple[int, int | None]]:
        """
        C{(last, first_since)}: the conversation's newest offset (0 if it has no events,
        or no such conversation), and the offset of its first stored event at or after
        time C{since} (L{None} if none, or if C{since} is L{None}).
        """

    def prune_events(before: int, batch: int = 1000) -> Deferred[int]:
        """
        Delete the events that happened before time C{before}, in batches of C{batch}
        (each its own transaction).

        @return: how many were deleted.
        """

    # the access log (NEN 7513): inserted, read, pruned by age; never updated

    def record_access(entries: Sequence[Any]) -> Deferred[None]:
        """
        Record L{medichat.model.AccessEntry}s, in one transaction.
        """

    def access_log(
        *,
        customer_id: str | None = None,
        employee_id: str | None = None,
        conversation_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        descending: bool = True,
        limit: int = 50,
        after: tuple[int, int] | None = None,
    ) -> Deferred[Sequence[Any]]:
        """
        Access-log rows (L{medichat.model.AccessEntry}s) ordered by C{(at, seq)}, newest
        first unless not C{descending}, matching every filter given.

        @param since: rows at or after this time.
        @param until: rows before this time.
        @param limit: at most this many.
        @param after: a cursor, the C{(at, seq)} of the last row of the previous page.
        """

    def prune_access_log(before: int, batch: int = 1000) -> Deferred[int]:
        """
        Delete the access-log rows recorded before time C{before}, in batches.

        @return: how many were deleted.
        """

    def erase_customer(customer_id: str, actor: Any) -> Deferred[Sequence[str]]:
        """
        Delete every conversation of the customer with its messages, receipts, events and
        idempotency keys, and record, in the same transaction, one access-log row per
        conversation erased: C{actor} (an L{medichat.model.AccessEntry}) with its
        conversation and customer ids filled in.  The customer's access-log rows stay.

        @return: the ids of the conversations erased, oldest first (none: no such
            customer).
        """

    # the webhook outbox (see medichat.store.webhook_scripts)

    def claim_webhooks(
        owner: str, now: int, lease_until: int, limit: int
    ) -> Deferred[Sequence[Any]]:
        """
        Claim up to C{limit} notifications due at C{now} that nobody holds (a lease that
        ran out counts as none), oldest due first, for C{owner} until C{lease_until}; of
        several processes claiming at once, each gets different ones.

        @return: the L{medichat.model.OutboxEntry}s, their attempt counted.
        """

    def webhook_delivered(seq: int) -> Deferred[bool]:
        """
        Remove a delivered notification.

        @return: C{False} if it was not there.
        """

    def webhook_retry(seq: int, owner: str, due: int, error: str) -> Deferred[bool]:
        """
        Release a claimed notification for another attempt at C{due}, recording C{error}.

        @return: C{False} if C{owner} no longer holds it.
        """

    def webhook_failed(seq: int, owner: str, now: int, error: str) -> Deferred[bool]:
        """
        Give a claimed notification up for good at C{now}, recording C{error}.

        @return: C{False} if C{owner} no longer holds it.
        """

    def prune_webhooks(before: int) -> Deferred[int]:
        """
        Delete the notifications given up before C{before}.

        @return: how many.
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

    # presence shared by several processes (see medichat.store.presence_scripts)

    def register_node(node_id: str, now: int) -> Deferred[bool]:
        """
        Record a heartbeat of this process's node at C{now}, adding its row if missing.

        @return: C{True} if the row was added (a new node, or one that the others had
            removed as dead, with its presence).
        """

    def reap_nodes(node_id: str, cutoff: int) -> Deferred[Any]:
        """
        Remove the other nodes whose last heartbeat is older than C{cutoff}, with their
        presence; of several callers, one claims each dead node.

        @return: the removed node ids and the L{medichat.model.PresenceChange} it made.
        """

    def leave_node(node_id: str) -> Deferred[Any]:
        """
        Remove a stopping node and its presence.

        @return: the L{medichat.model.PresenceChange} it made.
        """

    def restore_node(node_id: str, sessions: Sequence[Any]) -> Deferred[Any]:
        """
        Make a node's presence exactly C{sessions} (L{medichat.model.NodePresence}s).

        @return: the net L{medichat.model.PresenceChange}.
        """

    def presence_session_opened(
        node_id: str, session_key: str, user_id: str, employee: bool
    ) -> Deferred[int | None]:
        """
        Record an open session on a node.

        @return: the number of distinct employees online if it changed, else L{None}.
        """

    def presence_session_closed(node_id: str, session_key: str) -> Deferred[Any]:
        """
        Remove a session and its subscriptions.

        @return: the L{medichat.model.PresenceChange} it made.
        """

    def presence_joined(
        node_id: str, session_key: str, conversation_id: str, position: int
    ) -> Deferred[str | None]:
        """
        Record one more subscription of an open session to a conversation.

        @return: the user, if it is their first subscription to it on any node.
        """

    def presence_left(node_id: str, session_key: str, conversation_id: str) -> Deferred[str | None]:
        """
        Record one subscription fewer.

        @return: the user, if it was their last subscription to it on any node.
        """

    def presence_subscribed_users(conversation_id: str) -> Deferred[frozenset[str]]:
        """
        The users subscribed to a conversation on any node.
        """

    def presence_online_employees() -> Deferred[int]:
        """
        The distinct employees with an open session on any node.
        """

    def count_nodes() -> Deferred[int]:
        """
        How many nodes (server processes) are registered: the live ones, and the dead ones
        not yet removed.
        """
