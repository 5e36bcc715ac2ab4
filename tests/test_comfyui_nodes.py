"""The node pack inside real ComfyUI servers: registration, inputs, validation, error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from comfyui_server import PACK_LINK_NAME, REPO, final_message, run_prompt

pytest_plugins = ["comfyui_server"]
pytestmark = pytest.mark.comfyui

NODE_IDS = ["SonicModelLoader", "SonicAudioLoader", "SonicImageLoader", "SONIC_PreData", "SonicInference",
            "SonicLatentDecoder", "SonicPostProcess", "SonicVideoOutput"]
LINK_TYPES = {"SONIC_MODEL", "SONIC_PREDATA", "SONIC_LATENTS", "IMAGE", "AUDIO", "MASK"}


def client_for(server):
    from sonic.tools.comfy_client import ComfyClient

    return ComfyClient(server.url)


def test_object_info_lists_every_node_with_documented_inputs(comfy_server):
    info = client_for(comfy_server).object_info()
    missing = [n for n in NODE_IDS if n not in info]
    assert not missing, f"nodes not registered: {missing}\n{comfy_server.log()}"
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["category"] == "Sonic" and node["description"], node_id
        assert len(node.get("output_tooltips") or []) == len(node["output"]), f"{node_id}: output tooltips"
        for category in ("required", "optional"):
            for name, spec in node["input"].get(category, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
                typ = spec[0]
                if (isinstance(typ, str) and typ in LINK_TYPES) or options.get("forceInput"):
                    continue
                if typ in ("INT", "FLOAT"):
                    for key in ("default", "min", "max", "step"):
                        assert key in options, f"{node_id}.{name} lacks {key}"
                    assert options["min"] <= options["default"] <= options["max"], f"{node_id}.{name} default range"
                elif typ in ("STRING", "BOOLEAN"):
                    assert "default" in options, f"{node_id}.{name} lacks a default"
                elif isinstance(typ, list) and name not in ("audio", "image"):
                    assert options.get("default") in typ, f"{node_id}.{name}: default {options.get('default')} not offered"
    assert info["SonicVideoOutput"]["output_node"] is True
    assert info["SonicAudioLoader"]["input"]["required"]["audio"][1].get("audio_upload") is True
    assert info["SonicImageLoader"]["input"]["required"]["image"][1].get("image_upload") is True
    # Rarely touched knobs are hidden behind "advanced".
    assert info["SonicInference"]["input"]["optional"]["audio_guidance"][1].get("advanced") is True
    assert info["SonicInference"]["input"]["required"]["seed"][1].get("control_after_generate") is True


def test_presets_are_listed_as_templates(comfy_server):
    templates = client_for(comfy_server).get_json("/workflow_templates")
    assert sorted(templates.get(PACK_LINK_NAME, [])) == ["sonic_fast", "sonic_high_quality"], templates


def test_pack_imports_on_the_2024_core(comfy_paths, tmp_path):
    old_core = comfy_paths[1]
    link = tmp_path / PACK_LINK_NAME
    link.symlink_to(REPO, target_is_directory=True)
    script = (
        "import json, sys\n"
        "sys.argv = ['main.py', '--cpu']\n"
        "import comfy.options; comfy.options.enable_args_parsing()\n"
        "import nodes\n"
        f"ok = nodes.load_custom_node({str(link)!r})\n"
        "found = {n: sorted(c.INPUT_TYPES()['required']) for n, c in nodes.NODE_CLASS_MAPPINGS.items()\n"
        "         if n.startswith(('Sonic', 'SONIC_'))}\n"
        "print('RESULT ' + json.dumps({'ok': ok, 'nodes': found}))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=old_core, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "PYTHONPATH": str(old_core)})
    lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
    assert run.returncode == 0 and lines, f"2024 core run failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["ok"], run.stderr[-5000:]
    assert sorted(result["nodes"]) == sorted(NODE_IDS)
    assert "Cannot import" not in run.stderr


def loader_prompt(audio_name: str) -> dict:
    return {"1": {"class_type": "SonicAudioLoader", "inputs": {"audio": audio_name}},
            "2": {"class_type": "SonicVideoOutput", "inputs": {
                "frames": ["3", 0], "fps": 25.0, "filename_prefix": "sonic/never", "crf": 19, "preset": "medium",
                "audio": ["1", 0]}},
            "3": {"class_type": "SonicImageLoader", "inputs": {"image": "portrait.png"}}}


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "../server.log"])
def test_paths_outside_the_input_folder_are_rejected_before_running(comfy_server, name):
    client = client_for(comfy_server)
    status, answer = client.post_json("/prompt", {"prompt": loader_prompt(name), "client_id": client.client_id})
    assert status == 400, answer
    errors = answer["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "outside" in errors[0]["details"] or "absolute" in errors[0]["details"], errors


def test_missing_weights_give_an_execution_error_listing_the_files(comfy_server):
    sonic_dir = comfy_server.base / "models" / "sonic"
    hidden = [sonic_dir / "audio2bucket.pth", sonic_dir / "whisper-tiny"]
    for path in hidden:
        path.rename(path.with_name(path.name + ".hidden"))
    try:
        prompt = {
            "1": {"class_type": "SonicModelLoader", "inputs": {"svd_model": "auto", "dtype": "fp32",
                                                               "memory_policy": "offload", "face_detector": "opencv"}},
            "2": {"class_type": "SonicImageLoader", "inputs": {"image": "portrait.png"}},
            "3": {"class_type": "SonicAudioLoader", "inputs": {"audio": "speech.wav"}},
            "4": {"class_type": "SONIC_PreData", "inputs": {"sonic_model": ["1", 0], "image": ["2", 0], "audio": ["3", 0],
                                                            "duration": 0.0, "min_resolution": 64, "expand_ratio": 0.5}},
            "5": {"class_type": "SonicInference", "inputs": {"sonic_model": ["1", 0], "predata": ["4", 0], "seed": 1,
                                                             "inference_steps": 2, "dynamic_scale": 1.0}},
            "6": {"class_type": "SonicLatentDecoder", "inputs": {"sonic_model": ["1", 0], "latents": ["5", 0],
                                                                 "decode_chunk_size": 8}},
            "7": {"class_type": "SonicVideoOutput", "inputs": {"frames": ["6", 0], "fps": ["6", 1], "crf": 19,
                                                               "filename_prefix": "sonic/missing", "preset": "medium"}},
        }
        _, messages = run_prompt(comfy_server, prompt)
    finally:
        for path in hidden:
            path.with_name(path.name + ".hidden").rename(path)
    end = final_message(messages)
    assert end["type"] == "execution_error", end
    assert end["data"]["node_type"] == "SonicModelLoader"
    text = end["data"]["exception_message"]
    assert "audio2bucket" in text and "whisper" in text, text
    assert "Traceback" not in text


def test_corrupt_audio_gives_a_clear_error(comfy_server):
    _, messages = run_prompt(comfy_server, loader_prompt("broken.wav"))
    end = final_message(messages)
    assert end["type"] == "execution_error", end
    assert end["data"]["node_type"] == "SonicAudioLoader"
    assert end["data"]["exception_type"].endswith("AudioError"), end["data"]["exception_type"]
    assert "broken.wav" in end["data"]["exception_message"]


def test_static_problems_are_rejected_at_queue_time(comfy_server):
    client = client_for(comfy_server)
    prompt = {
        "1": {"class_type": "SonicModelLoader", "inputs": {"svd_model": "auto", "dtype": "fp16",
                                                           "memory_policy": "keep", "face_detector": "auto"}},
        "2": {"class_type": "SonicImageLoader", "inputs": {"image": "no_such_portrait.png"}},
        "3": {"class_type": "SonicAudioLoader", "inputs": {"audio": "speech.wav"}},
        "4": {"class_type": "SONIC_PreData", "inputs": {"sonic_model": ["1", 0], "image": ["2", 0], "audio": ["3", 0],
                                                        "duration": 0.0, "min_resolution": 64, "expand_ratio": 0.5,
                                                        "face": "box", "face_box": "10,10,5"}},
        "5": {"class_type": "SonicInference", "inputs": {"sonic_model": ["1", 0], "predata": ["4", 0], "seed": 1,
                                                         "inference_steps": 2, "dynamic_scale": 1.0,
                                                         "frames_per_window": 10, "window_overlap": 10}},
        "6": {"class_type": "SonicLatentDecoder", "inputs": {"sonic_model": ["1", 0], "latents": ["5", 0],
                                                             "decode_chunk_size": 8}},
        "7": {"class_type": "SonicVideoOutput", "inputs": {"frames": ["6", 0], "fps": ["6", 1], "crf": 19,
                                                           "filename_prefix": "../escape", "preset": "medium"}},
    }
    status, answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id})
    assert status == 400, answer
    details = json.dumps(answer["node_errors"])
    for expected in ("fp16", "no_such_portrait.png", "face_box", "window_overlap",
                     "output folder"):
        assert expected in details, f"{expected!r} not reported: {details}"


def test_duration_longer_than_the_audio_is_refused_before_any_weight_loads(comfy_server):
    """The loader only checks that the files exist; Sonic Prepare refuses the duration before loading them.

    The UNet file is present but unreadable here: loading it would fail at the loader."""
    prompt = json.loads((REPO / "workflows" / "api" / "sonic_fast.json").read_text())
    # Loader settings no other test uses, so ComfyUI cannot serve the loader from its cache.
    prompt["1"]["inputs"].update(dtype="fp32", memory_policy="lowvram", face_detector="opencv")
    for node in prompt.values():
        node["inputs"].update({k: v for k, v in {"image": "portrait.png", "audio": "speech.wav", "duration": 5.0,
                                                 "min_resolution": 64, "inference_steps": 2}.items()
                               if k in node["inputs"] and not isinstance(node["inputs"][k], list)})
    unet = comfy_server.base / "models" / "sonic" / "unet.pth"
    hidden = unet.with_name("unet.pth.hidden")
    unet.rename(hidden)
    try:
        unet.write_bytes(b"not a checkpoint" * 64)
        _, messages = run_prompt(comfy_server, prompt)
    finally:
        unet.unlink(missing_ok=True)
        hidden.rename(unet)
    cached = {n for m in messages if m["type"] == "execution_cached" for n in m["data"].get("nodes", [])}
    assert "1" not in cached, "the loader was served from the cache, so this test proves nothing"
    end = final_message(messages)
    assert end["type"] == "execution_error", end
    assert end["data"]["node_type"] == "SONIC_PreData", end["data"]
    assert "longer than the audio" in end["data"]["exception_message"]
    assert not any(m["type"] == "progress" and m["data"].get("node") == "5" for m in messages), "sampling started"
