"""The generation chain: prepare (crop + audio) -> sample latents -> decode frames."""

from __future__ import annotations

from .common import (CATEGORY, SONIC_LATENTS, SONIC_MODEL, SONIC_PREDATA, ComfyProgress, SonicLatents, comfy_errors,
                     config_range, make_room, release_memory)

FACE_MODES = ["detect", "full_image", "box"]
OOM_KNOBS = ("lower min_resolution, set the loader's memory_policy to 'offload' or 'lowvram', "
             "or use a smaller decode_chunk_size / frames_per_window")


def settings_problem(**settings) -> str | None:
    """The message of the first invalid setting according to `SonicConfig.validate`, else None."""
    from sonic.config import SonicConfig
    from sonic.errors import ParameterError

    try:
        SonicConfig().replace(**settings)
    except ParameterError as exc:
        return str(exc)
    return None


def no_face_message(image) -> str:
    """The library's no-face message in node terms (Sonic Prepare's settings, not the CLI's flags)."""
    width, height = int(image.shape[2]), int(image.shape[1])  # IMAGE is [batch, height, width, channels]
    return (f"no face found in the {width}x{height} portrait. Ways out: connect another image with a clear, "
            f"frontal, well-lit face; or set face = box and type the face's x1,y1,x2,y2 (input-image pixels) into "
            f"face_box; or set face = full_image to animate the whole picture without a crop")


