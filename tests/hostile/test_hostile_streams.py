"""Issue 12, class 4: bounded memory and time. check-sync streams (memory flat in video length),
the queue client survives a hostile server (every malformed answer is one job's one-line error,
the batch goes on), absurd safetensors headers are refused quickly."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hostile_helpers import REPO, run_sonic


# ------------------------------------------------------------------------------ check-sync memory
def synthetic_talk(path: Path, seconds: float, size: str = "1280x720") -> Path:
    """A moving test pattern with a 1 kHz tone that swells 3 times a second (no face: --mouth-box is given)."""
    from sonic.media.probe import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=16000",
                    "-af", "volume='0.2+0.8*abs(sin(3*PI*t))':eval=frame", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "ultrafast", "-crf", "40", "-c:a", "aac", "-shortest",
                    str(path)], check=True, timeout=600)
    return path


def test_check_sync_memory_does_not_grow_with_the_video(tmp_path):
    short = synthetic_talk(tmp_path / "short.mp4", 6)
    long = synthetic_talk(tmp_path / "long.mp4", 48)
    box = ("--mouth-box", "500,300,780,520")
    peaks = {}
    for name, path in (("short", short), ("long", long)):
        outcome = run_sonic("check-sync", path, *box, timeout=600)
        assert outcome.returncode == 0, outcome.stderr
        report = json.loads(outcome.stdout)
        assert report["duration_s"] == pytest.approx(6 if name == "short" else 48, abs=0.1)
        peaks[name] = outcome.peak_mb
    # Holding the frames would take 48 s x 25 fps x 640x360 RGB = 830 MB more (plus float grey copies).
    assert peaks["long"] - peaks["short"] < 80, peaks
    print(f"check-sync peaks (720p): 6 s {peaks['short']:.0f} MB, 48 s {peaks['long']:.0f} MB", file=sys.stderr)


# ------------------------------------------------------------------------------ hostile ComfyUI
class HostileComfy(http.server.ThreadingHTTPServer):
    """A fake ComfyUI whose n-th job (n-th websocket) misbehaves in its own way."""

    daemon_threads = True

    def __init__(self, scenarios: list[str]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scenarios = scenarios
        self.sockets = 0
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def scenario(self, job: int) -> str:
        return self.server.scenarios[job - 1]

    def send_json(self, value, status=200):
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/ws"):
            return self.websocket()
        if self.path.startswith("/system_stats"):
            return self.send_json({"system": {}})
        if self.path.startswith("/history/p"):
            job = int(self.path.split("/p")[1])
            kind = self.scenario(job)
            if kind == "endless history":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # no length: the body goes on until the client stops reading
                try:
                    while True:
                        self.wfile.write(b"[" * 65536)
                except OSError:
                    return
            if kind == "trickle history":
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    for _ in range(10_000):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.3)
                except OSError:
                    return
            outputs = {"9": "nope"} if kind == "odd outputs" else {
                "9": {"gifs": [{"filename": f"out{job}.mp4", "subfolder": "", "type": "output"}]}}
            return self.send_json({f"p{job}": {"outputs": outputs, "status": {"completed": True}}})
        if self.path.startswith("/view"):
            return self.send_json(b"\x00\x00\x00\x18ftypmp42 fake video")
        self.send_json({"error": "unknown"}, 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/upload/image":
            name = body.split(b'filename="')[1].split(b'"')[0].decode()
            return self.send_json({"name": name, "subfolder": "sonic_queue", "type": "input"})
        if self.path == "/prompt":
            job = self.server.sockets
            kind = self.scenario(job)
            if kind == "prompt not json":
                return self.send_json(b"<html>proxy error</html>")
            if kind == "prompt id wrong type":
                return self.send_json({"prompt_id": 5})
            return self.send_json({"prompt_id": f"p{job}", "number": job})
        self.send_json({"error": "unknown"}, 404)

    def websocket(self):
        with self.server.lock:
            self.server.sockets += 1
            job = self.server.sockets
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.wfile.flush()
        kind = self.scenario(job)
        time.sleep(0.3)  # the client posts the prompt meanwhile
        try:
            if kind == "lying frame":
                self.wfile.write(bytes([0x82, 127]) + struct.pack(">Q", 1 << 40) + b"\x00" * 100)
            elif kind == "text not json":
                self.wfile.write(bytes([0x81, 8]) + b"garbage{")
            else:
                text = json.dumps({"type": "executing", "data": {"node": None, "prompt_id": f"p{job}"}}).encode()
                self.wfile.write(bytes([0x81, len(text)]) + text)
            self.wfile.flush()
            time.sleep(30)  # hold the connection until the client closes it
        except OSError:
            pass
        self.close_connection = True


SCENARIOS = ["prompt not json", "prompt id wrong type", "lying frame", "text not json", "endless history",
             "odd outputs", "trickle history", "fine"]


def test_queue_survives_a_hostile_server(tmp_path):
    import numpy as np
    import soundfile as sf

    from hostile_helpers import png_bytes, portrait, speech

    (tmp_path / "face.png").write_bytes(png_bytes(portrait()))
    sf.write(tmp_path / "talk.wav", speech(1.0), 16_000)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"image": "face.png", "audio": "talk.wav", "name": f"job{i + 1}"}
                                for i in range(len(SCENARIOS))]))
    server = HostileComfy(SCENARIOS)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        outcome = run_sonic("queue", "--server", server.url, "--workflow", REPO / "workflows/api/sonic_fast.json",
                            "--jobs", jobs, "--out", tmp_path / "videos", "--timeout", "8", "--quiet", timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    lines = [line for line in outcome.stdout.splitlines() if line.startswith("[")]
    assert outcome.returncode == 1 and "Traceback" not in outcome.stderr, outcome.stdout + outcome.stderr
    assert len(lines) == len(SCENARIOS), outcome.stdout
    expected = ["not a dict|where a dict", "where a str", "websocket frame of", "not JSON", "larger than",
                "no output node", "seconds|took longer|no result|allowed", "wrote"]
    import re

    for line, scenario, pattern in zip(lines, SCENARIOS, expected):
        assert re.search(pattern, line), (scenario, line)
        assert ("ok" in line[:12]) == (scenario == "fine"), line
    assert "1 of 8 jobs succeeded, 7 failed" in outcome.stdout
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["job8.mp4"]
    assert outcome.seconds < 120
    assert np.isfinite(outcome.peak_mb) and outcome.peak_mb < 1500, outcome.peak_mb


# ------------------------------------------------------------------------------ safetensors headers
def test_safetensors_header_with_absurd_entry_count_is_refused_quickly(tmp_path):
    from sonic.errors import WeightsError
    from sonic.weights.reading import read_state_dict

    entries = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(150_000)}
    header = json.dumps(entries).encode()
    (tmp_path / "many.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    started = time.monotonic()
    with pytest.raises(WeightsError, match="150,000 tensors"):
        read_state_dict(tmp_path / "many.safetensors", what="unet")
    with pytest.raises(WeightsError, match="more than the file holds"):
        read_state_dict(tmp_path / "huge.safetensors", what="unet")
    assert time.monotonic() - started < 5
