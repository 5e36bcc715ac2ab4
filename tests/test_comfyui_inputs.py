"""What the nodes do with their inputs in real ComfyUI: image decoding, declared ranges, post-processing knobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comfyui_server import REPO, final_message, run_prompt

pytest_plugins = ["comfyui_server"]
pytestmark = pytest.mark.comfyui

FAST = REPO / "workflows" / "api" / "sonic_fast.json"


def client_for(server):
    from sonic.tools.comfy_client import ComfyClient

    return ComfyClient(server.url)


def saved_files(server, prompt_id: str, node_id: str, kind: str = "images") -> list[Path]:
    """Files a core Save* node wrote for one prompt, as paths in the server's output folder."""
    outputs = client_for(server).history(prompt_id)["outputs"]
    entries = outputs[node_id][kind]
    return [server.base / "output" / entry["subfolder"] / entry["filename"] for entry in entries]


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int32)


def save_image_nodes(first_id: int, source: list, prefix: str) -> dict:
    return {str(first_id): {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": prefix}}}


# ------------------------------------------------------------------------------ ImageLoader
def write_16_bit_ramp(path: Path) -> np.ndarray:
    """A 16-bit grey PNG ramp (0..65535); returns the 8-bit grey values Sonic must see."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I"), f"the test picture is not 16-bit: {check.mode}"
    return np.rint(ramp / 257.0).astype(np.int32)


def write_transparent_png(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGBA: left half fully transparent over loud magenta, a half-transparent blue band, opaque red.

    Returns (the RGB Sonic must see: composited over white, the 8-bit mask 255 * (1 - alpha))."""
    from PIL import Image

    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (255, 0, 255, 0)  # invisible, but stored: must not show
    rgba[:, 32:48] = (0, 0, 255, 128)
    rgba[:, 48:] = (200, 30, 40, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    expected = np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.int32)
    return expected, 255 - rgba[..., 3].astype(np.int32)


def test_image_loader_keeps_16_bit_pictures_and_composites_transparency(comfy_server):
    input_dir = comfy_server.base / "input"
    ramp_expected = write_16_bit_ramp(input_dir / "ramp16.png")
    rgba_expected, mask_expected = write_transparent_png(input_dir / "transparent.png")
    prompt = {
        "1": {"class_type": "SonicImageLoader", "inputs": {"image": "ramp16.png"}},
        "3": {"class_type": "SonicImageLoader", "inputs": {"image": "transparent.png"}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 1]}},
        **save_image_nodes(2, ["1", 0], "inputs/ramp"),
        **save_image_nodes(4, ["3", 0], "inputs/rgba"),
        **save_image_nodes(6, ["5", 0], "inputs/mask"),
    }
    prompt_id, messages = run_prompt(comfy_server, prompt)
    assert final_message(messages)["type"] == "execution_success", f"{final_message(messages)}\n{comfy_server.log()}"

    # SaveImage truncates 255 * value, so a value may come back one step lower.
    ramp = read_png(saved_files(comfy_server, prompt_id, "2")[0])
    assert ramp.shape[:2] == ramp_expected.shape
    assert np.abs(ramp - ramp_expected[..., None]).max() <= 1, "16-bit ramp garbled (clipped to white?)"
    rgba = read_png(saved_files(comfy_server, prompt_id, "4")[0])
    assert np.abs(rgba - rgba_expected).max() <= 1, "transparent pixels not composited over white"
    mask = read_png(saved_files(comfy_server, prompt_id, "6")[0])[..., 0]
    assert np.abs(mask - mask_expected).max() <= 1, "MASK is not 1 - alpha"


# ------------------------------------------------------------------------------ declared ranges
def numeric_widgets(info: dict, prompt: dict) -> list[tuple[str, str, dict]]:
    """(node id, input name, options) of every INT/FLOAT widget of this pack's nodes in `prompt`."""
    found = []
    for node_id, node in prompt.items():
        spec = info[node["class_type"]]["input"]
        for category in ("required", "optional"):
            for name, (typ, *rest) in spec.get(category, {}).items():
                options = rest[0] if rest else {}
                if typ in ("INT", "FLOAT") and not options.get("forceInput") \
                        and not isinstance(node["inputs"].get(name), list):
                    found.append((node_id, name, options))
    return found


