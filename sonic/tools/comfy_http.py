"""HTTP to one ComfyUI server, without trusting its answers.

Every request has a wall-clock deadline (a watchdog shuts the socket down when it passes, so a
server that trickles one byte every few seconds cannot hold the client past it) and every
answer a size cap (JSON answers `MAX_JSON_BYTES`, downloads `MAX_DOWNLOAD_BYTES`, streamed to
disk). Answers that are not JSON, or JSON of the wrong shape, become `ComfyConnectionError`s.
Pure standard library (http.client).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .comfy_answers import ComfyConnectionError, expect, parse_json

UPLOAD_SUBFOLDER = "sonic_queue"
REQUEST_TIMEOUT = 60.0  # seconds one request may take, whatever the server does
MAX_JSON_BYTES = 64 * 1024 * 1024  # /object_info of a big ComfyUI install is a few MB
MAX_DOWNLOAD_BYTES = 16 * 1024 ** 3  # one output video
_READ = 1 << 16


class ComfyClient:
    """Minimal client for one ComfyUI server (HTTP JSON routes, uploads, downloads, websocket)."""

    def __init__(self, server: str, *, timeout: float = REQUEST_TIMEOUT):
        parsed = urllib.parse.urlparse(server if "://" in server else f"http://{server}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ParameterError(f"--server must be an http(s) URL such as http://127.0.0.1:8188, got {server!r}")
        self.base = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.parsed = parsed
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def url(self, path: str, **query) -> str:
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return f"{self.base}{path}" + (f"?{qs}" if qs else "")

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
                query: dict | None = None, limit: int = MAX_JSON_BYTES, deadline: float | None = None,
                sink=None) -> tuple[int, bytes]:
        """(status, body) of one request; HTTP error statuses are returned, network failures raise.

        `limit` caps the body (bytes); `deadline` (time.monotonic()) ends the request at the
        latest then, besides the client's own `timeout`; `sink(chunk)` receives the body instead
        of memory when given (downloads)."""
        started = time.monotonic()
        stop = started + self.timeout
        stop = min(stop, deadline) if deadline is not None else stop
        if stop <= started:
            raise ComfyConnectionError(f"{method} {path}: no time left for this job")
        connection_class = http.client.HTTPSConnection if self.parsed.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(self.parsed.hostname, self.parsed.port, timeout=max(0.1, stop - time.monotonic()))
        expired = threading.Event()

        def cut_off():
            expired.set()
            if connection.sock is not None:
                try:
                    connection.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(max(0.0, stop - time.monotonic()), cut_off)
        watchdog.daemon = True
        watchdog.start()
        full_path = urllib.parse.urlparse(self.url(path, **(query or {})))
        target = full_path.path + (f"?{full_path.query}" if full_path.query else "")
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            data = _read_capped(response, limit, f"{method} {path}", sink)
            if expired.is_set():  # the watchdog's shutdown reads as the end of the body: not a full answer
                raise OSError("deadline")
            return response.status, data
        except ComfyConnectionError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if expired.is_set():
                raise ComfyConnectionError(f"{method} {path} took longer than the {stop - started:.0f} s allowed; "
                                           f"the server is too slow or stuck") from None
            raise ComfyConnectionError(f"cannot reach the ComfyUI server at {self.base} ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())[:200]}); is it running? check --server") from None
        finally:
            watchdog.cancel()
            connection.close()

    def get_json(self, path: str, *, deadline: float | None = None, **query) -> Any:
        status, data = self.request("GET", path, query=query, deadline=deadline)
        if status != 200:
            raise ComfyConnectionError(f"GET {path} answered HTTP {status}: {data[:300]!r}")
        return parse_json(data, f"GET {path}")

    def get_object(self, path: str, *, deadline: float | None = None, **query) -> dict:
        """`get_json` of an answer that must be a JSON object."""
        return expect(self.get_json(path, deadline=deadline, **query), dict, f"GET {path}")

    def post_json(self, path: str, payload: Any, *, deadline: float | None = None) -> tuple[int, Any]:
        status, data = self.request("POST", path, body=json.dumps(payload).encode(),
                                    headers={"Content-Type": "application/json"}, deadline=deadline)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode("utf-8", "replace")

    def object_info(self) -> dict:
        return self.get_object("/object_info")

    def history(self, prompt_id: str, *, wait: float = 30.0, poll: float = 0.2, deadline: float | None = None) -> dict:
        """The finished history entry of one prompt.

        ComfyUI sends `execution_success` on the websocket before it files the history entry, so a
        client that asks straight away can find nothing; poll for up to `wait` seconds."""
        stop = time.monotonic() + wait
        stop = min(stop, deadline) if deadline is not None else stop
        while True:
            entry = self.get_object(f"/history/{prompt_id}", deadline=deadline).get(prompt_id)
            if entry:  # ComfyUI files the entry once, when the prompt is done (success or error)
                return expect(entry, dict, f"the history entry of {prompt_id}")
            if time.monotonic() >= stop:
                raise ComfyConnectionError(f"the server reported prompt {prompt_id} finished but has no history entry "
                                           f"for it after {wait:.0f} s")
            time.sleep(poll)

    def upload(self, path: Path, *, subfolder: str = UPLOAD_SUBFOLDER, name: str | None = None,
               deadline: float | None = None) -> str:
        """Upload a local file into the server's input folder; returns the name loaders accept."""
        content = Path(path).read_bytes()
        name = name or Path(path).name
        boundary = uuid.uuid4().hex
        parts = []
        for field_name, value in (("type", "input"), ("subfolder", subfolder), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"\r\n\r\n{value}\r\n'.encode())
        parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, data = self.request("POST", "/upload/image", body=b"".join(parts), deadline=deadline,
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyConnectionError(f"uploading {path} failed: HTTP {status} {data[:300]!r}")
        info = expect(parse_json(data, "the upload answer"), dict, "the upload answer")
        stored = expect(info.get("name"), str, "the upload answer's 'name'")
        subfolder = info.get("subfolder")
        return f"{subfolder}/{stored}" if isinstance(subfolder, str) and subfolder else stored

    def download(self, entry: dict, dest: Path, *, overwrite: bool = False, deadline: float | None = None) -> Path:
        """Stream one output file into `dest` (published exclusively unless `overwrite`)."""
        from ..files import Scratch, publish

        query = {"filename": expect(entry.get("filename"), str, "an output's 'filename'"),
                 "subfolder": str(entry.get("subfolder") or ""), "type": str(entry.get("type") or "output")}
        with Scratch(dest.parent) as scratch:
            partial = scratch.path("download")
            with open(partial, "wb") as handle:
                status, head = self.request("GET", "/view", query=query, limit=MAX_DOWNLOAD_BYTES, deadline=deadline,
                                            sink=handle.write)
            if status != 200:
                raise ComfyConnectionError(f"downloading {query['filename']} failed: HTTP {status}")
            return publish(partial, dest, overwrite=overwrite)

    def websocket(self, *, deadline: float | None = None):
        from .comfy_websocket import WebSocket

        scheme = "wss" if self.parsed.scheme == "https" else "ws"
        return WebSocket(f"{scheme}://{self.parsed.netloc}{self.parsed.path.rstrip('/')}/ws?clientId={self.client_id}",
                         timeout=self.timeout, deadline=deadline)


def _read_capped(response, limit: int, what: str, sink) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ComfyConnectionError(f"{what}: the server announced {int(declared):,} bytes, more than the "
                                   f"{limit:,} allowed")
    chunks, total = [], 0
    while True:
        chunk = response.read(_READ)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise ComfyConnectionError(f"{what}: the answer is larger than the {limit:,} bytes allowed; "
                                       f"stopped reading")
        if sink is not None:
            sink(chunk)
        else:
            chunks.append(chunk)
    return b"".join(chunks)
