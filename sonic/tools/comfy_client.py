"""Queue Sonic jobs on a running ComfyUI server: `python -m sonic queue ...`.

    python -m sonic queue --server http://127.0.0.1:8188 --workflow workflows/api/sonic_fast.json \\
        --image face.png --audio speech.wav --out results/ [--set inference_steps=10 ...]
    python -m sonic queue --server URL --workflow FILE --jobs jobs.csv --out results/

For every image x audio pair the client uploads both files (`POST /upload/image`, which takes
any file type), fills them into the workflow's image and audio loader nodes, applies the
`--set NAME=VALUE` overrides to every node that has that widget input, queues the graph
(`POST /prompt`), follows the server's websocket with a progress bar and downloads each MP4
the output nodes report (`GET /view`) into the output folder. A failed job is reported and the
batch goes on; the exit status is 1 when any job failed.

Only the given server is contacted. Pure standard library (urllib + a small RFC 6455
websocket client) plus tqdm; no ComfyUI import. Both API-format and UI-format workflows are
accepted (UI ones are converted with the server's `/object_info`, see `ui_to_api`).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError, SonicError

IMAGE_LOADERS = {"SonicImageLoader": "image", "LoadImage": "image"}
AUDIO_LOADERS = {"SonicAudioLoader": "audio", "LoadAudio": "audio"}
UPLOAD_SUBFOLDER = "sonic_queue"
DEFAULT_JOB_TIMEOUT = 3600.0  # seconds one job may take before the client gives up on it


class ComfyConnectionError(SonicError):
    """The ComfyUI server cannot be reached or answered something unexpected."""


# ============================================================================== HTTP
class ComfyClient:
    """Minimal client for one ComfyUI server (HTTP JSON routes, uploads, downloads, websocket)."""

    def __init__(self, server: str, *, timeout: float = 60.0):
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
                query: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; HTTP error statuses are returned, network failures raise."""
        req = urllib.request.Request(self.url(path, **(query or {})), data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ComfyConnectionError(f"cannot reach the ComfyUI server at {self.base} ({exc}); is it running? "
                                       f"check --server") from None

    def get_json(self, path: str, **query) -> Any:
        status, data = self.request("GET", path, query=query)
        if status != 200:
            raise ComfyConnectionError(f"GET {path} answered HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        status, data = self.request("POST", path, body=json.dumps(payload).encode(),
                                    headers={"Content-Type": "application/json"})
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode("utf-8", "replace")

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def history(self, prompt_id: str, *, wait: float = 30.0, poll: float = 0.2) -> dict:
        """The finished history entry of one prompt.

        ComfyUI sends `execution_success` on the websocket before it files the history entry, so a
        client that asks straight away can find nothing; poll for up to `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # ComfyUI files the entry once, when the prompt is done (success or error)
                return entry
            if time.monotonic() >= deadline:
                raise ComfyConnectionError(f"the server reported prompt {prompt_id} finished but has no history entry "
                                           f"for it after {wait:.0f} s")
            time.sleep(poll)

    def upload(self, path: Path, *, subfolder: str = UPLOAD_SUBFOLDER, name: str | None = None) -> str:
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
        status, data = self.request("POST", "/upload/image", body=b"".join(parts),
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyConnectionError(f"uploading {path} failed: HTTP {status} {data[:300]!r}")
        info = json.loads(data)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def download(self, entry: dict, dest: Path) -> Path:
        status, data = self.request("GET", "/view", query={"filename": entry["filename"],
                                                           "subfolder": entry.get("subfolder", ""),
                                                           "type": entry.get("type", "output")})
        if status != 200:
            raise ComfyConnectionError(f"downloading {entry.get('filename')} failed: HTTP {status}")
        tmp = dest.with_name(f".{dest.name}.partial")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return dest

    def websocket(self) -> "WebSocket":
        scheme = "wss" if self.parsed.scheme == "https" else "ws"
        return WebSocket(f"{scheme}://{self.parsed.netloc}{self.parsed.path.rstrip('/')}/ws?clientId={self.client_id}",
                         timeout=self.timeout)


# ============================================================================== websocket
class WebSocket:
    """A small RFC 6455 client: text/binary messages, ping replies, close. Enough for ComfyUI's /ws."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, *, timeout: float = 30.0):
        parsed = urllib.parse.urlparse(url)
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
            chunk = sock.recv(4096)
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
                return json.loads(payload)

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


# ============================================================================== workflows
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
UPLOAD_OPTIONS = ("image_upload", "audio_upload", "video_upload")


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _widget_inputs(info: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of a node's widget inputs in the order the frontend stores their values."""
    spec = info.get("input", {})
    order = info.get("input_order") or {cat: list(spec.get(cat, {})) for cat in ("required", "optional")}
    widgets = []
    for category in ("required", "optional"):
        for name in order.get(category, []):
            entry = spec.get(category, {}).get(name)
            if entry is None:
                continue
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput"):
                widgets.append((name, typ, opts))
    return widgets


def _map_widget_values(values: list, widgets: list[tuple[str, Any, dict]]) -> dict:
    """Positional `widgets_values` -> {input name: value}, skipping the frontend's hidden extra values."""
    result, i = {}, 0
    for index, (name, typ, opts) in enumerate(widgets):
        if i >= len(values):
            break
        result[name] = values[i]
        i += 1
        remaining_widgets = len(widgets) - index - 1
        if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            if i < len(values) and values[i] in SEED_CONTROL_VALUES:
                i += 1
        if any(opts.get(key) for key in UPLOAD_OPTIONS):
            # LoadImage stores [file, "image"], audio loaders [file, null, null]: the upload widgets' values.
            while i < len(values) and len(values) - i > remaining_widgets and values[i] in (None, "image", ""):
                i += 1
    return result


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow (what the editor saves) into the API format `POST /prompt` takes.

    Widget values map onto widget inputs in `/object_info` order (skipping control_after_generate
    and upload-widget values); links become `[source_id, output_index]`; Reroutes are followed,
    PrimitiveNode values inlined, Notes dropped, muted nodes (mode 2) skipped and bypassed nodes
    (mode 4) passed through by link type. Subgraphs/group nodes are not supported.
    """
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        else:
            links[link[0]] = tuple(link[:6])

    def source_of(link_id, depth=0):
        """('link', [id, slot]) | ('value', v) | None for a link id, through reroutes/bypasses."""
        if link_id is None or link_id not in links or depth > 100:
            return None
        _, from_id, from_slot, _, _, link_type = links[link_id]
        src = nodes.get(from_id)
        if src is None or src.get("mode", 0) == 2:
            return None
        if src["type"] == "Reroute":
            return source_of((src.get("inputs") or [{}])[0].get("link"), depth + 1)
        if src["type"] == "PrimitiveNode":
            return ("value", (src.get("widgets_values") or [None])[0])
        if src.get("mode", 0) == 4:
            for inp in src.get("inputs", []):
                if inp.get("link") is not None and inp.get("type") == link_type:
                    return source_of(inp["link"], depth + 1)
            return None
        return ("link", [str(from_id), from_slot])

    prompt = {}
    for node_id, node in nodes.items():
        class_type = node["type"]
        if class_type in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info.get(class_type)
        if info is None:
            raise ParameterError(f"the workflow uses node type {class_type!r}, which this ComfyUI server does not have "
                                 f"(missing custom node pack?)")
        values = node.get("widgets_values") or []
        inputs = dict(values) if isinstance(values, dict) else _map_widget_values(list(values), _widget_inputs(info))
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            source = source_of(inp["link"])
            if source is None:
                inputs.pop(inp["name"], None)
            elif source[0] == "value":
                inputs[inp["name"]] = source[1]
            else:
                inputs[inp["name"]] = source[1]
        title = node.get("title") or info.get("display_name") or class_type
        prompt[str(node_id)] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
    return prompt


def parse_set_options(pairs: list[str]) -> dict[str, str]:
    """['name=value', ...] -> {name: raw value}; a malformed entry is a ParameterError."""
    result = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"--set expects NAME=VALUE (e.g. --set inference_steps=10), got {pair!r}")
        result[name.strip()] = value
    return result


def _coerce(raw: str, current: Any, name: str) -> Any:
    """The override `raw` converted to the type of the workflow's current value."""
    try:
        if isinstance(current, bool):
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return lowered in ("true", "1", "yes", "on")
        if isinstance(current, int):
            number = float(raw)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ParameterError(f"--set {name}={raw!r}: expected a {type(current).__name__} like {current!r}") from None
    return raw


def apply_overrides(prompt: dict, overrides: dict[str, str]) -> dict:
    """Set each widget input NAME on every node that has it as a constant; unknown names are an error."""
    for name, raw in overrides.items():
        hits = 0
        for node in prompt.values():
            inputs = node.get("inputs", {})
            if name in inputs and not _is_link(inputs[name]):
                inputs[name] = _coerce(raw, inputs[name], name)
                hits += 1
        if not hits:
            known = sorted({k for n in prompt.values() for k, v in n.get("inputs", {}).items() if not _is_link(v)})
            raise ParameterError(f"--set {name}: no node of the workflow has a widget input named {name!r}; "
                                 f"known inputs: {', '.join(known)}")
    return prompt


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def fill_media(prompt: dict, image_name: str, audio_name: str) -> dict:
    """Point every image loader at `image_name` and every audio loader at `audio_name`."""
    found_image = found_audio = False
    for node in prompt.values():
        key = IMAGE_LOADERS.get(node.get("class_type"))
        if key:
            node["inputs"][key] = image_name
            found_image = True
        key = AUDIO_LOADERS.get(node.get("class_type"))
        if key:
            node["inputs"][key] = audio_name
            found_audio = True
    if not (found_image and found_audio):
        missing = " and ".join(w for w, ok in (("an image loader", found_image), ("an audio loader", found_audio)) if not ok)
        raise ParameterError(f"the workflow has no {missing} node ({', '.join(IMAGE_LOADERS)} / "
                             f"{', '.join(AUDIO_LOADERS)}); use a Sonic preset from workflows/")
    return prompt


def video_outputs(outputs: dict) -> list[dict]:
    """File entries of the videos the output nodes reported (history `outputs`)."""
    found = []
    for node_id in sorted(outputs, key=str):
        ui = outputs[node_id] or {}
        for key in ("images", "gifs", "video", "videos"):
            for entry in ui.get(key, []) or []:
                if isinstance(entry, dict) and str(entry.get("filename", "")).lower().endswith((".mp4", ".webm", ".mov")):
                    found.append(entry)
    return found


# ============================================================================== jobs
@dataclass
class Job:
    image: Path
    audio: Path
    name: str


@dataclass
class JobResult:
    job: Job
    ok: bool
    files: list[Path] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0


def read_jobs(path: Path) -> list[Job]:
    """Jobs from a CSV (columns image,audio[,name]) or JSON (list of {"image","audio"[,"name"]}) file.

    Relative paths are relative to the jobs file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"jobs file {path} not found")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data.get("jobs", []) if isinstance(data, dict) else data
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise ParameterError(f"jobs file {path} must be .csv (columns image,audio) or .json")
    jobs = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("image") or not row.get("audio"):
            raise ParameterError(f"jobs file {path}, entry {number}: needs 'image' and 'audio', got {row!r}")
        image, audio = (path.parent / str(row[k]).strip() for k in ("image", "audio"))
        jobs.append(Job(image, audio, str(row.get("name") or "").strip() or f"{image.stem}__{audio.stem}"))
    return jobs


def _unique_path(folder: Path, stem: str, suffix: str) -> Path:
    candidate, counter = folder / f"{stem}{suffix}", 2
    while candidate.exists():
        candidate, counter = folder / f"{stem}-{counter}{suffix}", counter + 1
    return candidate


def _content_name(path: Path) -> str:
    """Upload name that changes with the content (so the server's cache never serves a stale file)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    return f"{path.stem}-{digest}{path.suffix}"


class JobRunner:
    """Runs jobs one after the other against one server, following each on the websocket."""

    def __init__(self, client: ComfyClient, prompt: dict, ui_workflow: dict | None, out_dir: Path, *,
                 job_timeout: float = DEFAULT_JOB_TIMEOUT, progress: bool = True):
        self.client, self.prompt, self.ui_workflow, self.out_dir = client, prompt, ui_workflow, out_dir
        self.job_timeout, self.progress = job_timeout, progress

    def run(self, job: Job) -> JobResult:
        started = time.monotonic()
        try:
            for path, what in ((job.image, "image"), (job.audio, "audio")):
                if not path.is_file():
                    raise ParameterError(f"{what} file {path} not found")
            image_name = self.client.upload(job.image, name=_content_name(job.image))
            audio_name = self.client.upload(job.audio, name=_content_name(job.audio))
            prompt = fill_media(json.loads(json.dumps(self.prompt)), image_name, audio_name)
            files = self._queue_and_fetch(prompt, job)
            return JobResult(job, True, files, f"wrote {', '.join(str(f) for f in files)}", time.monotonic() - started)
        except SonicError as exc:
            return JobResult(job, False, [], str(exc), time.monotonic() - started)

    def _queue_and_fetch(self, prompt: dict, job: Job) -> list[Path]:
        ws = self.client.websocket()
        try:
            payload = {"prompt": prompt, "client_id": self.client.client_id}
            if self.ui_workflow is not None:
                payload["extra_data"] = {"extra_pnginfo": {"workflow": self.ui_workflow}}
            status, answer = self.client.post_json("/prompt", payload)
            if status != 200:
                raise SonicError(f"the server refused the workflow: {describe_prompt_error(answer)}")
            prompt_id = answer["prompt_id"]
            self._follow(ws, prompt_id, job)
        finally:
            ws.close()
        history = self.client.history(prompt_id)
        entries = video_outputs(history.get("outputs", {}))
        if not entries:
            raise SonicError("the workflow finished but no output node reported a video (is a Sonic Video Output or "
                             "SaveVideo node connected?)")
        files = []
        for index, entry in enumerate(entries):
            stem = job.name if len(entries) == 1 else f"{job.name}-{index + 1}"
            files.append(self.client.download(entry, _unique_path(self.out_dir, stem, Path(entry["filename"]).suffix)))
        return files

    def _follow(self, ws: WebSocket, prompt_id: str, job: Job) -> None:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=1, desc=job.name, unit="step", leave=False, file=sys.stderr)
        deadline = time.monotonic() + self.job_timeout
        next_poll = time.monotonic() + 5.0
        try:
            while time.monotonic() < deadline:
                message = ws.recv_json(timeout=1.0)
                if message is None:
                    if time.monotonic() >= next_poll:  # a missed message must not hang the batch
                        next_poll = time.monotonic() + 5.0
                        if self._finished_in_history(prompt_id):
                            return
                    continue
                kind, data = message.get("type"), message.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "progress" and bar is not None:
                    bar.total, bar.n = max(int(data.get("max") or 1), 1), int(data.get("value") or 0)
                    bar.refresh()
                elif kind == "execution_error":
                    raise SonicError(f"node {data.get('node_type')} failed: {data.get('exception_type', 'error')}: "
                                     f"{str(data.get('exception_message', '')).strip()}")
                elif kind == "execution_interrupted":
                    raise SonicError("the job was interrupted on the server")
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                     and data.get("prompt_id") == prompt_id):
                    return
            raise SonicError(f"no result after {self.job_timeout:.0f} s; the job may still be running on the server")
        finally:
            if bar is not None:
                bar.close()

    def _finished_in_history(self, prompt_id: str) -> bool:
        entry = self.client.get_json(f"/history/{prompt_id}").get(prompt_id)
        if not entry:
            return False
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            messages = [m for m in status.get("messages", []) if m and m[0] == "execution_error"]
            detail = messages[-1][1].get("exception_message", "") if messages else ""
            raise SonicError(f"the job failed on the server: {str(detail).strip()}")
        return bool(status.get("completed"))


def describe_prompt_error(answer: Any) -> str:
    """One readable line from a `POST /prompt` 400 answer."""
    if not isinstance(answer, dict):
        return str(answer)[:500]
    parts = []
    error = answer.get("error") or {}
    if isinstance(error, dict) and error.get("message"):
        parts.append(f"{error.get('message')}{': ' + error['details'] if error.get('details') else ''}")
    for node_id, node in (answer.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            parts.append(f"node {node_id} ({node.get('class_type')}): {err.get('message')} - {err.get('details')}")
    return "; ".join(parts) or json.dumps(answer)[:500]


def load_workflow(path: Path, client: ComfyClient) -> tuple[dict, dict | None]:
    """(API prompt, UI workflow or None) from a workflow file in either format."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"workflow file {path} not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ParameterError(f"workflow file {path} is not valid JSON ({exc})") from None
    if is_ui_workflow(data):
        return ui_to_api(data, client.object_info()), data
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return data, None
    raise ParameterError(f"{path} is neither an API-format nor a UI-format ComfyUI workflow")
