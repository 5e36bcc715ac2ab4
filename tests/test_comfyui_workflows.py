"""The shipped presets: UI files agree with their API twins and both run to an MP4 in real ComfyUI."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from comfyui_server import REPO, apply_test_settings, fast_overrides, final_message, run_prompt, ui_preset

pytest_plugins = ["comfyui_server"]
pytestmark = pytest.mark.comfyui

WORKFLOWS = REPO / "workflows"
PRESETS = ["sonic_fast", "sonic_high_quality"]




def load(path: Path) -> dict:
    return json.loads(path.read_text())


def without_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.parametrize("name", PRESETS)
def test_ui_preset_converts_to_its_api_twin(comfy_server, name):
    from sonic.tools.comfy_client import ComfyClient, ui_to_api

    info = ComfyClient(comfy_server.url).object_info()
    converted = ui_to_api(load(ui_preset(name)), info)
    assert without_meta(converted) == without_meta(load(WORKFLOWS / "api" / f"{name}.json"))
    classes = {node["class_type"] for node in converted.values()}
    assert classes <= set(info), f"unknown node types {classes - set(info)}"
    assert ui_preset(name).with_suffix(".jpg").stat().st_size > 1000, "thumbnail missing"


def test_templates_browser_lists_each_preset_once_under_its_title_with_its_thumbnail(comfy_server):
    """Custom-node templates show their file name as title and description and <name>.jpg as thumbnail."""
    from urllib.parse import quote

    from sonic.tools.comfy_client import ComfyClient

    client = ComfyClient(comfy_server.url)
    listed = client.get_json("/workflow_templates")
    titles = [ui_preset(name).stem for name in PRESETS]
    assert sorted(listed["comfyui-sonic"]) == sorted(titles), listed  # nothing else: no index, no API twins
    for title in titles:
        for suffix in (".json", ".jpg"):
            with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates/comfyui-sonic/"
                                        f"{quote(title + suffix)}", timeout=30) as answer:
                assert answer.status == 200 and len(answer.read()) > 1000, title + suffix
    labels = client.get_json("/i18n")["en"]["templateWorkflows"]["category"]
    assert labels["comfyui-sonic"] == "Sonic talking heads", labels


def test_presets_differ_where_the_issue_says():
    fast, hq = (load(WORKFLOWS / "api" / f"{n}.json") for n in PRESETS)

    def value(prompt, class_type, name):
        return next(n["inputs"][name] for n in prompt.values() if n["class_type"] == class_type)

    assert value(fast, "SONIC_PreData", "min_resolution") == 512
    assert 12 <= value(fast, "SonicInference", "inference_steps") <= 18
    assert 768 <= value(hq, "SONIC_PreData", "min_resolution") <= 1024
    assert 25 <= value(hq, "SonicInference", "inference_steps") <= 30
    for knob in ("interpolation", "colour_match", "paste_back"):
        assert value(hq, "SonicPostProcess", knob) is True
    assert value(hq, "SonicPostProcess", "smoothing") > 0
    # Loader defaults find the weights in either layout by themselves.
    assert value(fast, "SonicModelLoader", "svd_model") == value(hq, "SonicModelLoader", "svd_model") == "auto"


def test_loader_offers_the_svd_single_file_the_presets_run_on(comfy_server):
    """The test server holds SVD-xt only as models/checkpoints/svd_xt.safetensors (no VAE or CLIP weights in
    models/sonic), so the preset runs below prove that svd_model=auto finds and loads the single file."""
    from sonic.tools.comfy_client import ComfyClient

    choices = ComfyClient(comfy_server.url).object_info()["SonicModelLoader"]["input"]["required"]["svd_model"][0]
    assert choices[0] == "auto" and "svd_xt.safetensors" in choices, choices
    svd_folder = comfy_server.base / "models" / "sonic" / "stable-video-diffusion-img2vid-xt"
    assert not [p for p in svd_folder.rglob("*") if p.suffix in (".safetensors", ".bin")], "weights in the SVD folder"


def fetch_video(server, prompt_id: str, dest: Path) -> Path:
    from sonic.tools.comfy_client import ComfyClient, video_outputs

    client = ComfyClient(server.url)
    history = client.history(prompt_id)
    entries = video_outputs(history["outputs"])
    assert len(entries) == 1, history["outputs"]
    ui = next(iter(v for v in history["outputs"].values() if v.get("images")))
    assert ui.get("animated") == [True], ui
    return client.download(entries[0], dest)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_to_an_mp4_with_sound(comfy_server, tmp_path, name):
    from sonic.media.probe import probe, read_sonic_tags

    prompt = apply_test_settings(load(WORKFLOWS / "api" / f"{name}.json"), fast_overrides())
    apply_test_settings(prompt, {"image": "portrait.png", "audio": "speech.wav"})
    ui_workflow = load(ui_preset(name))
    prompt_id, messages = run_prompt(comfy_server, prompt, extra_data={"extra_pnginfo": {"workflow": ui_workflow}})
    end = final_message(messages)
    assert end["type"] == "execution_success", f"{end}\n{comfy_server.log()}"
    assert any(m["type"] == "progress" for m in messages), "no progress was reported"

    video = fetch_video(comfy_server, prompt_id, tmp_path / f"{name}.mp4")
    facts = probe(video)
    assert facts["video_codec"] == "h264" and facts["audio_codec"] == "aac", facts
    # 1.0 s of audio = 25 audio frames -> 12 generated frames at 12.5 fps -> 24 frames at 25 fps, and the
    # last one held once more: 25 frames, so the video ends with its 1.0 s of audio.
    assert facts["frame_count"] == 25, facts
    assert facts["fps"] == pytest.approx(25.0)
    assert facts["video_duration"] == pytest.approx(1.0, abs=0.02)
    assert facts["audio_duration"] == pytest.approx(1.0, abs=0.05)
    if name == "sonic_high_quality":  # pasted back into the 192 x 192 input picture
        assert (facts["width"], facts["height"]) == (192, 192), facts
    else:
        assert (facts["width"], facts["height"]) == (64, 64), facts
    tags = read_sonic_tags(video)
    assert tags["ai_generated"] is True
    assert len(tags["image_sha256"]) == 64 and len(tags["audio_sha256"]) == 64
    # The frontend reopens a dropped MP4 from these two tags (as written by core SaveVideo).
    assert json.loads(facts["tags"]["workflow"])["nodes"] == ui_workflow["nodes"], "UI workflow not embedded"
    assert json.loads(facts["tags"]["prompt"])["5"]["inputs"]["inference_steps"] == 2


def test_loader_devices_option_gives_the_one_device_video(comfy_server, tmp_path):
    """Sonic Model Loader with devices=cpu,cpu (threads, one UNet copy each) writes the frames of the default."""
    import soundfile as sf

    from helpers import SR, speech_like
    from sonic.media.probe import read_video

    sf.write(comfy_server.base / "input" / "speech_2s.wav", speech_like(2.4), SR, subtype="PCM_16")
    videos = []
    for devices in ("", "cpu,cpu"):
        prompt = apply_test_settings(load(WORKFLOWS / "api" / "sonic_fast.json"), fast_overrides())
        apply_test_settings(prompt, {"image": "portrait.png", "audio": "speech_2s.wav", "duration": 2.4})
        loader = next(node for node in prompt.values() if node["class_type"] == "SonicModelLoader")
        loader["inputs"]["devices"] = devices
        prompt_id, messages = run_prompt(comfy_server, prompt)
        end = final_message(messages)
        assert end["type"] == "execution_success", f"{end}\n{comfy_server.log()}"
        videos.append(read_video(fetch_video(comfy_server, prompt_id, tmp_path / f"devices{len(videos)}.mp4"))[0])
    assert videos[0].shape[0] == 60  # 2.4 s: 30 generated frames (2 windows a step, one per thread), doubled
    # Threads pull windows from a queue, so the split of a step may be 1+1 or 2+0.
    assert re.search(r"\[Sonic\] spread: 2 windows/step over 2 devices: [\d.]+\+[\d.]+\n", comfy_server.log())
    assert np.array_equal(videos[0], videos[1])
