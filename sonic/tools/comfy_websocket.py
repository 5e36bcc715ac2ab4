"""A small RFC 6455 websocket client for ComfyUI's /ws, that bounds what the server can make it do.

A frame announcing more than `MAX_FRAME_BYTES` (or a fragmented message growing past it), a
handshake answer that never ends, a text message that is not a JSON object, an unknown frame
type: each becomes a one-line `ComfyConnectionError` instead of unbounded memory or a hang.
`deadline` (time.monotonic()) ends every wait at the latest then.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
import urllib.parse

from .comfy_answers import ComfyConnectionError, expect, parse_json

MAX_FRAME_BYTES = 64 * 1024 * 1024  # ComfyUI's largest messages are preview images of a few MB
MAX_HANDSHAKE_BYTES = 64 * 1024

class WebSocket:
    """A small RFC 6455 client: text/binary messages, ping replies, close. Enough for ComfyUI's /ws."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, *, timeout: float = 30.0, deadline: float | None = None):
        parsed = urllib.parse.urlparse(url)
        self.deadline = deadline
        port = parsed.port or (443 if parsed.scheme == "wss" else 80)
        try:
            sock = socket.create_connection((parsed.hostname, port), timeout=timeout)
        except OSError as exc:
            raise ComfyConnectionError(f"cannot open the websocket {url} ({exc})") from None
        if parsed.scheme == "wss":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parsed.hostname)
        self.sock = sock
        self.buffer = b""
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0
        key = base64.b64encode(os.urandom(16)).decode()
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HANDSHAKE_BYTES:
                raise ComfyConnectionError(f"the websocket handshake answer at {url} never ends")
            try:
                chunk = sock.recv(4096)
            except OSError as exc:
                raise ComfyConnectionError(f"the websocket handshake at {url} failed ({exc})") from None
            if not chunk:
                raise ComfyConnectionError(f"the server closed the websocket handshake at {url}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        expected = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != expected:
            raise ComfyConnectionError(f"websocket handshake refused at {url}: {lines[0]}")

    def _parse_frame(self):
        """One complete frame from the buffer as (fin, opcode, payload), or None if more bytes are needed."""
        buf = self.buffer
        if len(buf) < 2:
            return None
        fin, opcode = buf[0] & 0x80, buf[0] & 0x0F
        masked, length = buf[1] & 0x80, buf[1] & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = struct.unpack(">H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = struct.unpack(">Q", buf[2:10])[0], 10
        if length > MAX_FRAME_BYTES:
            raise ComfyConnectionError(f"the server sent a websocket frame of {length:,} bytes (at most "
                                       f"{MAX_FRAME_BYTES:,} are accepted); not a ComfyUI server?")
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask, pos = buf[pos:pos + 4], pos + 4
        if len(buf) < pos + length:
            return None
        payload = buf[pos:pos + length]
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.buffer = buf[pos + length:]
        return bool(fin), opcode, payload

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def recv(self, timeout: float) -> tuple[int, bytes] | None:
        """The next message as (opcode, payload) (1 = text, 2 = binary), or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        while True:
            frame = self._parse_frame()
            if frame is not None:
                fin, opcode, payload = frame
                if opcode == 0x9:  # ping
                    self._send(0xA, payload)
                    continue
                if opcode == 0xA:
                    continue
                if opcode == 0x8:
                    raise ComfyConnectionError("the server closed the websocket")
                if opcode in (0x1, 0x2):
                    self.fragment_opcode, self.fragments = opcode, [payload]
                elif opcode == 0x0:
                    self.fragments.append(payload)
                    if sum(map(len, self.fragments)) > MAX_FRAME_BYTES:
                        raise ComfyConnectionError("the server sent a websocket message that never ends")
                else:
                    raise ComfyConnectionError(f"the server sent a websocket frame of unknown type {opcode}")
                if fin:
                    message = b"".join(self.fragments)
                    self.fragments = []
                    return self.fragment_opcode, message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except (socket.timeout, TimeoutError):
                return None
            except OSError as exc:
                raise ComfyConnectionError(f"the websocket broke ({exc})") from None
            if not chunk:
                raise ComfyConnectionError("the server closed the websocket")
            self.buffer += chunk

    def recv_json(self, timeout: float) -> dict | None:
        """The next text message decoded from JSON (binary preview frames are skipped), or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            opcode, payload = message
            if opcode == 0x1:
                value = parse_json(payload, "a websocket message")
                return expect(value, dict, "a websocket message")

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


