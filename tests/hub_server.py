"""A small Hugging Face hub for the download tests: the endpoints huggingface_hub uses.

olah (tests/hub_olah.py) serves our tiny repositories but answers a `Range` request with the
whole file (status 200), so a resumed download cannot be told from a fresh one there; it also
has no gated repositories. This server serves plain folders (`root/ORG/NAME/...`) with:

* `GET /api/models/ORG/NAME/tree/REV[/]?recursive=...`: the file list with sizes;
* `HEAD|GET /ORG/NAME/resolve/REV/PATH`: ETag, X-Repo-Commit, Content-Length, and `Range:
  bytes=N-` answered with 206 + Content-Range;
* repositories named in `gated`: their files answer 401 with `X-Error-Code: GatedRepo` (as
  huggingface.co does without a token), their listing stays public (as there);
* `slow`: paths served in small chunks with a pause between them, so a client can be stopped
  mid-file.

Every request is recorded in `requests` as (method, path, Range header or None, status).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, root, *, gated=(), slow=(), chunk: int = 64 * 1024, pause_s: float = 0.05):
        self.root = Path(root)
        self.gated = set(gated)
        self.slow = set(slow)
        self.chunk, self.pause_s = chunk, pause_s
        self.requests: list[tuple[str, str, str | None, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def file_requests(self, method: str = "GET") -> list[tuple[str, str | None, int]]:
        """(path, range, status) of the file (resolve) requests with this method."""
        return [(p, r, s) for m, p, r, s in self.requests if m == method and "/resolve/" in p]


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean; `hub.requests` is the log
            pass

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _record(self, status: int) -> None:
            hub.requests.append((self.command, urlsplit(self.path).path, self.headers.get("Range"), status))

        def _send(self, status: int, headers: dict, payload: bytes = b"", body: bool = True) -> None:
            self._record(status)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(payload)) if "Content-Length" not in headers else headers[
                "Content-Length"])
            self.end_headers()
            if body and payload:
                self.wfile.write(payload)

        def _answer(self, body: bool) -> None:
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[4] == "tree":
                return self._tree("/".join(parts[2:4]), body)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._file("/".join(parts[:2]), "/".join(parts[4:]), body)
            self._send(404, {"X-Error-Code": "EntryNotFound"}, b"{}", body)

        def _tree(self, repo: str, body: bool) -> None:
            folder = hub.root / repo
            if not folder.is_dir():
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"{}", body)
            files = sorted(p for p in folder.rglob("*")
                           if p.is_file() and ".git" not in p.relative_to(folder).parts)
            listing = [{"type": "file", "path": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files]
            self._send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode(), body)

        def _file(self, repo: str, name: str, body: bool) -> None:
            if repo in hub.gated:
                return self._send(401, {"X-Error-Code": "GatedRepo", "X-Error-Message":
                                        f"Access to model {repo} is restricted. You must have access to it and be "
                                        f"authenticated to access it. Please log in."}, b"{}", body)
            path = hub.root / repo / name
            if not path.is_file():
                return self._send(404, {"X-Error-Code": "EntryNotFound"}, b"{}", body)
            data = path.read_bytes()
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT,
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            start = _range_start(self.headers.get("Range"))
            status = 200
            if start is not None and 0 < start < len(data):
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data, status = data[start:], 206
            headers["Content-Length"] = len(data)
            self._send(status, headers, b"", body)
            if body:
                self._stream(data, slow=name in hub.slow or f"{repo}/{name}" in hub.slow)

        def _stream(self, data: bytes, slow: bool) -> None:
            step = hub.chunk if slow else len(data) or 1
            try:
                for offset in range(0, len(data), step):
                    self.wfile.write(data[offset:offset + step])
                    if slow:
                        self.wfile.flush()
                        time.sleep(hub.pause_s)
            except (BrokenPipeError, ConnectionResetError):  # the client was stopped mid-file
                pass

    return Handler


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    first = header[len("bytes="):].split(",")[0].split("-")[0]
    return int(first) if first.isdigit() else None