@pytest.mark.parametrize("side", ["max", "min"])
def test_values_outside_the_declared_range_are_refused_once_under_their_input(comfy_server, side):
    """Every out-of-range widget gets exactly one error, filed under its own input name.

    ComfyUI attaches a message returned by VALIDATE_INPUTS to every input that VALIDATE_INPUTS
    names, and skips its own min/max check for them: a node that names several inputs repeats
    one range error under unrelated names."""
    client = client_for(comfy_server)
    info = client.object_info()
    prompt = json.loads(FAST.read_text())
    widgets = numeric_widgets(info, prompt)
    for node_id, name, options in widgets:
        prompt[node_id]["inputs"][name] = options[side] + (1 if side == "max" else -1)
    status, answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id})
    assert status == 400, answer
    assert {"inference_steps", "min_resolution", "duration", "crf"} <= {name for _, name, _ in widgets}
    for node_id in {node_id for node_id, _, _ in widgets}:
        errors = answer["node_errors"].get(node_id, {}).get("errors", [])
        expected = sorted(name for n, name, _ in widgets if n == node_id)
        filed = sorted(e["extra_info"]["input_name"] for e in errors)
        assert filed == expected, f"node {node_id}: errors filed under {filed}, expected one each for {expected}: {errors}"
        for error in errors:
            name = error["extra_info"]["input_name"]
            options = next(o for n, i, o in widgets if n == node_id and i == name)
            text = f"{error.get('message')} {error.get('details')}"
            assert str(options[side]) in text, f"{name}: the limit {options[side]} is not in {text!r}"


@pytest.mark.parametrize("node_id, name, value, words", [
    ("4", "face_box", "10,10,5", "four numbers"),
    ("7", "output_fps", 0.5, "between 1.0 and 120.0"),
    ("8", "filename_prefix", "../escape", "output folder"),
])
def test_a_custom_check_is_reported_once_under_its_input(comfy_server, node_id, name, value, words):
    client = client_for(comfy_server)
    prompt = json.loads(FAST.read_text())
    prompt["2"]["inputs"]["image"] = "portrait.png"
    prompt["3"]["inputs"]["audio"] = "speech.wav"
    assert name in prompt[node_id]["inputs"]
    prompt[node_id]["inputs"][name] = value
    status, answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id})
    assert status == 400, answer
    errors = [e for errs in answer["node_errors"].values() for e in errs["errors"]]
    assert len(errors) == 1, errors
    assert errors[0]["type"] == "custom_validation_failed" and errors[0]["extra_info"]["input_name"] == name, errors
    assert words in errors[0]["details"], errors


# ------------------------------------------------------------------------------ generation nodes
SAVERS = {"7": ("10", "11", "12"), "9": ("13", "14", "15")}


def chain(**postprocess) -> dict:
    """Loader -> Prepare -> two differently set PostProcess nodes, each saving its first frame and its MP4.

    No sampling: the "generated" frames are the portrait repeated (PostProcess takes frames from any
    node; paste-back resizes them to the crop box), so the test costs a model load and no diffusion.
    """
    prompt = {key: value for key, value in json.loads(FAST.read_text()).items() if key in ("1", "2", "3", "4", "7")}
    prompt["1"]["inputs"].update(dtype="fp32", face_detector="opencv")
    prompt["2"]["inputs"]["image"] = "portrait.png"
    prompt["3"]["inputs"]["audio"] = "speech.wav"
    prompt["4"]["inputs"].update(duration=1.0, min_resolution=64)
    prompt["5"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 25}}
    prompt["6"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 25.0}}
    base = dict(prompt["7"]["inputs"], frames=["5", 0], fps=["6", 0], interpolation=False, paste_back=True)
    prompt["7"]["inputs"] = dict(base, lip_sync="off", feather=0)
    prompt["9"] = {"class_type": "SonicPostProcess", "inputs": dict(base, **postprocess)}
    # PostProcess node -> (first frame, its SaveImage, its MP4) node ids; the core SaveAudio needs torchaudio
    for node, (first, image_out, video_out) in SAVERS.items():
        prefix = f"inputs/pp{node}"
        prompt[first] = {"class_type": "ImageFromBatch", "inputs": {"image": [node, 0], "batch_index": 0, "length": 1}}
        prompt[image_out] = {"class_type": "SaveImage", "inputs": {"images": [first, 0], "filename_prefix": prefix}}
        prompt[video_out] = {"class_type": "SonicVideoOutput", "inputs": {
            "frames": [node, 0], "audio": [node, 1], "fps": [node, 2], "filename_prefix": prefix, "crf": 19,
            "preset": "ultrafast"}}
    return prompt


