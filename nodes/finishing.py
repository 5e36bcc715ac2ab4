"""Finishing nodes: interpolation + post-processing, and the MP4 writer with preview."""

from __future__ import annotations

import json
import os

import folder_paths

from sonic.config import DEFAULT_FEATHER_PX, MAX_SYNC_SHIFT_MS

from .common import (CATEGORY, SONIC_MODEL, SONIC_PREDATA, ComfyProgress, comfy_errors, log, make_room,
                     release_memory)
from .paths import UnsafePathError, resolve_media_path

SYNC_MODES = ["off", "auto", "manual"]
MAX_FEATHER_PX = 1024
X264_PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
OOM_KNOBS = "turn interpolation off or set the loader's memory_policy to 'offload'"


def audio_dict(waveform_cs, sample_rate: int) -> dict:
    """A core AUDIO dict from a float32 numpy [C, S] waveform."""
    import numpy as np
    import torch

    return {"waveform": torch.from_numpy(np.ascontiguousarray(waveform_cs, dtype=np.float32)).unsqueeze(0),
            "sample_rate": int(sample_rate)}


class SonicPostProcess:
    """RIFE 2x interpolation, lip-sync calibration, smoothing, colour match, paste-back, output fps."""

    DESCRIPTION = ("Turns the decoded 12.5 fps frames into the final clip: RIFE interpolation to 25 fps and the "
                   "optional fixes. Also outputs the matching soundtrack, so IMAGE + AUDIO + fps can go to Sonic "
                   "Video Output, core CreateVideo/SaveVideo or VHS Video Combine.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("frames", "audio", "fps")
    OUTPUT_TOOLTIPS = ("Final frames [T, H, W, 3] in 0..1.", "The soundtrack, exactly as long as the frames.",
                       "Frame rate of the frames.")
    FUNCTION = "process"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sonic_model": (SONIC_MODEL, {"tooltip": "From Sonic Model Loader (RIFE lives there)."}),
                "predata": (SONIC_PREDATA, {"tooltip": "From Sonic Prepare: audio, face crop and crop box."}),
                "frames": ("IMAGE", {"tooltip": "Decoded frames from Sonic Decode."}),
                "fps": ("FLOAT", {"default": 12.5, "min": 1.0, "max": 120.0, "step": 0.5, "forceInput": True,
                                  "tooltip": "Frame rate of the incoming frames (Sonic Decode's fps output)."}),
                "interpolation": ("BOOLEAN", {"default": True,
                                              "tooltip": "RIFE 2x frame interpolation: 12.5 -> 25 fps (official)."}),
            },
            "optional": {
                "lip_sync": (SYNC_MODES, {"default": "off", "advanced": True,
                                          "tooltip": "auto: measure the audio/mouth offset and shift the audio to "
                                                     "match. manual: shift the audio by sync_offset_ms. off: keep "
                                                     "the official timing."}),
                "smoothing": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "advanced": True,
                                        "tooltip": "Strength of the temporal filter against jitter outside the mouth; "
                                                   "0 = off, 0.5 = recommended."}),
                "colour_match": ("BOOLEAN", {"default": False, "advanced": True,
                                             "tooltip": "Match the colours of every frame to the input portrait "
                                                        "(fixes drift over long clips)."}),
                "paste_back": ("BOOLEAN", {"default": False, "advanced": True,
                                           "tooltip": "Paste the animated crop back into the full original picture."}),
                "output_fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 120.0, "step": 0.5, "advanced": True,
                                         "tooltip": "Resample the clip to this frame rate; 0 keeps 25 (12.5 without "
                                                    "interpolation)."}),
                # New inputs go last: saved workflows map widget values by position.
                "sync_offset_ms": ("FLOAT", {"default": 0.0, "min": -MAX_SYNC_SHIFT_MS, "max": MAX_SYNC_SHIFT_MS,
                                             "step": 1.0, "advanced": True,
                                             "tooltip": "With lip_sync = manual: milliseconds to delay the audio "
                                                        "(positive: the mouth moves after the sound; negative: "
                                                        "before). The soundtrack keeps its length."}),
                "feather": ("INT", {"default": DEFAULT_FEATHER_PX, "min": 0, "max": MAX_FEATHER_PX, "step": 1,
                                    "advanced": True,
                                    "tooltip": "With paste_back: width in pixels of the soft blend at the crop's "
                                               "edges inside the picture (0 = hard edge)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, output_fps=0.0):
        # One input only (ComfyUI attaches the message to every input named here); it is checked in
        # full because naming it turns off ComfyUI's own min/max check for it.
        if output_fps is not None and not (output_fps == 0 or 1 <= output_fps <= 120):
            return f"output_fps must be 0.0 (keep) or between 1.0 and 120.0 frames per second, got {output_fps}"
        return True

    def process(self, sonic_model, predata, frames, fps, interpolation, lip_sync="off", smoothing=0.0,
                colour_match=False, paste_back=False, output_fps=0.0, sync_offset_ms=0.0, feather=DEFAULT_FEATHER_PX,
                unique_id=None):
        from sonic.finishing.postprocess import PostProcessOptions
        from sonic.finishing.tail import finish

        progress = ComfyProgress(unique_id)
        options = None
        if lip_sync != "off" or smoothing > 0 or colour_match or paste_back or output_fps > 0:
            options = PostProcessOptions(sync=float(sync_offset_ms) if lip_sync == "manual" else lip_sync,
                                         smoothing=float(smoothing), colour_match=colour_match, paste_back=paste_back,
                                         feather_px=int(feather), output_fps=output_fps if output_fps > 0 else None)
        if interpolation:
            make_room(sonic_model)
        with comfy_errors(progress, knobs=OOM_KNOBS):
            out = finish(sonic_model, predata, frames, interpolate=bool(interpolation), fps=fps, postprocess=options,
                         callback=progress)
            if options is None:
                out = out.collect()
        if interpolation:
            release_memory(sonic_model)
        return (out.frames.float().cpu().contiguous(), audio_dict(out.audio, out.sample_rate), float(out.fps))


# ------------------------------------------------------------------------------ output
def provenance_from_prompt(prompt: dict | None) -> dict:
    """Provenance tags from the queued graph: settings of this pack's nodes and SHA-256 of the media files."""
    from sonic.media.video import sha256_file

    settings: dict[str, dict] = {}
    hashes: dict[str, list[str]] = {"image_sha256": [], "audio_sha256": []}
    for node_id, node in sorted((prompt or {}).items()):
        class_type = str(node.get("class_type", ""))
        inputs = node.get("inputs", {})
        constants = {k: v for k, v in inputs.items() if not isinstance(v, list)}
        if class_type.startswith(("Sonic", "SONIC_")):
            settings[f"{node_id}:{class_type}"] = constants
        for key, kind in (("image", "image_sha256"), ("audio", "audio_sha256")):
            if isinstance(inputs.get(key), str) and class_type in ("SonicImageLoader", "SonicAudioLoader",
                                                                    "LoadImage", "LoadAudio"):
                try:
                    hashes[kind].append(sha256_file(resolve_media_path(inputs[key], kind=key)))
                except (UnsafePathError, OSError):
                    hashes[kind].append("unavailable")
    tags = {"parameters": settings}
    for kind, values in hashes.items():
        if values:
            tags[kind] = values[0] if len(values) == 1 else values
    return tags


class SonicVideoOutput:
    """Writes frames + audio as an H.264/AAC MP4 into the output folder and previews it."""

    DESCRIPTION = ("Saves an MP4 (H.264 + AAC) with ComfyUI's counter naming, embeds the workflow and the provenance "
                   "tags (AI-generated notice, settings, input hashes), and shows it in the UI. Its outputs pass the "
                   "frames, audio and fps through for other video nodes.")
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("frames", "audio", "fps")
    OUTPUT_TOOLTIPS = ("The frames, unchanged.", "The audio, unchanged.", "The frame rate, unchanged.")
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "Frames [T, H, W, 3] (odd sizes lose their last row/column)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.5,
                                  "tooltip": "Frame rate of the video (connect Sonic PostProcess's fps)."}),
                "filename_prefix": ("STRING", {"default": "sonic/Sonic",
                                               "tooltip": "File name prefix inside the output folder; may contain "
                                                          "sub-folders. A counter is appended."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 51, "step": 1,
                                "tooltip": "H.264 quality: lower is better and bigger (18-23 typical)."}),
                "preset": (X264_PRESETS, {"default": "medium", "advanced": True,
                                          "tooltip": "x264 speed/size trade-off; slower = smaller file."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Soundtrack; trimmed or padded to the video length. Without it the "
                                               "MP4 is silent."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        # preset is left to ComfyUI's own list check: a message returned here is attached to every named input.
        if not isinstance(filename_prefix, str) or not filename_prefix.strip():
            return "filename_prefix must not be empty"
        if os.path.isabs(filename_prefix) or ".." in filename_prefix.replace("\\", "/").split("/"):
            return f"filename_prefix {filename_prefix!r} must stay inside the output folder (no absolute path, no '..')"
        return True

    def save(self, frames, fps, filename_prefix, crf, preset="medium", audio=None, prompt=None, extra_pnginfo=None):
        from sonic.errors import OutputError
        from sonic.media.video import write_mp4

        if frames.dim() != 4 or frames.shape[0] < 1:
            raise OutputError(f"frames must be an IMAGE batch [T, H, W, 3] with at least one frame, got "
                              f"{tuple(frames.shape)}")
        height, width = int(frames.shape[1]), int(frames.shape[2])
        output_dir = folder_paths.get_output_directory()
        full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir, width, height)
        os.makedirs(full_folder, exist_ok=True)
        file = f"{filename}_{counter:05}_.mp4"

        waveform, rate = None, None
        if audio is not None:
            waveform = audio["waveform"][0].float().cpu().numpy()  # [C, S]
            rate = int(audio["sample_rate"])
        write_mp4(os.path.join(full_folder, file), frames, fps=float(fps), audio=waveform, sample_rate=rate, crf=int(crf),
                  preset=preset, metadata=json.loads(json.dumps(provenance_from_prompt(prompt), default=str)),
                  tags=graph_tags(prompt, extra_pnginfo), overwrite=False)
        preview = {"filename": file, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [preview], "animated": [True]}, "result": (frames, audio, float(fps))}


def graph_tags(prompt: dict | None, extra_pnginfo: dict | None) -> dict:
    """`prompt` and each extra_pnginfo key (the UI `workflow`) as their own MP4 tags, as core SaveVideo
    writes them: the frontend reopens a dropped MP4's graph from those keys. None with --disable-metadata."""
    from sonic.media.video import is_tag_name

    if _metadata_disabled():
        return {}
    tags = {str(key): value for key, value in (extra_pnginfo or {}).items()}
    if prompt is not None:
        tags["prompt"] = prompt
    skipped = [key for key in tags if not is_tag_name(key)]
    if skipped:
        log.warning("Sonic Video Output: not embedding extra_pnginfo keys %s (not usable as MP4 tag names)", skipped)
    return json.loads(json.dumps({k: v for k, v in tags.items() if k not in skipped}, default=str))


def _metadata_disabled() -> bool:
    try:
        from comfy.cli_args import args
    except ImportError:
        return False
    return bool(getattr(args, "disable_metadata", False))
