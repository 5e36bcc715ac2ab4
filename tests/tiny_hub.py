"""The tiny zoo as three Hugging Face repositories, served by olah (a real hub mirror) offline.

`build_tiny_hub(dest)` writes `dest/models/{LeonJoe13/Sonic, stabilityai/stable-video-diffusion-
img2vid-xt, openai/whisper-tiny}` as git repositories holding what the real ones hold, with the
tiny zoo's weights: the Sonic repository's files at their release paths, whisper-tiny, and the
SVD-xt folder plus stand-ins for the files Sonic must never fetch (the UNet weights and the
single-file checkpoint, random bytes). `OlahHub(dest)` runs `olah-cli` in offline mode with
`mirrors-path` = dest and writes its access log to `log_file`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sonic.weights.locate import SONIC_SOURCE, SOURCES, SVD_SOURCE

#: Files of the SVD-xt repository that Sonic never needs (stand-ins of the real multi-GB files).
NEVER_FETCHED = ("unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 "svd_xt.safetensors")


def build_tiny_hub(dest) -> Path:
    from sonic.tools.zoo import write_tiny_zoo

    dest = Path(dest)
    zoo = write_tiny_zoo(dest / "zoo", with_face_detector=True)
    for source in SOURCES.values():
        repo = dest / "models" / source.repo_id
        repo.mkdir(parents=True)
        origin = zoo / source.folder if source.folder else zoo
        for path in origin.rglob("*"):
            rel = path.relative_to(origin).as_posix()
            if path.is_file() and (source.folder or rel.split("/")[0] in {"Sonic", "RIFE", "yoloface_v5m.pt"}):
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, repo / rel)
        (repo / "README.md").write_text(f"---\nlicense: other\n---\n# tiny stand-in of {source.repo_id}\n")
    svd = dest / "models" / SVD_SOURCE.repo_id
    for i, name in enumerate(NEVER_FETCHED):
        (svd / name).write_bytes(os.urandom(4096 + i))
    for repo in (dest / "models").glob("*/*"):
        git = ["git", "-C", str(repo), "-c", "user.name=tiny", "-c", "user.email=tiny@example.invalid"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", "tiny zoo"], check=True)
    shutil.rmtree(dest / "zoo")
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OlahHub:
    """olah-cli serving `hub_root/models/...` offline on a free local port."""

    def __init__(self, hub_root, work):
        self.hub_root, self.work = Path(hub_root), Path(work)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = self.work / "logs" / "olah.log"
        self._proc = None

    def __enter__(self) -> "OlahHub":
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "olah.toml"
        config.write_text(
            f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nmirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\nrepos-path = "{self.work / "repos"}"\n'
            f'mirrors-path = ["{self.hub_root}"]\n[accessibility]\noffline = true\n')
        self._out = open(self.work / "olah.out", "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from olah.server import cli; sys.argv[0] = 'olah-cli'; cli()",
             "-c", str(config), "--log-path", str(self.log_file.parent)],
            cwd=self.work, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.work / 'olah.out').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/models/{SONIC_SOURCE.repo_id}/revision/main", timeout=2)
                return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("olah did not answer within 60 s")

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._out.close()

    def mark(self) -> int:
        """Position in the access log; `requests(since=mark)` lists what came after."""
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def requests(self, since: int = 0) -> list[tuple[str, str]]:
        """(method, path) of every request olah logged after `since`."""
        with open(self.log_file, "rb") as log:
            log.seek(since)
            text = log.read().decode("utf-8", "replace")
        return re.findall(r'"(GET|HEAD|POST) (\S+) HTTP/[\d.]+"', text)
