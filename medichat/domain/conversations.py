"""
Conversations: the domain service behind both the REST API and the STOMP session.

It knows neither HTTP nor STOMP.  It checks who may do what, validates input and commits
through the store.  The conversation's events reach its topic
(C{/v1/topic/conversation/{id}}) in the seed's exact shapes::

    {"message": {"userId", "userName", "userRole", "id", "created", "message"}}
    {"read": {"userId", "readAt"}}
    {"received": {"userId", "receivedAt"}}
    {"startTyping": {"userId"}}  {"stopTyping": {"userId"}}

The durable ones (C{message}, C{read}, C{received}) are written by the store in the
transaction of the change they report; after each such commit the service asks the event
feed (L{IEventFeed}) to catch up, and the feed publishes them in commit order, each with
its offset in the conversation's stream.  Typing events are not stored: they go straight
to the hub.

Everything that writes for one conversation runs in that conversation's turn
(L{ConversationService._serialised}: one at a time, first come first served, as under a
L{DeferredLock}), so that this process commits one change of it at a time; a
conversation's queue is dropped as soon as nobody runs or waits in it, so memory stays
bounded by the number of conversations busy at this moment.

A participant is the conversation's customer, or any employee.  To anyone else a
conversation does not exist: asking for it, or for an id that is malformed or unknown,
raises L{NotFound} alike.

Triage (employees only): a conversation is C{open} or C{resolved} (a customer's message
opens it again), and may be claimed by one employee at a time.  The store decides each
change under the conversation's row lock and writes a C{conversationUpdated} event with it
(C{conversationCreated} when a conversation is opened), which the event feed publishes on
C{/v1/topic/conversations} after the commit, in commit order, like every durable event.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from attrs import define, evolve, field, frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from medichat import rsql
from medichat.domain.access import access_entry, conversation_access, customer_conversations
from medichat.errors import BadRequest, Conflict, Forbidden, NotFound
from medichat.interfaces import IConversations, IEventFeed, IHub, IPresence, IStore
from medichat.model import (
    STATUSES,
    AccessEntry,
    Conversation,
    Message,
    MessageCommit,
    OfflineNotice,
    Overview,
    Receipt,
    Status,
    StoredEvent,
    TriageChange,
    User,
    is_blank,
    is_unicode,
    is_uuid,
    micros,
    new_id,
    new_time_id,
    parse_time,
)
from medichat.pubsub.topics import conversation_topic

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIMIT",
    "MAX_MESSAGE_LENGTH",
    "ORDERS",
    "UNASSIGNED",
    "ConversationDetail",
    "ConversationPage",
    "ConversationService",
    "decode_cursor",
    "encode_cursor",
    "export_customer",
]

MAX_MESSAGE_LENGTH = 4000
"""The default limit on a chat message's length, in characters (code points)."""

MAX_LIMIT = 1000
"""The largest C{limit} a listing accepts."""

DEFAULT_LIST_LIMIT = 50
"""How many conversations one page of the list holds when no C{limit} is given."""

ORDERS = ("created", "-created", "lastActivity", "-lastActivity")
"""The accepted C{order} values of the list: by creation or by last activity, each
ascending or (C{-}) descending."""

MESSAGE_ORDERS = ("created", "-created")
"""The accepted C{order} values of a conversation's messages: oldest first, or newest first."""

ME = "me"
"""In a list's query, C{assigneeId==me} stands for the caller."""

UNASSIGNED = "none"
"""In a list's query, C{assigneeId==none} stands for nobody (unassigned)."""

_T = TypeVar("_T")
_log = Logger()

def _status(text: str) -> str:
    if text not in STATUSES:
        raise ValueError(f"must be one of {', '.join(STATUSES)}")
    return text


_VALUE_CHECKS: dict[str, Callable[[str], object]] = {
    "created": parse_time,
    "lastActivity": parse_time,
    "status": _status,
}


# ----------------------------------------------------------------------------------------
# What the service returns


