"""
End to end: the real server on loopback ports, a real third-party STOMP client (stomp.py)
over WebSocket and over plain TCP.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import jwt
import stomp.exception
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests._server import in_thread, run_admin, start_server
from tests._stompclient import tcp_connection, wait_for, wait_until, ws_connection

USER = "0be8c544-9518-4bce-8519-0eee0356989f"


def _token_from_admin(data_dir: str) -> str:
    """Mint a token the way the README says: the medichat-admin token command."""
    return run_admin(data_dir, "token", "--user-id", USER, "--name", "c1").strip()


class CarrierMixin:
    """
    One scenario, run over each carrier.
    """

    server: Any
    timeout = 60

    def connection(self, token: str | None, **kwargs: Any) -> Any:
        raise NotImplementedError

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, "--heartbeat-topic-interval", "0.2")

    def _heartbeat_flow(self, token: str) -> dict[str, Any]:
        conn, recorder = self.connection(token)
        conn.connect(wait=True, headers=self.connect_headers(token))
        try:
            conn.subscribe("/v1/topic/heartbeat", id="hb", receipt="sub")
            assert wait_for(recorder.receipts) == "sub"
            frame = wait_for(recorder.messages)
            return {"headers": frame.headers, "body": json.loads(frame.body)}
        finally:
            conn.disconnect(receipt="bye")

    def connect_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @inlineCallbacks
    def test_heartbeat_topic(self) -> Any:
        """A customer with a minted token connects, subscribes and receives heartbeats."""
        token = _token_from_admin(self.server.data_dir)
        got = yield in_thread(self._heartbeat_flow, token)
        self.assertEqual(got["headers"]["destination"], "/v1/topic/heartbeat")
        self.assertEqual(got["headers"]["subscription"], "hb")
        self.assertEqual(got["headers"]["content-type"], "application/json")
        self.assertIn("time", got["body"]["heartbeat"])

    def _refused(self, token: str) -> str:
        conn, recorder = self.connection(token)
        try:
            conn.connect(wait=True, headers=self.connect_headers(token))
        except stomp.exception.ConnectFailedException:
            pass
        error = wait_for(recorder.errors)
        wait_until(lambda: recorder.disconnected)
        return str(error.headers.get("message"))

    @inlineCallbacks
    def test_bad_tokens_refused(self) -> Any:
        """Wrongly signed, expired and malformed tokens get an ERROR saying why."""
        wrong = jwt.encode({"sub": USER}, b"x" * 32, algorithm="HS256")
        expired = jwt.encode({"sub": USER, "exp": 1}, self.server.secret, algorithm="HS256")
        for token, reason in [(wrong, "bad signature"), (expired, "credential expired"),
                              ("garbage", "malformed token")]:
            message = yield in_thread(self._refused, token)
            self.assertEqual(message, reason)

    def _garbage_and_good(self, token: str) -> Any:
        good, recorder = self.connection(token)
        good.connect(wait=True, headers=self.connect_headers(token))
        good.subscribe("/v1/topic/heartbeat", id="hb")
        wait_for(recorder.messages)
        self.send_garbage()
        while not recorder.messages.empty():
            recorder.messages.get_nowait()
        frame = wait_for(recorder.messages)
        good.disconnect()
        return frame.headers["subscription"]

    @inlineCallbacks
    def test_garbage_does_not_disturb_others(self) -> Any:
        """A client sending garbage is dropped while another keeps receiving."""
        token = jwt.encode({"sub": USER}, self.server.secret, algorithm="HS256")
        subscription = yield in_thread(self._garbage_and_good, token)
        self.assertEqual(subscription, "hb")


class WebSocketTests(CarrierMixin, TestCase):
    """
    stomp.py's WSStompConnection at /api/v1/chat.
    """

    def connection(self, token: str | None, **kwargs: Any) -> Any:
        return ws_connection(self.server.http_port, **kwargs)

    def send_garbage(self) -> None:
        """Open a raw WebSocket and send bytes that are not STOMP."""
        import websocket

        ws = websocket.create_connection(self.server.ws_url, timeout=5)
        ws.send_binary(b"\x00\xffnot stomp at all\n\n\x00")
        try:
            reply = ws.recv()
            assert "ERROR" in (reply if isinstance(reply, str) else reply.decode()), reply
        finally:
            ws.close()

    def _handshake_header_flow(self, token: str) -> Any:
        conn, recorder = ws_connection(self.server.http_port,
                                       header={"Authorization": f"Bearer {token}"})
        conn.connect(wait=True)
        conn.subscribe("/v1/topic/online-employees", id="o")
        frame = wait_for(recorder.messages)
        conn.disconnect()
        return json.loads(frame.body)

    @inlineCallbacks
    def test_handshake_bearer(self) -> Any:
        """A bearer token in the handshake (native apps) authenticates CONNECT."""
        token = jwt.encode({"sub": USER}, self.server.secret, algorithm="HS256")
        body = yield in_thread(self._handshake_header_flow, token)
        self.assertEqual(body, {"online": 0})

    def _foreign_origin(self) -> int:
        import websocket

        try:
            websocket.create_connection(self.server.ws_url, timeout=5,
                                        origin="https://evil.example")
        except websocket.WebSocketBadStatusException as e:
            return int(e.status_code)
        return 101

    @inlineCallbacks
    def test_foreign_origin_refused(self) -> Any:
        """A handshake from a foreign Origin is refused with 403."""
        status = yield in_thread(self._foreign_origin)
        self.assertEqual(status, 403)

    def _subprotocol(self, offered: list[str]) -> Any:
        import websocket

        ws = websocket.create_connection(self.server.ws_url, timeout=5, subprotocols=offered)
        try:
            return ws.getsubprotocol()
        finally:
            ws.close()

    @inlineCallbacks
    def test_subprotocol(self) -> Any:
        """The highest STOMP sub-protocol offered is chosen; none offered is fine."""
        chosen = yield in_thread(self._subprotocol, ["v10.stomp", "v12.stomp", "v11.stomp"])
        self.assertEqual(chosen, "v12.stomp")
        chosen = yield in_thread(self._subprotocol, [])
        self.assertIsNone(chosen)


class TCPTests(CarrierMixin, TestCase):
    """
    stomp.py's plain STOMP 1.2 connection on --stomp-listen.
    """

    def connection(self, token: str | None, **kwargs: Any) -> Any:
        return tcp_connection(self.server.stomp_port, **kwargs)

    def send_garbage(self) -> None:
        """Open a raw TCP connection and send bytes that are not STOMP."""
        with socket.create_connection(("127.0.0.1", self.server.stomp_port), timeout=5) as s:
            s.sendall(b"\x00\xffnot stomp at all\n\n\x00")
            reply = s.recv(4096)
            assert reply.startswith(b"ERROR"), reply
