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

Everything that writes for one conversation runs under that conversation's own
L{DeferredLock}, so that this process commits one change of it at a time; the lock is
dropped as soon as nobody holds or waits for it, so memory stays bounded by the number of
conversations busy at this moment.

A participant is the conversation's customer, or any employee.  To anyone else a
conversation does not exist: asking for it, or for an id that is malformed or unknown,
raises L{NotFound} alike.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from medichat import rsql
from medichat.errors import BadRequest, Forbidden, NotFound
from medichat.interfaces import IConversations, IEventFeed, IHub, IPresence, IStore
from medichat.model import (
    Conversation,
    Message,
    OfflineNotice,
    Receipt,
    StoredEvent,
    User,
    is_blank,
    is_unicode,
    is_uuid,
    micros,
    new_id,
    parse_time,
)
from medichat.pubsub.topics import conversation_topic

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIMIT",
    "MAX_MESSAGE_LENGTH",
    "ORDERS",
    "ConversationDetail",
    "ConversationPage",
    "ConversationService",
    "decode_cursor",
    "encode_cursor",
]

MAX_MESSAGE_LENGTH = 4000
"""The default limit on a chat message's length, in characters (code points)."""

MAX_LIMIT = 1000
"""The largest C{limit} a listing accepts."""

DEFAULT_LIST_LIMIT = 50
"""How many conversations one page of the list holds when no C{limit} is given."""

ORDERS = ("created", "-created")
"""The accepted C{order} values: oldest first, or newest first."""

_T = TypeVar("_T")
_log = Logger()