@frozen
class ConversationDetail:
    """
    A conversation with (a selection of) its messages and its receipts.

    @ivar conversation: the conversation itself.
    @ivar messages: its messages, in the order asked for.
    @ivar read: who read it when, by user id.
    @ivar received: who received it when, by user id.
    """

    conversation: Conversation
    messages: Sequence[Message]
    read: Sequence[Receipt]
    received: Sequence[Receipt]


@frozen
class ConversationPage:
    """
    One page of a conversation listing.

    @ivar conversations: the conversations on this page, in the order asked for.
    @ivar next: the cursor of the following page (see L{encode_cursor}), or L{None} on the
        last page.
    @ivar overviews: what the caller sees of each conversation besides it (unread count,
        newest message), by conversation id.
    """

    conversations: Sequence[Conversation]
    next: str | None
    overviews: Mapping[str, Overview] = field(factory=dict)


# ----------------------------------------------------------------------------------------
# Cursors


# A cursor of a list by last activity starts with this, so that it cannot be taken for
# one of a list by creation (whose cursors are unchanged since before that order existed).
_ACTIVITY_CURSOR = "a"


def encode_cursor(conversation: Conversation, key: str = "created") -> str:
    """
    The opaque paging cursor that points just after C{conversation} in a list ordered by
    C{key}: URL-safe base64, unpadded, of C{"<created microseconds>.<id>"}, or of
    C{"a<last activity microseconds>.<id>"} for C{key} C{"lastActivity"}.
    """
    if key == "lastActivity":
        raw = f"{_ACTIVITY_CURSOR}{conversation.last_activity}.{conversation.id}"
    else:
        raw = f"{conversation.created}.{conversation.id}"
    return base64.urlsafe_b64encode(raw.encode("ascii")).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, key: str = "created") -> tuple[int, str]:
    """
    The C{(order value, id)} a cursor from L{encode_cursor} for C{key} points after.

    @raise BadRequest: if C{cursor} did not come from L{encode_cursor}, or came from a
        list in another order.
    """
    malformed = BadRequest("cursor: malformed; use the 'next' value of the previous page")
    if not cursor or len(cursor) > 200 or not cursor.isascii():
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise malformed from None
    by_activity = raw.startswith(_ACTIVITY_CURSOR)
    if by_activity != (key == "lastActivity"):
        raise BadRequest("cursor: from a list in another order; start again without it")
    if by_activity:
        raw = raw[len(_ACTIVITY_CURSOR):]
    created_text, _, conversation_id = raw.partition(".")
    # At most 18 digits: the store keeps times as 64-bit integers (year 9999 has 18).
    if (not created_text.isdigit() or not created_text.isascii() or len(created_text) > 18
            or not is_uuid(conversation_id)):
        raise malformed
    return int(created_text), conversation_id.lower()


# ----------------------------------------------------------------------------------------
# Validation


def _parse_query(text: str | None, allowed: Sequence[str]) -> rsql.Node | None:
    """
    Parse and check an RSQL filter; an absent or empty one means "everything".
    """
    if text is None or text == "":
        return None
    try:
        node = rsql.parse(text)
        rsql.check_fields(node, allowed)
        rsql.check_values(node, _VALUE_CHECKS)
    except rsql.RSQLError as e:
        raise BadRequest(f"query: {e}") from None
    return node


def _descending(order: str) -> bool:
    if order not in MESSAGE_ORDERS:
        raise BadRequest("order: must be 'created' or '-created'")
    return order == "-created"


def _list_order(order: str) -> tuple[str, bool]:
    """The C{(key, descending)} of a list's C{order}."""
    if order not in ORDERS:
        raise BadRequest(f"order: must be one of {', '.join(repr(o) for o in ORDERS)}")
    return order.lstrip("-"), order.startswith("-")


