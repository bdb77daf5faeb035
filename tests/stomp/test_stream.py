"""
Tests for the stream side of L{medichat.stomp.session}: C{x-stream-offset} on the
C{MESSAGE} frames of durable conversation events, and SUBSCRIBE with C{x-stream-offset}
replaying stored events before going live, with no gap and no duplicate.

The session runs on the real conversation service, the real SQL store run inline
(L{MemoryStore}), the real hub and the event feed, on a memory clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from medichat.domain.conversations import ConversationService
from medichat.interfaces import IConversations
from medichat.model import Conversation, StoredEvent, User
from medichat.pubsub.feed import EventFeed
from medichat.pubsub.topics import conversation_topic
from medichat.stomp.codec import Frame
from medichat.testing import MemoryStore
from tests._feed import started_feed
from tests._stomp import Client, make_services, mint, realistic_clock

CUSTOMER = User("0be8c544-9518-4bce-8519-0eee0356989f", "c1", "customer")
NURSE = User("3d43c23b-c637-4a7a-a780-28c2c29f1194", "Nurse Joy", "employee")


@implementer(IConversations)
class Interleaved:
    """
    The conversation service, with something run just before each replay page is read:
    commits that land in the middle of a replay.
    """

    def __init__(self, service: ConversationService) -> None:
        self.service = service
        self.before_page: list[Callable[[], object]] = []
        self.pages: list[tuple[int, int]] = []

    def check_participant(self, user: Any, conversation_id: str) -> Deferred[Any]:
        return self.service.check_participant(user, conversation_id)

    def subscribe(self, user: Any, conversation_id: str) -> Deferred[Any]:
        return self.service.subscribe(user, conversation_id)

    def typing(self, user: Any, conversation_id: str, started: bool) -> Deferred[None]:
        return self.service.typing(user, conversation_id, started)

    def stream_start(
        self, conversation_id: str, offset: int | None, since: int | None, most: int
    ) -> Deferred[int]:
        return self.service.stream_start(conversation_id, offset, since, most)

    def stream_events(
        self, conversation_id: str, offset: int, limit: int
    ) -> Deferred[Sequence[StoredEvent]]:
        if self.before_page:
            self.before_page.pop(0)()
        self.pages.append((offset, limit))
        return self.service.stream_events(conversation_id, offset, limit)


class StreamTestCase(SynchronousTestCase):
    """A conversation with stored events, and a connected customer's session."""

    page = 100
    page_bytes = 256 * 1024
    most = 10000

    def setUp(self) -> None:
        self.clock = realistic_clock()
        self.store = MemoryStore(self.clock)
        self.successResultOf(self.store.start())
        self.addCleanup(self.store.stop)
        self.services = make_services(
            self.clock, replay_page=self.page, replay_page_bytes=self.page_bytes,
            max_replay=self.most,
        )
        self.feed: EventFeed = started_feed(self.store, self.services.hub, self.clock)
        self.service = ConversationService(
            self.store, self.services.hub, self.clock, self.services.presence, self.feed
        )
        self.conversations = Interleaved(self.service)
        self.services.conversations = self.conversations
        self.conversation: Conversation = self.successResultOf(self.service.create(CUSTOMER))
        self.topic = conversation_topic(self.conversation.id)
        self.client = Client(self.services)
        self.client.connect()

    def post(self, text: str, user: User = CUSTOMER) -> None:
        self.clock.advance(1)
        self.successResultOf(self.service.post_message(user, self.conversation.id, text))

    def subscribe(self, client: Client | None = None, **headers: str) -> list[Frame]:
        """SUBSCRIBE (with a receipt) and return the frames that came before the RECEIPT."""
        client = client or self.client
        client.send("SUBSCRIBE", {"id": "s", "destination": self.topic, "receipt": "r",
                                  **headers})
        frames = self.frames(client)
        self.assertEqual(frames[-1].command, "RECEIPT", frames)
        return frames[:-1]

    def frames(self, client: Client | None = None) -> list[Frame]:
        """The frames received, without presence events (userConnected, ...)."""
        frames = (client or self.client).frames()
        return [f for f in frames if not f.body.startswith((b'{"userConn', b'{"userDisconn'))]

    def texts(self, frames: list[Frame]) -> list[str]:
        """The message texts (or the other event kinds) of MESSAGE frames."""
        import json

        out = []
        for frame in frames:
            self.assertEqual(frame.command, "MESSAGE", frame)
            event = json.loads(frame.body)
            kind = next(iter(event))
            out.append(event["message"]["message"] if kind == "message" else kind)
        return out


def offsets(frames: list[Frame]) -> list[int | None]:
    """The x-stream-offset of each frame, as a number."""
    values = [frame.get("x-stream-offset") for frame in frames]
    return [None if value is None else int(value) for value in values]