class SONIC_PreData:
    """Checks and prepares one portrait + audio pair: face crop, model-size image, audio timeline."""

    DESCRIPTION = ("Finds the face, crops and resizes the portrait for the model and cuts the audio; the output "
                   "carries the crop box used later for paste-back. The Sonic weights load here on first use, after "
                   "the duration has been checked against the audio.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (SONIC_PREDATA, "FLOAT")
    RETURN_NAMES = ("predata", "seconds")
    OUTPUT_TOOLTIPS = ("Prepared inputs (crop box, model-size image, audio, frame count).",
                       "Seconds of audio that will be animated.")
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sonic_model": (SONIC_MODEL, {"tooltip": "From Sonic Model Loader."}),
                "image": ("IMAGE", {"tooltip": "The portrait (the first image of a batch is used)."}),
                "audio": ("AUDIO", {"tooltip": "The speech to lip-sync."}),
                "duration": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0, "step": 0.1,
                                       "tooltip": "Seconds of audio to animate; 0 = the whole audio. Longer than the "
                                                  "audio is an error."}),
                "min_resolution": ("INT", {"default": 512, **config_range("min_resolution"), "step": 64,
                                           "tooltip": "Short side of the generated video in pixels (multiples of 64). "
                                                      "512 is the official setting; higher needs much more VRAM."}),
                "expand_ratio": ("FLOAT", {"default": 0.5, **config_range("expand_ratio"), "step": 0.05,
                                           "tooltip": "Margin added around the detected face before cropping, as a "
                                                      "fraction of the face size (official 0.5)."}),
            },
            "optional": {
                "face": (FACE_MODES, {"default": "detect", "advanced": True,
                                      "tooltip": "detect: find the face automatically. full_image: use the whole "
                                                 "image, no crop (cartoons, faces the detector misses). box: use "
                                                 "face_box."}),
                "face_index": ("INT", {"default": -1, "min": -1, "max": 64, "step": 1, "advanced": True,
                                       "tooltip": "With several faces: -1 = the largest, 0 = leftmost, 1 = next..."}),
                "face_box": ("STRING", {"default": "", "advanced": True,
                                        "tooltip": "x1,y1,x2,y2 in input-image pixels, used when face = box."}),
                "crop": ("BOOLEAN", {"default": True, "advanced": True,
                                     "tooltip": "Crop a square around the face (official behaviour). Off: keep the "
                                                "whole picture, resized."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, face_box=""):
        # ComfyUI attaches the returned message to every input named here, so one input only: the others
        # keep its own min/max and list checks; min_resolution's step and face = box need run_checks.
        if str(face_box or "").strip():
            from sonic.errors import ParameterError
            from sonic.inputs.face_box import parse_face_box

            try:
                if parse_face_box(face_box) in (None, "full"):
                    return "face = box needs four numbers x1,y1,x2,y2 in face_box (input-image pixels)"
            except ParameterError as exc:
                return str(exc)
        return True

    @staticmethod
    def run_checks(min_resolution: int, face: str, face_box: str) -> None:
        """What VALIDATE_INPUTS cannot see without naming a second input; cheap, before any weights load."""
        from sonic.errors import ParameterError

        if min_resolution % 64:
            raise ParameterError(f"min_resolution must be a multiple of 64 pixels, got {min_resolution}")
        if face == "box" and not str(face_box or "").strip():
            raise ParameterError("face = box needs face_box: type the face's x1,y1,x2,y2 (input-image pixels)")

    def prepare(self, sonic_model, image, audio, duration, min_resolution, expand_ratio, face="detect", face_index=-1,
                face_box="", crop=True):
        from sonic.errors import FaceNotFoundError

        # Cheap checks first: the model loader only checked the files, the weights load below.
        self.check_duration(audio, duration)
        self.run_checks(min_resolution, face, face_box)
        box = {"detect": None, "full_image": "full", "box": None}[face]
        if face == "box":
            from sonic.inputs.face_box import parse_face_box

            box = parse_face_box(face_box)
        try:
            with comfy_errors(None, knobs=OOM_KNOBS):
                job = sonic_model.prepare(image[:1], audio, face_box=box,
                                          face_index=None if face_index < 0 else face_index, crop=crop,
                                          expand_ratio=expand_ratio, min_resolution=min_resolution,
                                          duration=duration if duration > 0 else None)
        except FaceNotFoundError:
            raise FaceNotFoundError(no_face_message(image)) from None
        return (job, float(job.timeline.video_seconds))

    @staticmethod
    def check_duration(audio, duration: float) -> None:
        """Refuse a duration longer than the audio before any work (the message names both lengths)."""
        from sonic.errors import AudioError
        from sonic.diffusion.timeline import resolve_duration

        if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
            raise AudioError("the audio input is not a ComfyUI AUDIO value; connect a Sonic Load Audio (or LoadAudio) node")
        resolve_duration(audio["waveform"].shape[-1] / float(audio["sample_rate"]), duration)


class SonicInference:
    """Encodes audio and image conditions, then denoises every frame (the expensive stage)."""

    DESCRIPTION = ("Runs Sonic's diffusion sampler over the whole clip (sliding windows with time-aware shift). "
                   "Progress is reported per UNet call; Cancel stops within one call.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (SONIC_LATENTS,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("Denoised latents of every generated frame (12.5 fps).",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sonic_model": (SONIC_MODEL, {"tooltip": "From Sonic Model Loader."}),
                "predata": (SONIC_PREDATA, {"tooltip": "From Sonic Prepare."}),
                "seed": ("INT", {"default": 72589, **config_range("seed"), "step": 1, "control_after_generate": True,
                                 "tooltip": "Random seed of the initial noise (72589 = the official default)."}),
                "inference_steps": ("INT", {"default": 25, **config_range("inference_steps"), "step": 1,
                                            "tooltip": "Denoising steps. 25 is official; 15 is a fair preview; more "
                                                       "than 30 rarely helps."}),
                "dynamic_scale": ("FLOAT", {"default": 1.0, **config_range("dynamic_scale"), "step": 0.01,
                                            "tooltip": "Strength of motion (head and expression) driven by the audio; "
                                                       "1.0 official, 1.1-1.4 livelier."}),
            },
            "optional": {
                "motion_scale": ("FLOAT", {"default": 1.0, **config_range("motion_scale"), "step": 0.01, "advanced": True,
                                           "tooltip": "Extra factor on head motion only (1.0 = official)."}),
                "i2i_noise_strength": ("FLOAT", {"default": 1.0, **config_range("i2i_noise_strength"), "step": 0.01, "advanced": True,
                                                 "tooltip": "Fraction of the noise schedule that is run; 1.0 starts "
                                                            "from pure noise (official)."}),
                "min_appearance_guidance": ("FLOAT", {"default": 2.0, **config_range("min_appearance_guidance"), "step": 0.1,
                                                      "advanced": True,
                                                      "tooltip": "Image guidance at the first step (ramps linearly)."}),
                "max_appearance_guidance": ("FLOAT", {"default": 2.0, **config_range("max_appearance_guidance"), "step": 0.1,
                                                      "advanced": True,
                                                      "tooltip": "Image guidance at the last step."}),
                "audio_guidance": ("FLOAT", {"default": 7.5, **config_range("audio_guidance"), "step": 0.1, "advanced": True,
                                             "tooltip": "Audio guidance (official 7.5); higher = stronger lip motion."}),
                "frames_per_window": ("INT", {"default": 25, **config_range("frames_per_window"), "step": 1, "advanced": True,
                                              "tooltip": "Frames denoised together (official 25). Lower saves VRAM."}),
                "window_overlap": ("INT", {"default": 0, **config_range("window_overlap"), "step": 1, "advanced": True,
                                           "tooltip": "Frames shared by consecutive windows (official 0)."}),
                "shift_offset": ("INT", {"default": 7, **config_range("shift_offset"), "step": 1, "advanced": True,
                                         "tooltip": "How far the window grid moves every step (official 7)."}),
                "ip_audio_scale": ("FLOAT", {"default": 1.0, **config_range("ip_audio_scale"), "step": 0.01, "advanced": True,
                                             "tooltip": "Weight of the audio cross-attention (official 1.0)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    ADVANCED = ("motion_scale", "i2i_noise_strength", "min_appearance_guidance", "max_appearance_guidance",
                "audio_guidance", "frames_per_window", "window_overlap", "shift_offset", "ip_audio_scale")

    # No VALIDATE_INPUTS: ComfyUI would attach its message to every input it names, and the only
    # checks beyond the declared ranges tie two inputs together; `sample` runs them before any work.

    def sample(self, sonic_model, predata, seed, inference_steps, dynamic_scale, unique_id=None, **optional):
        advanced = {k: v for k, v in optional.items() if k in self.ADVANCED}
        problem = settings_problem(inference_steps=inference_steps, **{
            k: advanced[k] for k in ("i2i_noise_strength", "frames_per_window", "window_overlap") if k in advanced})
        if problem:
            from sonic.errors import ParameterError

            raise ParameterError(problem)
        motion_scale = advanced.pop("motion_scale", None)
        strength = advanced.pop("i2i_noise_strength", None)
        progress = ComfyProgress(unique_id)
        make_room(sonic_model)
        with comfy_errors(progress, knobs=OOM_KNOBS):
            cond = sonic_model.encode(predata, dynamic_scale=dynamic_scale, motion_scale=motion_scale, callback=progress)
            latents = sonic_model.sample(cond, inference_steps=inference_steps, i2i_noise_strength=strength, seed=seed,
                                         callback=progress, **advanced)
        if sonic_model.executor.num_workers > 1:  # several devices (the loader's `devices`): say how they shared
            from sonic.diffusion.executors import window_spread_summary

            layout = {k: advanced[k] for k in ("frames_per_window", "window_overlap") if k in advanced}
            summary = window_spread_summary(sonic_model.executor, latents.shape[1], cond.job.config.replace(**layout))
            print(f"[Sonic] spread: {summary}", flush=True)
        del cond
        release_memory(sonic_model)
        return (SonicLatents(latents, predata),)


class SonicLatentDecoder:
    """VAE-decodes the latents into frames (12.5 fps, before interpolation)."""

    DESCRIPTION = "Decodes latents to IMAGE frames with SVD's temporal VAE decoder, a chunk of frames at a time."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = ("Generated frames [N, H, W, 3] in 0..1.", "Frame rate of the frames (12.5 before interpolation).")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sonic_model": (SONIC_MODEL, {"tooltip": "From Sonic Model Loader."}),
                "latents": (SONIC_LATENTS, {"tooltip": "From Sonic Inference."}),
                "decode_chunk_size": ("INT", {"default": 8, **config_range("decode_chunk_size"), "step": 1,
                                              "tooltip": "Frames per VAE call (official 8). Lower saves VRAM; each "
                                                         "chunk boundary can show a faint seam."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def decode(self, sonic_model, latents, decode_chunk_size, unique_id=None):
        progress = ComfyProgress(unique_id)
        make_room(sonic_model)
        with comfy_errors(progress, knobs=OOM_KNOBS):
            frames = sonic_model.decode(latents.latents, decode_chunk_size=decode_chunk_size, callback=progress)
        release_memory(sonic_model)
        fps = float(latents.job.timeline.output_fps(False))
        return (frames.float().cpu().contiguous(), fps)