_VALUE_CHECKS: dict[str, Callable[[str], object]] = {"created": parse_time}


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
    """

    conversations: Sequence[Conversation]
    next: str | None


# ----------------------------------------------------------------------------------------
# Cursors


def encode_cursor(conversation: Conversation) -> str:
    """
    The opaque paging cursor that points just after C{conversation}: URL-safe base64,
    unpadded, of C{"<created microseconds>.<id>"}.
    """
    raw = f"{conversation.created}.{conversation.id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """
    The C{(created, id)} a cursor from L{encode_cursor} points after.

    @raise BadRequest: if C{cursor} did not come from L{encode_cursor}.
    """
    malformed = BadRequest("cursor: malformed; use the 'next' value of the previous page")
    if not cursor or len(cursor) > 200 or not cursor.isascii():
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise malformed from None
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
    if order not in ORDERS:
        raise BadRequest("order: must be 'created' or '-created'")
    return order == "-created"


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}")


# ----------------------------------------------------------------------------------------
# The service


@define
class _LockEntry:
    lock: DeferredLock = field(factory=DeferredLock)
    users: int = 0


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
    webhook_coalesce: float | None = None
    _locks: dict[str, _LockEntry] = field(factory=dict, init=False, repr=False)

    # -- helpers --------------------------------------------------------------------------

    def _now(self) -> int:
        return micros(self.clock.seconds())

    def _serialised(
        self, conversation_id: str, work: Callable[[], Coroutine[Any, Any, _T]]
    ) -> Deferred[_T]:
        """
        Run C{work} while holding the conversation's lock, creating the lock on first use
        and dropping it when the last holder or waiter is done.
        """
        entry = self._locks.get(conversation_id)
        if entry is None:
            entry = self._locks[conversation_id] = _LockEntry()
        entry.users += 1

        def done(result: object) -> object:
            entry.users -= 1
            if entry.users == 0 and self._locks.get(conversation_id) is entry:
                del self._locks[conversation_id]
            return result

        d: Deferred[_T] = entry.lock.run(lambda: Deferred.fromCoroutine(work()))
        d.addBoth(done)
        return d

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

    async def _mark(self, user_id: str, conversation_id: str, kind: str) -> bool:
        """
        Move the user's C{read} or C{received} time forward to now; if the stored value
        changed, the store wrote the event with it, and the feed publishes it.  Call with
        the conversation's lock held.
        """
        at = self._now()
        if kind == "read":
            changed = await self.store.mark_read(conversation_id, user_id, at)
        else:
            changed = await self.store.mark_received(conversation_id, user_id, at)
        if changed:
            self._committed()
        return bool(changed)

    # -- conversations --------------------------------------------------------------------

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
            await self._serialised(
                conversation.id, lambda: self._mark(user.user_id, conversation.id, "received")
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

        @param query: an RSQL filter over C{created} and C{customerId}.
        @param order: C{"created"} (oldest first) or C{"-created"}.
        @param limit: the page size, 1 to L{MAX_LIMIT}; L{DEFAULT_LIST_LIMIT} when L{None}.
        @param cursor: the C{next} value of the previous page, or L{None} for the first.
        @return: the page; its C{next} is L{None} on the last page.
        @raise BadRequest: (asynchronously) for a bad C{query}, C{order}, C{limit} or
            C{cursor}.
        """

        async def list_() -> ConversationPage:
            descending = _descending(order)
            _check_limit(limit)
            page = DEFAULT_LIST_LIMIT if limit is None else limit
            node = _parse_query(query, rsql.CONVERSATION_FIELD_NAMES)
            after = None if cursor is None else decode_cursor(cursor)
            customer_id = None if user.is_employee else user.user_id
            try:
                rows = await self.store.list_conversations(
                    customer_id, node, descending, page + 1, after
                )
            except rsql.RSQLError as e:
                raise BadRequest(f"query: {e}") from None
            rows = list(rows)
            next_cursor = encode_cursor(rows[page - 1]) if len(rows) > page else None
            return ConversationPage(rows[:page], next_cursor)

        return Deferred.fromCoroutine(list_())

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

        After the commit, publishes the C{message} event and then, for every other user
        subscribed to the conversation at that moment (as L{presence} knows it), marks it
        received (with a C{received} event where that changed anything).  A replay, with an
        C{idempotency_key} used before by this user in this conversation, stores and
        publishes nothing and returns the first message.

        @raise BadRequest: (asynchronously) if C{text} breaks a rule of
            L{validate_message}.
        @raise NotFound: (asynchronously) as L{check_participant}.
        """

        async def post() -> Message:
            valid = self.validate_message(text)
            conversation = await self._participant(user, conversation_id)
            return await self._serialised(
                conversation.id,
                lambda: self._commit_message(user, conversation, valid, idempotency_key),
            )

        return Deferred.fromCoroutine(post())

    async def _commit_message(
        self, user: User, conversation: Conversation, text: str, idempotency_key: str | None
    ) -> Message:
        message = Message(
            id=new_id(),
            conversation_id=conversation.id,
            created=self._now(),
            user_id=user.user_id,
            user_name=user.user_name,
            user_role=user.user_role,
            message=text,
        )
        notice = await self._offline_notice(conversation, message)
        stored, created = await self.store.add_message(message, idempotency_key, notice)
        if not created:
            return stored  # type: ignore[no-any-return]
        self._committed()
        try:
            subscribed = await self.presence.subscribed_users(conversation.id)
        except Exception:
            # As below: the message is committed; the receipts are a courtesy.
            _log.failure("who is in conversation {conversation}?", conversation=conversation.id)
            subscribed = frozenset()
        for other in sorted(subscribed - {user.user_id}):
            try:
                await self._mark(other, conversation.id, "received")
            except Exception:
                # The message is committed and must be answered as such; the receipt is a
                # courtesy that a later GET or POST .../received makes up for.
                _log.failure(
                    "auto-received for {user} in {conversation} failed",
                    user=other,
                    conversation=conversation.id,
                )
        return stored  # type: ignore[no-any-return]

    async def _offline_notice(
        self, conversation: Conversation, message: Message
    ) -> OfflineNotice | None:
        """
        With webhooks on, what the message's transaction needs to notify the users of the
        conversation who are not subscribed to it: who is (asked before the commit, so
        that the notifications commit with the message).
        """
        if self.webhook_coalesce is None:
            return None
        try:
            live = await self.presence.subscribed_users(conversation.id)
        except Exception:
            # Better a notification too many than a customer who never hears.
            _log.failure("who is in conversation {conversation}?", conversation=conversation.id)
            live = frozenset()
        return OfflineNotice(
            live=frozenset(live),
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
            return await self._serialised(
                conversation.id, lambda: self._mark(user.user_id, conversation.id, kind)
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