class OffsetHeaderTests(StreamTestCase):
    """
    MESSAGE frames of durable conversation events carry x-stream-offset; others do not.
    """

    def test_live_offsets(self) -> None:
        """Message and receipt frames count 1, 2, 3; typing frames carry no offset."""
        self.assertEqual(self.subscribe(), [])
        self.post("one")
        self.successResultOf(self.service.mark_read(CUSTOMER, self.conversation.id))
        self.successResultOf(self.service.typing(NURSE, self.conversation.id, True))
        frames = self.frames()
        self.assertEqual(self.texts(frames), ["one", "read", "startTyping"])
        self.assertEqual(offsets(frames), [1, 2, None])
        self.assertEqual(frames[0].get("destination"), self.topic)
        self.assertEqual(frames[0].get("content-length"), str(len(frames[0].body)))

    def test_body_unchanged(self) -> None:
        """The body is the event's JSON exactly as stored (the seed's shape)."""
        self.subscribe()
        self.post("Grüße 👩‍⚕️")
        [frame] = self.frames()
        [stored] = [
            e for e in self.successResultOf(self.store.events_after(0, 10)) if e.kind == "message"
        ]
        self.assertEqual(frame.body, stored.body.encode("utf-8"))


class SubscribeFormTests(StreamTestCase):
    """
    Every form of x-stream-offset on SUBSCRIBE, and bad values.
    """

    def setUp(self) -> None:
        super().setUp()
        for text in ("a", "b", "c"):
            self.post(text)

    def test_default_is_next(self) -> None:
        """Without the header, or with 'next', only new events arrive."""
        self.assertEqual(self.subscribe(), [])
        other = Client(self.services, 40001)
        other.connect()
        self.assertEqual(self.subscribe(other, **{"x-stream-offset": "next"}), [])
        self.post("d")
        self.assertEqual(self.texts(self.frames()), ["d"])
        self.assertEqual(offsets(self.frames(other)), [4])

    def test_first(self) -> None:
        """'first' replays everything stored, then goes live."""
        frames = self.subscribe(**{"x-stream-offset": "first"})
        self.assertEqual(self.texts(frames), ["a", "b", "c"])
        self.assertEqual(offsets(frames), [1, 2, 3])
        self.assertEqual({f.get("subscription") for f in frames}, {"s"})
        self.assertEqual({f.get("destination") for f in frames}, {self.topic})
        self.assertEqual(len({f.get("message-id") for f in frames}), 3)
        self.post("d")
        self.assertEqual(offsets(self.frames()), [4])

    def test_offset(self) -> None:
        """'offset=N' replays from N inclusive."""
        frames = self.subscribe(**{"x-stream-offset": "offset=2"})
        self.assertEqual(offsets(frames), [2, 3])

    def test_offset_past_the_end(self) -> None:
        """An offset past the newest waits for the next event."""
        self.assertEqual(self.subscribe(**{"x-stream-offset": "offset=9"}), [])
        self.post("d")
        self.assertEqual(offsets(self.frames()), [4])

    def test_timestamp(self) -> None:
        """'timestamp=T' replays from the first event at or after T (epoch seconds)."""
        # The posts were made 1, 2 and 3 whole seconds after the clock's start; now is
        # the last one's time.
        second = int(self.clock.seconds())
        frames = self.subscribe(**{"x-stream-offset": f"timestamp={second}"})
        self.assertEqual(self.texts(frames), ["c"])
        later = Client(self.services, 40001)
        later.connect()
        self.assertEqual(
            self.subscribe(later, **{"x-stream-offset": f"timestamp={second + 5}"}), []
        )

    def test_bad_values(self) -> None:
        """Anything else is an ERROR 'invalid x-stream-offset', and the session closes."""
        for value in ("", "last", "offset=", "offset=-1", "offset=x", "timestamp=1.5",
                      "offset=99999999999999999999", "timestamp=99999999999999", "OFFSET=1",
                      "offset=1 "):
            client = Client(self.services, 40002)
            client.connect()
            client.send("SUBSCRIBE", {"id": "s", "destination": self.topic, "receipt": "r",
                                      "x-stream-offset": value})
            [error] = client.frames()
            self.assertEqual(error.command, "ERROR", value)
            self.assertEqual(error.get("message"), "invalid x-stream-offset", value)
            self.assertEqual(error.get("receipt-id"), "r")
            self.assertTrue(client.closed, value)

    def test_other_destinations(self) -> None:
        """Other destinations are no streams: the header, whatever its value, is ignored."""
        self.client.send("SUBSCRIBE", {"id": "h", "destination": "/v1/topic/heartbeat",
                                       "receipt": "r", "x-stream-offset": "bogus"})
        self.assertEqual([f.command for f in self.frames()], ["RECEIPT"])

    def test_not_a_participant(self) -> None:
        """Another customer cannot replay someone else's conversation."""
        stranger = Client(self.services, 40003)
        stranger.connect(mint("6f1c0f7e-32a4-4b0e-9a59-6a3f3c1f0a11", "c2"))
        stranger.send("SUBSCRIBE", {"id": "s", "destination": self.topic,
                                    "x-stream-offset": "first"})
        [error] = stranger.frames()
        self.assertEqual(error.command, "ERROR")
        self.assertEqual(self.conversations.pages, [])


