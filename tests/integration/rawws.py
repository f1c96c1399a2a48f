"""A client that speaks raw TCP and raw WebSocket frames, for tests that play a hostile peer.

Nothing here is polite on its own: a test says which bytes go out, in what
order, masked or not, and how the connection ends (FIN or RST). Every read
has a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
WEBSOCKET_PATH = "/socket.io/?EIO=4&transport=websocket"


def frame(
    payload: bytes | str,
    opcode: int = TEXT,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame; ``length`` declares a length other than the payload's."""
    data = payload.encode() if isinstance(payload, str) else payload
    declared = len(data) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head.append(mask_bit | declared)
    elif declared < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", declared)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", declared)
    if not mask:
        return bytes(head) + data
    key = os.urandom(4)
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(data))
    return bytes(head) + key + masked


class RawClient:
    """One TCP connection to ``host:port``, driven byte by byte by a test."""

    def __init__(self, bind: str, timeout: float = 5.0) -> None:
        host, _, port = bind.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""
        self.gone = False

    # -- HTTP ---------------------------------------------------------------------------------------------------------

    @staticmethod
    def upgrade_request(path: str = WEBSOCKET_PATH, headers: dict[str, str] | None = None) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response_head(self, seconds: float = 5.0) -> tuple[int, dict[str, str]]:
        """The status and headers of the HTTP response; the body stays buffered."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(seconds):
                raise AssertionError(f"no complete response head, got {self.buffer[:200]!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers

    def open_websocket(self, path: str = WEBSOCKET_PATH, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Upgrade, then read the Engine.IO OPEN packet; return its data."""
        self.send(self.upgrade_request(path, headers))
        status, _ = self.response_head()
        assert status == 101, status
        opcode, payload = self.read_frame()
        assert opcode == TEXT and payload.startswith(b"0"), payload
        opened: dict[str, Any] = json.loads(payload[1:])
        return opened

    def authenticate(self, token: str) -> bytes:
        """Send the Socket.IO CONNECT with ``token``; return the server's answer (``40...`` or ``44...``)."""
        self.send_text("40" + json.dumps({"token": token}))
        return self.read_message()

    # -- WebSocket ----------------------------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self.send(frame(text))

    def read_frame(self, seconds: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if not self._fill(seconds):
                raise EOFError(f"connection ended, {len(self.buffer)} bytes of a frame buffered")

    def read_message(self, seconds: float = 5.0) -> bytes:
        """The next text message that is not an Engine.IO ping (pings are answered)."""
        deadline = time.monotonic() + seconds
        while True:
            opcode, payload = self.read_frame(max(0.1, deadline - time.monotonic()))
            if opcode == TEXT and payload == b"2":
                self.send_text("3")
                continue
            if opcode == TEXT:
                return payload
            raise AssertionError(f"expected a text message, got opcode {opcode} {payload[:80]!r}")

    def close_code(self, seconds: float = 5.0) -> int | None:
        """Read until the server's close frame and return its code; None if the TCP connection ended first."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                opcode, payload = self.read_frame(max(0.1, deadline - time.monotonic()))
            except (EOFError, ConnectionError):
                return None
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if time.monotonic() > deadline:
                raise AssertionError("no close frame from the server")

    def ended(self, seconds: float = 5.0) -> bool:
        """Whether the server ended the TCP connection (FIN or RST) within ``seconds``, reading what comes."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if not self._fill(max(0.05, deadline - time.monotonic())):
                    return True
            except ConnectionError:
                return True
            except TimeoutError:
                continue
            self.buffer = b""
        return False

    # -- ending -------------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """End with a TCP reset (RST), as a phone that lost its network does to a server that writes."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        """End with a FIN."""
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    # -- internals ----------------------------------------------------------------------------------------------------

    def _fill(self, seconds: float) -> bool:
        """Read more into the buffer; False at EOF."""
        self.sock.settimeout(seconds)
        chunk = self.sock.recv(65536)
        if not chunk:
            self.gone = True
            return False
        self.buffer += chunk
        return True

    def _parse(self) -> tuple[int, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + length:
            return None
        self.buffer = data[offset + length:]
        return opcode, data[offset:offset + length]
