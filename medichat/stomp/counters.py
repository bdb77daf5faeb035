"""
What the STOMP sessions of this process have done since it started, as plain counts that
the sessions bump where they act and that a metrics exporter reads when it is scraped.

Every count only grows (a session that ends does not take its counts with it), and every
key is one of a fixed set of names: commands, reasons and causes chosen by the code,
never a user, session or conversation id, nor text a client sent.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["CLOSE_CAUSES", "StompCounters"]

CLOSE_CAUSES = (
    "disconnect",
    "heartbeat_timeout",
    "error",
    "slow_consumer",
    "revoked",
    "expired",
    "shutdown",
)
"""Why an authenticated session ended, as L{StompCounters.closed} counts it:

  - C{disconnect}: the client sent C{DISCONNECT} or closed its connection;
  - C{heartbeat_timeout}: the client fell silent past its heart-beats (or, over a
    WebSocket, did not answer a ping);
  - C{error}: the session sent an C{ERROR} (a protocol error, a rate limit, a failure);
  - C{slow_consumer}: the client read too slowly and its write buffer overflowed;
  - C{revoked}: its login was revoked (logout, password change, disablement);
  - C{expired}: its credential expired;
  - C{shutdown}: the server stopped.
"""


class StompCounters:
    """
    The counts of the STOMP sessions of one process.

    @ivar opened: sessions authenticated (C{CONNECTED} sent).
    @ivar closed: authenticated sessions ended, by cause (one of L{CLOSE_CAUSES}).
    @ivar refused: sessions ended before they were authenticated, by reason (a bad or
        missing credential, a C{CONNECT} timeout, too many sessions, a refused origin...).
    @ivar frames_received: frames received, by command.
    @ivar frames_sent: frames sent by the sessions themselves, by command: every frame but
        the C{MESSAGE}s of live deliveries, which the hub counts once per publication
        (L{medichat.pubsub.hub.InProcessHub.deliveries}).
    @ivar errors: C{ERROR} frames sent, by reason (the frame's fixed C{message}).
    @ivar bytes_sent: bytes of STOMP frames and heart-beats handed to the carriers.
    """

    __slots__ = (
        "opened",
        "closed",
        "refused",
        "frames_received",
        "frames_sent",
        "errors",
        "bytes_sent",
    )

    def __init__(self) -> None:
        self.opened = 0
        self.closed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.frames_received: Counter[str] = Counter()
        self.frames_sent: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes_sent = 0