class ReplayThenLiveTests(StreamTestCase):
    """
    Events committed while a replay runs arrive once each, in order, after it.
    """

    page = 2

    def test_commits_during_replay(self) -> None:
        """Commits before each page read are neither lost nor duplicated."""
        for text in ("a", "b", "c"):
            self.post(text)
        self.conversations.before_page = [lambda: self.post("d"), lambda: self.post("e")]
        frames = self.subscribe(**{"x-stream-offset": "first"})
        self.assertEqual(self.texts(frames), ["a", "b", "c", "d", "e"])
        self.assertEqual(offsets(frames), [1, 2, 3, 4, 5])
        self.post("f")
        self.assertEqual(offsets(self.frames()), [6])

    def test_live_held_until_replay_done(self) -> None:
        """Live events during a replay (typing too) come after the replayed ones."""
        for text in ("a", "b", "c"):
            self.post(text)

        def type_and_post() -> None:
            self.successResultOf(self.service.typing(NURSE, self.conversation.id, True))
            self.post("d")

        self.conversations.before_page = [lambda: None, type_and_post]
        frames = self.subscribe(**{"x-stream-offset": "offset=2"})
        # Page 2 (from offset 4) read d already: its live copy is dropped.
        self.assertEqual(self.texts(frames), ["b", "c", "d", "startTyping"])
        self.assertEqual(offsets(frames), [2, 3, 4, None])

    def test_feed_behind_the_store(self) -> None:
        """An event replayed before this process's feed published it is not sent twice."""
        for text in ("a", "b"):
            self.post(text)
        lagging = EventFeed(self.store, self.services.hub, self.clock, poll_interval=None)
        lagging.start(self.feed.position)
        self.feed.stop()
        self.service.feed = _Deaf()  # the feed is not told of the next commit yet
        self.post("c")
        frames = self.subscribe(**{"x-stream-offset": "offset=2"})
        self.assertEqual(self.texts(frames), ["b", "c"])
        lagging.catch_up()  # now it publishes c, which the replay sent already
        self.assertEqual(self.frames(), [])
        self.service.feed = lagging
        self.post("d")
        self.assertEqual(offsets(self.frames()), [4])


class _Deaf:
    """A feed that ignores catch-ups."""

    def catch_up(self) -> None:
        pass

    def committed(self) -> None:
        pass


class PagingTests(StreamTestCase):
    """
    A replay reads the store a page at a time, and stops a page early after enough bytes;
    it replays at most the newest max_replay events.
    """

    page = 2
    most = 4

    def setUp(self) -> None:
        super().setUp()
        for i in range(6):
            self.post(str(i))

    def test_pages(self) -> None:
        """Six events by pages of two, capped at the newest four: reads from 3, 5 and 7."""
        frames = self.subscribe(**{"x-stream-offset": "first"})
        self.assertEqual(offsets(frames), [3, 4, 5, 6])
        self.assertEqual(self.conversations.pages, [(3, 2), (5, 2), (7, 2)])

    def test_pipelined_frames_wait(self) -> None:
        """Frames sent after the SUBSCRIBE are handled after its replay."""
        self.store.hold()
        self.client.send("SUBSCRIBE", {"id": "s", "destination": self.topic,
                                       "x-stream-offset": "offset=5"})
        self.client.send("UNSUBSCRIBE", {"id": "s", "receipt": "u"})
        self.assertEqual(self.frames(), [])
        self.store.release()
        frames = self.frames()
        self.assertEqual([f.command for f in frames], ["MESSAGE", "MESSAGE", "RECEIPT"])
        self.assertEqual(offsets(frames[:2]), [5, 6])


class PageBytesTests(StreamTestCase):
    """
    A page stops once it has sent replay_page_bytes, and the next read goes on from there.
    """

    page_bytes = 1

    def test_bytes(self) -> None:
        """With a one-byte budget, each read sends one event."""
        for i in range(3):
            self.post(str(i))
        frames = self.subscribe(**{"x-stream-offset": "first"})
        self.assertEqual(offsets(frames), [1, 2, 3])
        self.assertEqual([offset for offset, _ in self.conversations.pages], [1, 2, 3, 4])
