"""
Test helper: a real third-party STOMP client (stomp.py), over WebSocket or TCP, with
every wait bounded.  Its calls block, so tests run them in a thread (L{_server.in_thread}).
"""

from __future__ import annotations

import queue
import time
from typing import Any

import stomp
from stomp.adapter.ws import WSStompConnection
from stomp.exception import NotConnectedException
from websocket import WebSocketConnectionClosedException


class Recorder(stomp.ConnectionListener):
    """Collects what the client receives."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()
        self.errors: queue.Queue[Any] = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()
        self.disconnected = False

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def on_error(self, frame: Any) -> None:
        self.errors.put(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.put(frame.headers.get("receipt-id"))

    def on_disconnected(self) -> None:
        self.disconnected = True


def ws_connection(port: int, *, header: dict[str, str] | None = None,
                  heartbeats: tuple[int, int] = (0, 0)) -> tuple[Any, Recorder]:
    """A stomp.py WebSocket connection to C{/api/v1/chat} (not yet connected)."""
    conn = WSStompConnection(
        [("127.0.0.1", port)], ws_path="/api/v1/chat", header=header,
        heartbeats=heartbeats, reconnect_attempts_max=1, timeout=10,
    )
    recorder = Recorder()
    conn.set_listener("recorder", recorder)
    return conn, recorder


def tcp_connection(port: int, heartbeats: tuple[int, int] = (0, 0)) -> tuple[Any, Recorder]:
    """A stomp.py STOMP 1.2 connection over plain TCP (not yet connected)."""
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=heartbeats,
                              reconnect_attempts_max=1, timeout=10)
    recorder = Recorder()
    conn.set_listener("recorder", recorder)
    return conn, recorder


def wait_for(q: queue.Queue[Any], timeout: float = 10.0) -> Any:
    """The next item, or an AssertionError after C{timeout} seconds."""
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"nothing arrived within {timeout} s") from None


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll until C{predicate()} holds, or fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def disconnect_all(connections: list[Any]) -> None:
    """Disconnect every client still connected (the server may have closed some first)."""
    for conn in connections:
        if conn.is_connected():
            try:
                conn.disconnect()
            except (OSError, NotConnectedException, WebSocketConnectionClosedException):
                # The server closed it between the check and the DISCONNECT.
                pass
