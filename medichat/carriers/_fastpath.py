"""
Fast paths that reach into Twisted's private state.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from medichat._connections import raw_transport


def socket_of(transport: Any) -> Any:
    """
    The socket of a plain TCP transport (under the connection counter), for L{send_now};
    L{None} for any other (TLS).
    """
    transport = raw_transport(transport)
    if isinstance(transport, tcp.Connection):
        return transport.socket
    return None


def send_now(transport: Any, sock: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when nothing is queued before it.

    Twisted's C{write} queues the bytes, asks epoll to watch the socket for writability,
    sends on the next turn of the loop and stops watching again: three system calls per
    write, which dominate the cost of fanning one event out to thousands of sockets.
    When the transport holds nothing unsent, one C{send} does the same work; whatever the
    kernel does not take (or an error, which Twisted then reports as it would have) goes
    through C{write}, after which everything queues behind it and order is kept.

    @param sock: L{socket_of} the transport, or L{None} to always use C{write}.
    """
    if sock is not None:
        transport = raw_transport(transport)
    if (
        sock is not None
        and not transport.dataBuffer
        and not transport._tempDataLen
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
