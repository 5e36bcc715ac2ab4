"""Previews while sampling: Sonic Inference sends frames to the UI through ComfyUI's latent previewer,
following the server's preview setting (`--preview-method`)."""

from __future__ import annotations

import io
import json
import struct
import time

import pytest

from comfyui_server import (REPO, ComfyServer, apply_test_settings, fast_overrides, make_base_directory,
                            write_test_media)

pytest_plugins = ["comfyui_server"]
pytestmark = pytest.mark.comfyui

PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4  # binary websocket event types


def tiny_preset() -> dict:
    prompt = json.loads((REPO / "workflows" / "api" / "sonic_fast.json").read_text())
    return apply_test_settings(prompt, {**fast_overrides(), "duration": 0.5, "image": "portrait.png",
                                        "audio": "speech.wav"})


def run_collecting_previews(server, prompt: dict, timeout: float = 300.0) -> tuple[dict, list[bytes], list[dict]]:
    """Queue `prompt`; returns (final message, preview image bytes, progress messages of Sonic Inference)."""
    from sonic.tools.comfy_client import ComfyClient

    client = ComfyClient(server.url)
    ws = client.websocket()
    inference = next(k for k, v in prompt.items() if v["class_type"] == "SonicInference")
    previews, progress = [], []
    try:
        status, answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id})
        assert status == 200, answer
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = ws.recv(timeout=1.0)
            if message is None:
                continue
            opcode, payload = message
            if opcode == 0x2:
                event = struct.unpack(">I", payload[:4])[0]
                if event == PREVIEW_IMAGE:
                    previews.append(payload[8:])  # after the event and the image type (1 = JPEG)
                elif event == PREVIEW_IMAGE_WITH_METADATA:
                    size = struct.unpack(">I", payload[4:8])[0]
                    previews.append(payload[8 + size:])
                continue
            data = json.loads(payload)
            if data["type"] == "progress" and data["data"].get("node") == inference:
                progress.append(data["data"])
            if data["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                return data, previews, progress
        pytest.fail(f"no end in {timeout} s\n{server.log()}")
    finally:
        ws.close()


def test_previews_follow_the_preview_setting(tmp_path, comfy_paths, comfy_server):
    from PIL import Image

    base = make_base_directory(tmp_path / "base")
    write_test_media(base / "input")
    server = ComfyServer(comfy_paths[0], base, extra_args=("--preview-method", "latent2rgb"))
    try:
        server.wait_ready()
        end, previews, progress = run_collecting_previews(server, tiny_preset())
    finally:
        server.stop()
    assert end["type"] == "execution_success", end
    calls = progress[-1]["max"]
    assert len(previews) >= calls >= 2, f"{len(previews)} previews for {calls} UNet calls"
    for blob in previews:
        with Image.open(io.BytesIO(blob)) as picture:
            # one 64 x 64 frame: an 8 x 8 latent, which the server scales up for display
            assert picture.format == "JPEG" and picture.size[0] == picture.size[1] >= 8, (picture.format, picture.size)

    # The session server runs with ComfyUI's default setting, no previews: none are sent.
    end, previews, progress = run_collecting_previews(comfy_server, tiny_preset())
    assert end["type"] == "execution_success", end
    assert progress and not previews, f"{len(previews)} previews although previews are off"
