"""
Test helpers: mint tokens, and drive a STOMP session over a L{StringTransport}.
"""

from __future__ import annotations

from typing import Any

import jwt
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from medichat.auth.checkers import JWTChecker
from medichat.auth.realm import build_portal
from medichat.carriers.tcp import StompTCPFactory, StompTCPProtocol
from medichat.domain.presence import InProcessPresence
from medichat.errors import NotFound
from medichat.interfaces import IConversations
from medichat.model import User
from medichat.pubsub.hub import InProcessHub
from medichat.stomp.codec import SERVER_COMMANDS, Frame, FrameParser, Limits, encode_frame
from medichat.stomp.session import StompConfig, StompServices

SECRET = b"s" * 32


def mint(
    sub: str = "0be8c544-9518-4bce-8519-0eee0356989f",
    name: str = "c1",
    role: str = "customer",
    *,
    exp: float | None = None,
    secret: bytes = SECRET,
    **claims: Any,
) -> str:
    """A signed HS256 token with the given claims."""
    payload: dict[str, Any] = {"sub": sub, "name": name, "role": role, **claims}
    if exp is not None:
        payload["exp"] = int(exp)
    return jwt.encode(payload, secret, algorithm="HS256")


def realistic_clock() -> MemoryReactorClock:
    """A memory clock set to a plausible present (2026), so token times make sense."""
    clock = MemoryReactorClock()
    clock.advance(1_780_000_000)
    return clock


@implementer(IConversations)
class NoConversations:
    """
    Conversations where none exist: every id is unknown.
    """

    def check_participant(self, user: User, conversation_id: str) -> Deferred[Any]:
        return fail(NotFound("no such conversation"))

    def subscribe(self, user: User, conversation_id: str) -> Deferred[Any]:
        return fail(NotFound("no such conversation"))

    def typing(self, user: User, conversation_id: str, started: bool) -> Deferred[None]:
        return fail(NotFound("no such conversation"))

    def stream_start(
        self, conversation_id: str, offset: int | None, since: int | None, most: int
    ) -> Deferred[int]:
        return fail(NotFound("no such conversation"))

    def stream_events(self, conversation_id: str, offset: int, limit: int) -> Deferred[Any]:
        return fail(NotFound("no such conversation"))


def make_services(
    clock: MemoryReactorClock | None = None,
    conversations: Any = None,
    **config: Any,
) -> StompServices:
    """
    Real hub and presence, real portal with a JWT checker, on a memory clock; no
    conversations unless given.
    """
    clock = clock or realistic_clock()
    portal = build_portal([JWTChecker(secret=SECRET, clock=clock)])
    hub = InProcessHub("test")
    return StompServices(
        hub=hub,
        presence=InProcessPresence(hub),
        portal=portal,
        clock=clock,
        conversations=conversations or NoConversations(),
        config=StompConfig(**config),
    )


class Client:
    """
    One STOMP connection to a session, over the TCP carrier and a L{StringTransport}.
    """

    def __init__(self, services: StompServices, port: int = 40000) -> None:
        self.services = services
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol: StompTCPProtocol = StompTCPFactory(services).buildProtocol(
            self.transport.getPeer()
        )
        self.protocol.makeConnection(self.transport)
        self._parser = FrameParser(Limits(1 << 24, 1000, 1 << 20), commands=SERVER_COMMANDS)
        self.received: list[Frame] = []
        self.heartbeats = 0

    def raw(self, data: bytes) -> None:
        """Send raw bytes."""
        self.protocol.dataReceived(data)

    def send(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        """Send one frame."""
        self.raw(encode_frame(command, list((headers or {}).items()), body))

    def connect(self, token: str | None = None, **headers: str) -> Frame:
        """CONNECT with a bearer token (minted if not given); returns CONNECTED."""
        h = {"accept-version": "1.2", "host": "medichat", "heart-beat": "0,0"}
        h["Authorization"] = f"Bearer {token or mint()}"
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        self.send("CONNECT", h)
        frame = self.next()
        assert frame.command == "CONNECTED", frame
        return frame

    def frames(self) -> list[Frame]:
        """Every frame received since the last call."""
        data = self.transport.value()
        self.transport.clear()
        if data and not data.strip(b"\n"):
            self.heartbeats += len(data)
        new = self._parser.feed(data)
        self.received.extend(new)
        return new

    def next(self) -> Frame:
        """The one next frame (fails if there is not exactly one)."""
        frames = self.frames()
        assert len(frames) == 1, frames
        return frames[0]

    @property
    def closed(self) -> bool:
        """Whether the server closed or aborted the connection."""
        return bool(self.transport.disconnecting or self.transport.disconnected)