def onset_ms(samples: np.ndarray, rate: int) -> float:
    """When the sound starts: the first sample above a quarter of the peak (the test speech starts loud)."""
    return 1000.0 * int(np.argmax(np.abs(samples) > 0.25 * np.abs(samples).max())) / rate


def test_settings_that_tie_two_inputs_fail_before_sampling(comfy_server):
    """window_overlap >= frames_per_window: refused by Sonic Inference before any UNet call."""
    prompt = json.loads(FAST.read_text())
    prompt["1"]["inputs"].update(dtype="fp32", face_detector="opencv")
    prompt["2"]["inputs"]["image"] = "portrait.png"
    prompt["3"]["inputs"]["audio"] = "speech.wav"
    prompt["4"]["inputs"].update(duration=1.0, min_resolution=64)
    prompt["5"]["inputs"].update(frames_per_window=10, window_overlap=10)
    _, messages = run_prompt(comfy_server, prompt)
    end = final_message(messages)
    assert end["type"] == "execution_error" and end["data"]["node_type"] == "SonicInference", end
    assert "window_overlap" in end["data"]["exception_message"], end["data"]
    assert not [m for m in messages if m["type"] == "progress" and m["data"].get("node") == "5"], \
        "Sonic Inference started sampling before refusing the settings"


def test_postprocess_manual_sync_offset_and_feather_reach_the_clip(comfy_server):
    from sonic.inputs.audio import load_audio

    prompt_id, messages = run_prompt(comfy_server, chain(lip_sync="manual", sync_offset_ms=200.0, feather=40))
    assert final_message(messages)["type"] == "execution_success", f"{final_message(messages)}\n{comfy_server.log()}"
    plain = load_audio(saved_files(comfy_server, prompt_id, SAVERS["7"][2])[0]).samples  # 16 kHz mono
    shifted = load_audio(saved_files(comfy_server, prompt_id, SAVERS["9"][2])[0]).samples
    delay = onset_ms(shifted, 16000) - onset_ms(plain, 16000)
    assert delay == pytest.approx(200.0, abs=3.0), f"the audio should start 200 ms later, not {delay:.1f} ms"
    assert len(shifted) == len(plain), "the shifted soundtrack should keep its length"
    hard = read_png(saved_files(comfy_server, prompt_id, SAVERS["7"][1])[0])
    soft = read_png(saved_files(comfy_server, prompt_id, SAVERS["9"][1])[0])
    assert hard.shape == soft.shape == (192, 192, 3), "paste-back should give the full portrait"
    assert np.abs(hard - soft).max() > 10, "feather 0 and feather 40 pasted back identically"


def test_no_face_error_names_the_node_settings(comfy_server):
    from PIL import Image

    ramp = np.tile(np.linspace(60, 200, 128).astype(np.uint8), (128, 1))
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(comfy_server.base / "input" / "no_face.png")
    prompt = chain()
    prompt["2"]["inputs"]["image"] = "no_face.png"
    _, messages = run_prompt(comfy_server, prompt)
    end = final_message(messages)
    assert end["type"] == "execution_error", end
    assert end["data"]["node_type"] == "SONIC_PreData"
    assert end["data"]["exception_type"].endswith("FaceNotFoundError"), end["data"]["exception_type"]
    text = end["data"]["exception_message"]
    assert "face = box" in text and "face_box" in text and "face = full_image" in text, text
    assert "--face-box" not in text and 'face_box="full"' not in text, text