def _resolve_assignee(node: rsql.Node, user: User) -> rsql.Node:
    """
    The query with C{assigneeId}'s C{me} turned into the caller's id and C{none} into
    the store's "nobody" (C{""}).
    """
    if isinstance(node, rsql.Comparison):
        if node.field != "assigneeId":
            return node
        names = {ME: user.user_id, UNASSIGNED: ""}
        return evolve(node, values=tuple(names.get(v, v) for v in node.values))
    return evolve(node, children=tuple(_resolve_assignee(c, user) for c in node.children))


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}")


def _assigned_elsewhere(conversation: Conversation, releasing: bool = False) -> Conflict:
    """
    The 409 of a claim or release of a conversation that another employee has: it names
    them in C{detail} and as the problem's C{assigneeId} and C{assigneeName}.
    """
    detail = (
        f"conversation is assigned to {conversation.assignee_name} ({conversation.assignee_id})"
    )
    if releasing:
        detail += "; only they can release it"
    return Conflict(
        detail,
        (("assigneeId", conversation.assignee_id), ("assigneeName", conversation.assignee_name)),
    )


# ----------------------------------------------------------------------------------------
# The service


@implementer(IConversations)
@define
class ConversationService:
    """
    Conversations, messages and receipts, for customers and employees.

    @ivar store: where conversations and their durable events live.
    @ivar hub: where typing events are published.
    @ivar clock: the source of every time stamp.
    @ivar presence: who is subscribed to a conversation, to mark new messages received for
        them.
    @ivar feed: publishes the durable events once committed; told after each commit.
    @ivar max_message_length: the longest chat message accepted, in characters.
    @ivar messages_committed: messages this process committed since it started (a repeat
        of an idempotent POST is not counted again), for metrics.
    @ivar presence_in_store: C{True} when L{presence} keeps who is subscribed in
        L{store}'s shared presence tables (several processes on one database): a message's
        transaction then reads them itself rather than asking L{presence} first.
    @ivar allow_reassign: an employee may claim a conversation that another one has
        (C{--allow-reassign}); each take-over is logged.
    @ivar webhook_coalesce: with webhooks on, the seconds during which further messages
        for a recipient join a notification not sent yet (0: none join, each leaves at
        once); L{None} with webhooks off.  See L{medichat.domain.webhooks}.
    """

    store: IStore
    hub: IHub
    clock: IReactorTime
    presence: IPresence
    feed: IEventFeed
    max_message_length: int = MAX_MESSAGE_LENGTH
    presence_in_store: bool = False
    allow_reassign: bool = False
    webhook_coalesce: float | None = None
    # Per busy conversation: the turns waiting after the one running (see _serialised).
    _locks: dict[str, deque[Deferred[None]]] = field(factory=dict, init=False, repr=False)
    messages_committed: int = field(default=0, init=False)

    # -- helpers --------------------------------------------------------------------------

    def _now(self) -> int:
        return micros(self.clock.seconds())

    def _serialised(
        self, conversation_id: str, work: Callable[[], Coroutine[Any, Any, _T]]
    ) -> Deferred[_T]:
        """
        Run C{work} in the conversation's turn: at once if nothing of the conversation
        runs, else after everything that asked before it, as a L{DeferredLock} would
        (which cost a chat message 2 % of its instructions more: two more L{Deferred}s,
        C{maybeDeferred} and their callbacks).  Cancelling the result while it waits takes
        it out of the queue; once it runs, cancels C{work}.  The conversation's queue is
        dropped when the last one has run.
        """
        waiting = self._locks.get(conversation_id)
        if waiting is None:
            self._locks[conversation_id] = deque()
            return self._run_turn(conversation_id, work)
        turn: Deferred[None] = Deferred(lambda cancelled: waiting.remove(cancelled))
        waiting.append(turn)
        started: Deferred[_T] = turn.addCallback(
            lambda _: self._run_turn(conversation_id, work)
        )
        return started

    def _run_turn(
        self, conversation_id: str, work: Callable[[], Coroutine[Any, Any, _T]]
    ) -> Deferred[_T]:
        """Run C{work}, the conversation's turn; when it is done, start the next."""
        running = Deferred.fromCoroutine(work())
        running.addBoth(self._next_turn, conversation_id)
        return running

    def _next_turn(self, result: _T, conversation_id: str) -> _T:
        waiting = self._locks[conversation_id]
        if waiting:
            waiting.popleft().callback(None)
        else:
            del self._locks[conversation_id]
        return result

    def _committed(self) -> None:
        """
        A durable event was committed: have the feed publish it.  A failing feed must not
        turn a committed write into an error for the writer (its poll catches up later),
        so the failure is logged.
        """
        try:
            self.feed.committed()
        except Exception:
            _log.failure("the event feed failed to catch up")

    def _publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        """
        Publish an ephemeral event; a failing hub must not turn the call into an error,
        so the failure is logged.
        """
        try:
            self.hub.publish(conversation_topic(conversation_id), event)
        except Exception:
            _log.failure(
                "publishing {kind} to conversation {conversation} failed",
                kind=next(iter(event)),
                conversation=conversation_id,
            )

    async def _participant(self, user: User, conversation_id: str) -> Conversation:
        if not isinstance(conversation_id, str) or not is_uuid(conversation_id):
            raise NotFound("no such conversation")
        conversation = await self.store.get_conversation(conversation_id.lower())
        if conversation is None:
            raise NotFound("no such conversation")
        if not user.is_employee and conversation.customer_id != user.user_id:
            raise NotFound("no such conversation")
        return conversation

    async def _mark(
        self, user_id: str, conversation_id: str, kind: str, access: AccessEntry | None = None
    ) -> bool:
        """
        Move the user's C{read} or C{received} time forward to now; if the stored value
        changed, the store wrote the event with it, and the feed publishes it.  Call with
        the conversation's lock held.

        @param access: the access-log row to record in the same transaction, if any.
        """
        at = self._now()
        if kind == "read":
            changed = await self.store.mark_read(conversation_id, user_id, at, access)
        else:
            changed = await self.store.mark_received(conversation_id, user_id, at, access)
        if changed:
            self._committed()
        return bool(changed)

    def _access(self, user: User, conversation: Conversation, action: str) -> AccessEntry | None:
        """
        The access-log row of C{user} doing C{action} on C{conversation} now (L{None} for a
        customer), for a store operation to record in its transaction.
        """
        return access_entry(user, conversation, action, self._now())

    async def record_access(
        self, user: User, conversations: Sequence[Conversation], action: str
    ) -> None:
        """
        Record that C{user} did C{action} on each of C{conversations}, in one transaction
        of its own, before the caller hands anything out (nothing for a customer).  For
        actions whose own transaction cannot carry the row (C{list}, C{subscribe}, ...).
        """
        at = self._now()
        entries = [access_entry(user, c, action, at) for c in conversations]
        rows = [e for e in entries if e is not None]
        if rows:
            await self.store.record_access(rows)

    # -- conversations --------------------------------------------------------------------

    def subscribe(self, user: User, conversation_id: str) -> Deferred[Conversation]:
        """
        Check that C{user} takes part in the conversation and, for an employee, record a
        C{subscribe} access: what the STOMP session calls on C{SUBSCRIBE} to its topic
        (what the subscription then delivers is covered by that row).

        @raise NotFound: (asynchronously) as L{check_participant}.
        """

        async def subscribe() -> Conversation:
            conversation = await self._participant(user, conversation_id)
            await self.record_access(user, [conversation], "subscribe")
            return conversation

        return Deferred.fromCoroutine(subscribe())

    def check_participant(self, user: User, conversation_id: str) -> Deferred[Conversation]:
        """
        The conversation, if C{user} takes part in it (the STOMP session calls this on
        C{SUBSCRIBE}).

        @raise NotFound: (asynchronously) for a malformed or unknown id, or a conversation
            of another customer.
        """
        return Deferred.fromCoroutine(self._participant(user, conversation_id))

    def create(self, user: User) -> Deferred[Conversation]:
        """
        Open a new conversation for a customer.

        Employees answer conversations but do not open them: a conversation belongs to
        exactly one customer.

        @raise Forbidden: (asynchronously) if C{user} is an employee.
        """

        async def create() -> Conversation:
            if user.is_employee:
                raise Forbidden("only customers open conversations")
            conversation = Conversation(
                id=new_id(),
                created=self._now(),
                customer_id=user.user_id,
                customer_name=user.user_name,
            )
            await self.store.create_conversation(conversation)
            self._committed()  # its conversationCreated event
            return conversation

        return Deferred.fromCoroutine(create())

    def get(
        self,
        user: User,
        conversation_id: str,
        *,
        order: str = "created",
        limit: int | None = None,
        query: str | None = None,
    ) -> Deferred[ConversationDetail]:
        """
        The conversation with its messages and receipts; marks it received for C{user}
        first, publishing C{received} if that changed anything.

        @param order: C{"created"} (oldest first) or C{"-created"}.
        @param limit: at most this many messages (1 to L{MAX_LIMIT}); all when L{None}.
        @param query: an RSQL filter over the messages' C{created}, C{userId},
            C{userRole} and C{id}; all messages when L{None} or empty.
        @raise NotFound: (asynchronously) as L{check_participant}.
        @raise BadRequest: (asynchronously) for a bad C{order}, C{limit} or C{query}.
        """

        async def get() -> ConversationDetail:
            conversation = await self._participant(user, conversation_id)
            descending = _descending(order)
            _check_limit(limit)
            node = _parse_query(query, rsql.MESSAGE_FIELD_NAMES)
            access = self._access(user, conversation, "view")
            await self._serialised(
                conversation.id,
                lambda: self._mark(user.user_id, conversation.id, "received", access),
            )
            try:
                messages = await self.store.list_messages(conversation.id, node, descending, limit)
            except rsql.RSQLError as e:
                raise BadRequest(f"query: {e}") from None
            read, received = await self.store.receipts(conversation.id)
            return ConversationDetail(conversation, messages, read, received)

        return Deferred.fromCoroutine(get())

    def list_conversations(
        self,
        user: User,
        query: str | None = None,
        order: str = "created",
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Deferred[ConversationPage]:
        """
        One page of the conversations C{user} takes part in: a customer's own, or every
        conversation for an employee.

        @param query: an RSQL filter over C{created}, C{customerId}, C{status},
            C{assigneeId} (C{me} is the caller, C{none} nobody) and C{lastActivity}.
        @param order: C{"created"} (oldest first), C{"-created"}, C{"lastActivity"} or
            C{"-lastActivity"} (most recently active first).
        @param limit: the page size, 1 to L{MAX_LIMIT}; L{DEFAULT_LIST_LIMIT} when L{None}.
        @param cursor: the C{next} value of the previous page (in the same order), or
            L{None} for the first.
        @return: the page, with the caller's unread count and the newest message of each
            conversation; its C{next} is L{None} on the last page.
        @raise BadRequest: (asynchronously) for a bad C{query}, C{order}, C{limit} or
            C{cursor}.
        """

        async def list_() -> ConversationPage:
            key, descending = _list_order(order)
            _check_limit(limit)
            page = DEFAULT_LIST_LIMIT if limit is None else limit
            node = _parse_query(query, rsql.CONVERSATION_FIELD_NAMES)
            if node is not None:
                node = _resolve_assignee(node, user)
            after = None if cursor is None else decode_cursor(cursor, key)
            customer_id = None if user.is_employee else user.user_id
            try:
                rows = await self.store.overview(
                    user.user_id, customer_id, node, key, descending, page + 1, after
                )
            except rsql.RSQLError as e:
                raise BadRequest(f"query: {e}") from None
            rows = list(rows)
            next_cursor = encode_cursor(rows[page - 1][0], key) if len(rows) > page else None
            # One row per conversation listed: NEN 7513 asks whose data was seen.
            await self.record_access(user, [c for c, _ in rows[:page]], "list")
            return ConversationPage(
                [conversation for conversation, _ in rows[:page]],
                next_cursor,
                {conversation.id: overview for conversation, overview in rows[:page]},
            )

        return Deferred.fromCoroutine(list_())

    # -- triage ---------------------------------------------------------------------------

    async def _triage(
        self,
        user: User,
        conversation_id: str,
        action: str,
        change: Callable[[str, int], Deferred[TriageChange | None]],
    ) -> TriageChange:
        """
        Run one triage change of the store for an employee, under the conversation's
        lock, and have the feed publish its event if it changed anything.

        @param action: C{resolve}, C{reopen}, C{claim} or C{release}, for the log.
        @raise Forbidden: if C{user} is a customer.
        @raise NotFound: for a malformed or unknown id.
        """
        if not user.is_employee:
            raise Forbidden("only employees triage conversations")
        conversation = await self._participant(user, conversation_id)
        # Recorded before the change (NEN 7513): an attempt that then fails, a claim that
        # finds the conversation taken, was an access too.
        await self.record_access(user, [conversation], action)

        async def run() -> TriageChange:
            result = await change(conversation.id, self._now())
            if result is None:
                raise NotFound("no such conversation")
            if result.changed:
                self._committed()
                _log.info(
                    "employee {employee}: {action} conversation {conversation}",
                    employee=user.user_id,
                    action=action,
                    conversation=conversation.id,
                )
            return result

        return await self._serialised(conversation.id, run)

    def set_status(
        self, user: User, conversation_id: str, status: Status
    ) -> Deferred[Conversation]:
        """
        Resolve (C{"resolved"}) or reopen (C{"open"}) a conversation; setting the status
        it has already changes nothing and publishes nothing.

        @return: the conversation as it is now.
        @raise Forbidden: (asynchronously) for a customer.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """

        async def set_status() -> Conversation:
            result = await self._triage(
                user,
                conversation_id,
                "resolve" if status == "resolved" else "reopen",
                lambda cid, at: self.store.set_status(cid, status, at),
            )
            return result.after

        return Deferred.fromCoroutine(set_status())

    def claim(self, user: User, conversation_id: str) -> Deferred[Conversation]:
        """
        Assign the conversation to C{user}, if nobody has it (or it is C{user}'s already).
        The store decides under the conversation's row lock, so of any number of
        concurrent claims, on any number of processes, exactly one wins.  With
        L{allow_reassign}, C{user} takes it over from whoever has it, and that is logged.

        @return: the conversation as it is now.
        @raise Conflict: (asynchronously) naming the assignee, if another employee has it
            and reassigning is not allowed.
        @raise Forbidden: (asynchronously) for a customer.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """

        async def claim() -> Conversation:
            result = await self._triage(
                user,
                conversation_id,
                "claim",
                lambda cid, at: self.store.assign(
                    cid, user.user_id, user.user_name, self.allow_reassign, at
                ),
            )
            before, after = result.before, result.after
            if after.assignee_id != user.user_id:
                raise _assigned_elsewhere(after)
            if before.assignee_id and before.assignee_id != user.user_id:
                _log.info(
                    "employee {employee} took conversation {conversation} over from {previous}",
                    employee=user.user_id,
                    conversation=after.id,
                    previous=before.assignee_id,
                )
            return after

        return Deferred.fromCoroutine(claim())

    def release(self, user: User, conversation_id: str) -> Deferred[Conversation]:
        """
        Unassign the conversation, if C{user} has it.

        @return: the conversation as it is now.
        @raise Conflict: (asynchronously) if C{user} does not have it (naming who does,
            if anyone).
        @raise Forbidden: (asynchronously) for a customer.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """

        async def release() -> Conversation:
            result = await self._triage(
                user,
                conversation_id,
                "release",
                lambda cid, at: self.store.unassign(cid, user.user_id, at),
            )
            if not result.changed:
                if result.after.assignee_id:
                    raise _assigned_elsewhere(result.after, releasing=True)
                raise Conflict("conversation is not assigned to anyone")
            return result.after

        return Deferred.fromCoroutine(release())

    # -- messages and receipts ------------------------------------------------------------

    def validate_message(self, text: object) -> str:
        """
        Check a chat message's text.

        @return: C{text}, if it is a string that is neither empty nor blank, at most
            L{max_message_length} characters long, valid Unicode, and free of NUL.
        @raise BadRequest: saying which rule it breaks.
        """
        if not isinstance(text, str):
            raise BadRequest("message: must be a string")
        if text == "":
            raise BadRequest("message: must not be empty")
        if len(text) > self.max_message_length:
            raise BadRequest(f"message: longer than {self.max_message_length} characters")
        if not is_unicode(text):
            raise BadRequest("message: not valid Unicode (lone surrogate)")
        if "\x00" in text:
            # PostgreSQL cannot store NUL in text; refuse it on every store alike.
            raise BadRequest("message: must not contain NUL characters")
        if is_blank(text):
            raise BadRequest("message: must not be blank")
        return text

    def post_message(
        self, user: User, conversation_id: str, text: object, idempotency_key: str | None = None
    ) -> Deferred[Message]:
        """
        Add a message to a conversation.

        Everything is one transaction (L{IStore.commit_message}, shared with concurrent
        posts by the store's group commit): the participant check, the message, its
        idempotency key, and, for every other user subscribed to the conversation at
        that moment (as L{presence} knows it), the conversation marked received; then
        the feed publishes the C{message} event and the C{received} events of the
        receipts that moved.  A replay, with an C{idempotency_key} used before by this
        user in this conversation, stores and publishes nothing and returns the first
        message.

        @raise BadRequest: (asynchronously) if C{text} breaks a rule of
            L{validate_message}.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """
        # Checked here, failing the Deferred: one coroutine fewer on every message's way.
        try:
            valid = self.validate_message(text)
            if not isinstance(conversation_id, str) or not is_uuid(conversation_id):
                raise NotFound("no such conversation")
        except Exception:
            return fail()
        known = conversation_id.lower()
        return self._serialised(
            known, lambda: self._commit_message(user, known, valid, idempotency_key)
        )

    async def _commit_message(
        self, user: User, conversation_id: str, text: str, idempotency_key: str | None
    ) -> Message:
        created = self._now()
        message = Message(
            # Time-ordered: the messages' index on their ids grows at its end.
            id=new_time_id(created // 1000),
            conversation_id=conversation_id,
            created=created,
            user_id=user.user_id,
            user_name=user.user_name,
            user_role=user.user_role,
            message=text,
        )
        subscribed: frozenset[str] = frozenset()
        if not self.presence_in_store or self.webhook_coalesce is not None:
            try:
                subscribed = frozenset(await self.presence.subscribed_users(conversation_id))
            except Exception:
                # The message matters; the receipts are a courtesy that a later GET or
                # POST .../received makes up for, and a notification too many is better
                # than a customer who never hears.
                _log.failure("who is in conversation {conversation}?", conversation=conversation_id)
        received_by: tuple[str, ...] | None = None
        if not self.presence_in_store:
            received_by = tuple(sorted(subscribed - {user.user_id}))
        # The store fills in the conversation's customer, which it reads anyway.
        access = conversation_access(user, conversation_id, "", "message", message.created)
        commit = MessageCommit(
            message,
            idempotency_key,
            received_by,
            access=access,
            notice=self._offline_notice(subscribed, message),
        )
        outcome = await self.store.commit_message(commit)
        if outcome is None:
            raise NotFound("no such conversation")
        if outcome.created:
            self.messages_committed += 1
            self._committed()
        return outcome.message  # type: ignore[no-any-return]

    def _offline_notice(
        self, live: frozenset[str], message: Message
    ) -> OfflineNotice | None:
        """
        With webhooks on, what the message's transaction needs to notify the users of the
        conversation who are not subscribed to it: who is (C{live}, asked before the
        commit, so that the notifications commit with the message).
        """
        if self.webhook_coalesce is None:
            return None
        return OfflineNotice(
            live=live,
            due=message.created + micros(self.webhook_coalesce),
            coalesce=self.webhook_coalesce > 0,
        )

    def mark_read(self, user: User, conversation_id: str) -> Deferred[bool]:
        """
        Mark the conversation read by C{user} now; publishes C{read} if the stored time
        moved (it only moves forward).

        @return: whether it changed.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """
        return self._mark_as(user, conversation_id, "read")

    def mark_received(self, user: User, conversation_id: str) -> Deferred[bool]:
        """
        Mark the conversation received by C{user} now; publishes C{received} if the stored
        time moved (it only moves forward).

        @return: whether it changed.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """
        return self._mark_as(user, conversation_id, "received")

    def _mark_as(self, user: User, conversation_id: str, kind: str) -> Deferred[bool]:
        async def mark() -> bool:
            conversation = await self._participant(user, conversation_id)
            access = self._access(user, conversation, kind)
            return await self._serialised(
                conversation.id, lambda: self._mark(user.user_id, conversation.id, kind, access)
            )

        return Deferred.fromCoroutine(mark())

    # -- stream replay ----------------------------------------------------------------------

    def stream_start(
        self, conversation_id: str, offset: int | None, since: int | None, most: int
    ) -> Deferred[int]:
        """
        Where a replay of the conversation's stored events starts: at C{offset}, at the
        first event at or after C{since}, or (both L{None}) at the first stored; and no
        further back than the newest C{most} events stored now.  An offset that was
        pruned starts at the oldest kept, as L{stream_events} skips what is gone.

        @return: the first offset to replay; past the newest when nothing is due.
        """

        async def start() -> int:
            last, first_since = await self.store.stream_offsets(conversation_id, since)
            if offset is not None:
                begin = offset
            elif since is not None:
                begin = last + 1 if first_since is None else first_since
            else:
                begin = 1
            # Past the newest means "from the next one"; further back than the newest
            # most, from the newest most.
            return max(min(begin, last + 1), last - most + 1, 1)

        return Deferred.fromCoroutine(start())

    def stream_events(
        self, conversation_id: str, offset: int, limit: int
    ) -> Deferred[Sequence[StoredEvent]]:
        """
        Up to C{limit} stored events of the conversation from C{offset} on, in offset
        order (one page of a replay).
        """
        d: Deferred[Sequence[StoredEvent]] = self.store.conversation_events(
            conversation_id, offset, limit
        )
        return d

    def typing(self, user: User, conversation_id: str, started: bool) -> Deferred[None]:
        """
        Tell the conversation that C{user} started or stopped typing (C{startTyping} /
        C{stopTyping}); nothing is stored.

        @raise NotFound: (asynchronously) as L{check_participant}.
        """

        async def typing() -> None:
            conversation = await self._participant(user, conversation_id)
            kind = "startTyping" if started else "stopTyping"

            async def publish() -> None:
                self._publish(conversation.id, {kind: {"userId": user.user_id}})

            await self._serialised(conversation.id, publish)

        return Deferred.fromCoroutine(typing())


async def export_customer(
    store: IStore, customer_id: str, actor: AccessEntry
) -> list[ConversationDetail]:
    """
    Every conversation of a customer with all its messages and receipts, oldest first
    (their data, for a subject access request); records one C{export} access-log row per
    conversation (C{actor} with the ids filled in) before returning it.

    @raise NotFound: if the customer has no conversation.
    """
    exported = []
    for conversation in await customer_conversations(store, customer_id):
        messages = await store.list_messages(conversation.id, None, False, None)
        read, received = await store.receipts(conversation.id)
        exported.append(ConversationDetail(conversation, messages, read, received))
    await store.record_access(
        [
            evolve(actor, conversation_id=d.conversation.id, customer_id=customer_id)
            for d in exported
        ]
    )
    return exported
