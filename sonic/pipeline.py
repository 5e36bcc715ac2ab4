"""`SonicPipeline`: portrait + audio -> talking-head frames, as callable stages.

    pipe = SonicPipeline.from_pretrained("checkpoints", device="cuda", dtype="auto")
    out = pipe("portrait.png", "speech.wav")          # SonicOutput: frames, fps, audio, ...

The stages (prepare -> encode -> sample -> decode -> interpolate) are public because the
ComfyUI nodes run them as separate nodes. Every stage takes its settings as arguments and
returns a new value; nothing is stored on the pipeline between runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator

import torch

from .config import LATENT_DOWNSCALE, SonicConfig
from .devices import resolve_dtype
from .diffusion.conditioning import audio_conditioning
from .diffusion.decode import decode_latents, decode_latents_split
from .diffusion.interpolate import iter_double_frame_rate, iter_double_frame_rate_split
from .diffusion.sampler import initial_noise, sample_latents
from .diffusion.schedule import make_schedule
from .diffusion.timeline import Timeline
from .errors import DeviceMemoryError, ParameterError
from .finishing.tail import finish
from .inputs.audio import frame_windows, load_audio, whisper_hidden_states
from .inputs.portrait import PreparedPortrait, prepare_portrait
from .job import Conditioning, PreparedJob, ProgressCallback, ProgressInfo, SonicOutput, SonicStream, report_progress
from .models.image_models import clip_image_embeds, encode_reference
from .placement import STAGE_MODELS, get_policy, rests_on_device
from .weights.loading import SonicModels

log = logging.getLogger("sonic")

# Advanced sampling settings `sample()` accepts besides steps, strength, seed and noise.
SAMPLE_SETTINGS = frozenset({"min_appearance_guidance", "max_appearance_guidance", "audio_guidance", "frames_per_window",
                             "window_overlap", "shift_offset", "ip_audio_scale", "fps", "sampler"})


class SonicPipeline:
    """The Sonic inference path. Build it with `from_pretrained`."""

    def __init__(self, models: SonicModels, *, device, dtype, memory_policy: str = "keep",
                 config: SonicConfig | None = None, devices=None):
        from .diffusion.executors import executor_for

        get_policy(memory_policy)  # checks the name
        self.models = models
        # Several devices (a list, or torchrun's ranks): the windows of a step are spread over them.
        self.executor = executor_for(devices, device)
        self.device = self.executor.main_device
        self.dtype = dtype
        self.memory_policy = memory_policy
        self.config = (config or SonicConfig()).validate()
        self._lent: set[int] = set()  # ids of modules `_stage` has moved onto the device right now
        self._place_models()

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, models_dir, *, device=None, dtype="auto", memory_policy: str = "keep",
                        svd_checkpoint=None, face_detector: bool | str = "auto", interpolation: bool = True,
                        config: SonicConfig | None = None, devices=None) -> "SonicPipeline":
        """Load and check every model from `models_dir` (official `checkpoints/` or ComfyUI layout).

        `device`: "cpu", "cuda", "cuda:1", "mps" or None (best available). `dtype`: "auto"
        (bf16 where supported, fp32 on CPU), "fp32", "bf16", "fp16" or a torch dtype; it applies
        to the UNet, VAE and CLIP encoder; Whisper, the audio adapters and RIFE stay fp32 as in
        the reference. `face_detector`: "auto" uses yoloface_v5m.pt when present, else OpenCV's
        Haar cascade; True requires yoloface; False never loads it (give `face_box`, or the
        OpenCV fallback is used). `interpolation=False` skips RIFE. `devices`: e.g. ["cuda:0", "cuda:1"]
        to spread the windows of every step over several devices (one UNet replica each, same result);
        under `torchrun` each process uses its own device without it. Raises `WeightsError` listing
        every missing or broken file.
        """
        from .diffusion.executors import executor_for
        from .weights.loading import load_models

        executor = executor_for(devices, device)  # checks the device list before any weight loads
        device = executor.main_device
        dtype = resolve_dtype(dtype, device)
        get_policy(memory_policy)  # checks the name before any weight is read
        models = load_models(models_dir, svd_checkpoint=svd_checkpoint, need_face_detector=face_detector is True,
                             load_face_detector=face_detector is not False, need_interpolation=interpolation)
        return cls(models, device=device, dtype=dtype, memory_policy=memory_policy, config=config, devices=executor)

    # ----------------------------------------------------------------------------- placement
    def _heavy(self) -> list[torch.nn.Module]:
        return [self.models.unet, self.models.vae, self.models.image_encoder]

    def _light(self) -> list[torch.nn.Module]:
        return [m for m in (self.models.whisper, self.models.audio2token, self.models.audio2bucket, self.models.rife)
                if m is not None]

    def _home(self, module: torch.nn.Module) -> torch.device:
        """Where a module rests between stages under the memory policy (`sonic.placement`)."""
        name = next(k for k, m in self._named_models().items() if m is module)
        return self.device if rests_on_device(self.memory_policy, name) else torch.device("cpu")

    def _place_models(self) -> None:
        # torch's own Module.to: diffusers' override warns about fp32 modules on every cast.
        for module in self._heavy():
            torch.nn.Module.to(module, device=self._home(module), dtype=self.dtype).eval().requires_grad_(False)
        for module in self._light():
            torch.nn.Module.to(module, device=self._home(module), dtype=torch.float32).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _stage(self, stage: str):
        """Move the models a stage runs (`sonic.placement.STAGE_MODELS`) to the device for the stage
        and back to their resting place after."""
        named = self._named_models()
        modules = [named[name] for name in sorted(STAGE_MODELS[stage][0]) if name in named]
        moved = []
        try:
            # Moving a model in can run out of memory too: inside the try, so it gets the same advice.
            for m in modules:
                if self._home(m) != self.device and id(m) not in self._lent:
                    moved.append(m)
                    self._lent.add(id(m))
                    torch.nn.Module.to(m, self.device)
            yield
        except torch.OutOfMemoryError as exc:
            raise DeviceMemoryError(
                f"the {self.device} device ran out of memory ({exc.__class__.__name__}); lower min_resolution, use "
                f"memory_policy='lowvram' (CLI --memory-policy lowvram), a smaller decode_chunk_size, or dtype bf16/fp16"
            ) from None
        finally:
            for m in moved:
                torch.nn.Module.to(m, "cpu")
                self._lent.discard(id(m))
            if moved and self.device.type == "cuda":
                torch.cuda.empty_cache()

    def module_devices(self) -> dict[str, str]:
        """Current device of every model (for checking the memory policy)."""
        return {k: str(next(m.parameters()).device) for k, m in self._named_models().items()}

    def resident_modules(self) -> set[str]:
        """Names of the models the memory policy holds on the pipeline's device right now (its
        resting place is the device, or a running stage moved it there). On a GPU this equals the
        models `module_devices()` reports there; `sonic.tools.bench` checks that in every stage."""
        return {name for name, m in self._named_models().items()
                if self._home(m) == self.device or id(m) in self._lent}

    def _named_models(self) -> dict[str, torch.nn.Module]:
        names = {"unet": self.models.unet, "vae": self.models.vae, "image_encoder": self.models.image_encoder,
                 "whisper": self.models.whisper, "audio2token": self.models.audio2token,
                 "audio2bucket": self.models.audio2bucket, "rife": self.models.rife}
        return {k: m for k, m in names.items() if m is not None}

    # ----------------------------------------------------------------------------- stages
    def prepare(self, image, audio, *, face_box=None, face_index=None, crop: bool | None = None,
                expand_ratio: float | None = None, min_resolution: int | None = None, duration=None,
                config: SonicConfig | None = None, portrait: PreparedPortrait | None = None) -> PreparedJob:
        """Load and check the portrait and the audio (CPU only; fast). See `__call__` for arguments.
        `portrait`: one prepared earlier with the same settings (a batch reuses it across audios)."""
        base = config or self.config
        overrides = {k: v for k, v in dict(crop=crop, expand_ratio=expand_ratio, min_resolution=min_resolution).items()
                     if v is not None}
        cfg = base.replace(**overrides) if overrides else base.validate()
        clip = load_audio(audio, duration=duration, max_seconds=cfg.max_audio_seconds)
        timeline = Timeline.from_samples(len(clip.samples))
        portrait = portrait or prepare_portrait(
            image, detector=self.face_detector(), face_box=face_box, face_index=face_index, crop=cfg.crop,
            expand_ratio=cfg.expand_ratio, min_resolution=cfg.min_resolution, face_mask_area=cfg.face_mask_area,
            max_pixels=cfg.max_pixels, max_image_pixels=cfg.max_image_pixels)
        return PreparedJob(portrait=portrait, audio=clip, timeline=timeline, config=cfg)

    def face_detector(self):
        """The release's yoloface when loaded, else the process-wide OpenCV fallback."""
        if self.models.face_detector is not None:
            return self.models.face_detector
        from .inputs.face_detectors import default_face_detector

        return default_face_detector()

    @torch.no_grad()
    def encode_portrait(self, job: PreparedJob) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CLIP embedding, reference latent, image latent) of the job's portrait: the part of
        `encode` that depends only on the portrait, its settings and (with noise_aug_strength) the seed."""
        cfg, portrait, m = job.config, job.portrait, self.models
        with self._stage("reference"):
            clip_embeds = clip_image_embeds(m.image_encoder, portrait.clip_pixels.to(self.device, self.dtype))
            ref_latent, image_latent = encode_reference(
                m.vae, portrait.pixels.to(self.device, self.dtype), noise_aug_strength=cfg.noise_aug_strength,
                # Pixel noise from the seed on the CPU: the same on every device.
                generator=torch.Generator("cpu").manual_seed(cfg.seed) if cfg.noise_aug_strength > 0 else None)
        return clip_embeds, ref_latent, image_latent

    @torch.no_grad()
    def encode(self, job: PreparedJob, *, dynamic_scale: float | None = None, motion_scale: float | None = None,
               callback: ProgressCallback | None = None, portrait_encoding=None) -> Conditioning:
        """Whisper features, audio tokens and buckets, CLIP embedding and reference latents (once each).
        `portrait_encoding`: `encode_portrait`'s result for this portrait, reused instead of recomputed."""
        cfg = job.config.replace(**{k: v for k, v in dict(dynamic_scale=dynamic_scale, motion_scale=motion_scale).items()
                                    if v is not None})
        job = dataclasses.replace(job, config=cfg)
        m = self.models
        report_progress(callback, "conditioning", 0, 3)
        with self._stage("audio_features"):
            hidden = whisper_hidden_states(m.whisper, job.audio.samples, device=self.device)
        token_windows, bucket_windows = frame_windows(hidden, job.timeline.generated_frames)
        report_progress(callback, "conditioning", 1, 3)
        portrait = job.portrait
        clip_embeds, ref_latent, image_latent = portrait_encoding or self.encode_portrait(job)
        report_progress(callback, "conditioning", 2, 3)
        with self._stage("audio_tokens"):
            # The windows are views of one padded copy; audio_conditioning moves one batch at a time.
            audio = audio_conditioning(m.audio2token, m.audio2bucket, token_windows, bucket_windows,
                                       clip_embeds.float(),
                                       dynamic_scale=cfg.dynamic_scale, motion_scale=cfg.motion_scale)
        report_progress(callback, "conditioning", 3, 3)
        return Conditioning(job=job, ref_latent=ref_latent.float(), image_latent=image_latent.float(),
                            clip_embeds=clip_embeds.float(), audio=audio,
                            face_mask=portrait.face_mask.to(self.device, torch.float32))

    @torch.no_grad()
    def sample(self, cond: Conditioning, *, inference_steps: int | None = None, i2i_noise_strength: float | None = None,
               seed: int | None = None, noise: torch.Tensor | None = None, callback: ProgressCallback | None = None,
               **advanced) -> torch.Tensor:
        """Denoise all frames; returns latents (1, N, 4, h, w) float32 on the CPU.

        `advanced`: min_appearance_guidance, max_appearance_guidance, audio_guidance,
        frames_per_window, window_overlap, shift_offset, ip_audio_scale.
        """
        unknown = sorted(set(advanced) - SAMPLE_SETTINGS)
        if unknown:
            raise ParameterError(f"unknown sampling setting(s) {unknown}; valid: {sorted(SAMPLE_SETTINGS)}")
        changes = {k: v for k, v in dict(inference_steps=inference_steps, i2i_noise_strength=i2i_noise_strength,
                                         seed=seed, **advanced).items() if v is not None}
        cfg = cond.job.config.replace(**changes)
        portrait = cond.job.portrait
        shape = (1, cond.num_frames, 4, portrait.height // LATENT_DOWNSCALE, portrait.width // LATENT_DOWNSCALE)
        noise = _check_noise(noise, shape) if noise is not None else initial_noise(cfg.seed, shape)
        schedule = make_schedule(self.models.scheduler_config, cfg.inference_steps, cfg.i2i_noise_strength)
        unet = self.models.unet

        def on_call(info) -> None:
            if callback is not None:
                latent = info.get("denoised") if isinstance(info, dict) else getattr(info, "denoised", None)
                callback(ProgressInfo(stage="sampling", done=int(_get(info, "call")),
                                      total=int(_get(info, "total_calls")), preview_latent=latent))

        self.executor.unit_counts.clear()
        with self._stage("sampling"):
            latents = sample_latents(
                self.executor.replicate(unet), executor=self.executor, sampler=cfg.sampler,
                ref_latent=cond.ref_latent, image_latent=cond.image_latent,
                clip_embeds=cond.clip_embeds, audio_tokens=cond.audio.tokens, null_tokens=cond.audio.null_tokens,
                buckets=cond.audio.buckets, face_mask=cond.face_mask, schedule=schedule, noise=noise.to(self.device),
                config=cfg, callback=on_call, dtype=self.dtype)
        return latents.float().cpu()

    def decode_iter(self, latents: torch.Tensor, *, decode_chunk_size: int | None = None,
                    callback: ProgressCallback | None = None) -> Iterator[torch.Tensor]:
        """Decode latents chunk by chunk: yields float32 [n, H, W, 3] CPU frames in [0, 1]."""
        chunk = self.config.decode_chunk_size if decode_chunk_size is None else decode_chunk_size
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= 1000:
            raise ParameterError(f"decode_chunk_size must be between 1 and 1000, got {chunk}")
        total = latents.shape[-4] if latents.dim() == 5 else latents.shape[0]
        done = 0
        with torch.no_grad(), self._stage("decode"):
            if self.executor.num_workers > 1:  # chunks spread over the devices, boundaries as in a serial run
                chunks = decode_latents_split(self.executor, self.executor.replicate(self.models.vae),
                                              latents.to(self.device, self.dtype), chunk_size=chunk)
            else:
                chunks = decode_latents(self.models.vae, latents.to(self.device, self.dtype), chunk_size=chunk)
            for frames in chunks:
                done += frames.shape[0]
                report_progress(callback, "decode", done, total)
                yield frames

    def decode(self, latents: torch.Tensor, *, decode_chunk_size: int | None = None,
               callback: ProgressCallback | None = None) -> torch.Tensor:
        """Decode all latents: float32 [N, H, W, 3] in [0, 1] on the CPU."""
        return torch.cat(list(self.decode_iter(latents, decode_chunk_size=decode_chunk_size, callback=callback)))

    def interpolate_iter(self, frames, *, total: int | None = None,
                         callback: ProgressCallback | None = None) -> Iterator[torch.Tensor]:
        """RIFE 2x (12.5 -> 25 fps) over a tensor or an iterator of frame chunks, streamed."""
        if self.models.rife is None:
            raise ParameterError("frame interpolation needs RIFE/flownet.pkl, which was not loaded; "
                                 "pass interpolate=False or load the pipeline with interpolation=True")
        done = 0
        with torch.no_grad(), self._stage("interpolate"):
            if self.executor.num_workers > 1:  # batches spread over the devices, as cut in a serial run
                chunks = iter_double_frame_rate_split(self.executor, self.executor.replicate(self.models.rife), frames)
            else:
                chunks = iter_double_frame_rate(self.models.rife, frames, device=self.device)
            for chunk in chunks:
                done += chunk.shape[0]
                if total:
                    report_progress(callback, "interpolate", done, 2 * total)
                yield chunk

    def interpolate(self, frames: torch.Tensor, *, callback: ProgressCallback | None = None) -> torch.Tensor:
        """RIFE 2x: N frames at 12.5 fps -> 2N frames at 25 fps (float32 [2N, H, W, 3])."""
        return torch.cat(list(self.interpolate_iter(frames, total=frames.shape[0], callback=callback)))

    # ----------------------------------------------------------------------------- one call
    def __call__(self, image, audio, *, postprocess=None, **settings) -> SonicOutput:
        """Generate a talking-head clip; every frame is held in memory (see `stream` for long clips).

        image: path, PIL image, uint8 RGB HxWx3 array or ComfyUI IMAGE tensor.
        audio: path, `(waveform, sample_rate)` (waveform [T] or [C, T]) or ComfyUI AUDIO dict.
        face_box: `(x1, y1, x2, y2)` in input-image pixels (skips detection), or "full" (whole
            image, no crop). face_index: which detected face (0 = leftmost; default the largest).
        duration: seconds of audio to use (None/0: all of it; longer than the audio is an error).
        seed: None uses the config seed (72589, the official one); `noise`, a float32 tensor
            (1, N, 4, H/8, W/8), replaces the random draw for exact reproducibility.
        postprocess: a `sonic.finishing.postprocess.PostProcessOptions` (sync calibration, smoothing,
            colour match, paste-back, output fps) applied to the finished frames.
        Any `SonicConfig` field (crop, expand_ratio, min_resolution, inference_steps, dynamic_scale,
        motion_scale, i2i_noise_strength, interpolate, decode_chunk_size, ...) overrides the config.
        Returns a `SonicOutput` with frames at 25 fps (12.5 with interpolate=False).
        """
        job, frames, callback = self._generate(image, audio, **settings)
        out = finish(self, job, frames, interpolate=job.config.interpolate, postprocess=postprocess, callback=callback)
        return out if isinstance(out, SonicOutput) else out.collect()

    def stream(self, image, audio, **settings) -> SonicStream:
        """Like `__call__` (without post-processing), but the frames are produced while they are
        consumed: decode and interpolation are streamed, so a long video never sits in memory as a
        whole (e.g. feed it to `sonic.media.video.write_mp4`). `num_frames` is known up front."""
        job, frames, callback = self._generate(image, audio, **settings)
        return finish(self, job, frames, interpolate=job.config.interpolate, callback=callback)

    def _generate(self, image, audio, *, callback: ProgressCallback | None = None, **kwargs):
        """prepare -> encode -> sample, then the decoder as a lazy iterator of frame chunks."""
        per_job = {"face_box", "face_index", "duration", "noise", "config", "portrait", "portrait_encoding"}
        fields = {f.name for f in dataclasses.fields(SonicConfig)}
        unknown = sorted(set(kwargs) - per_job - fields)
        if unknown:
            raise ParameterError(f"unknown setting(s) {unknown}")
        # One config holds every setting of the run; it is checked here, before any model runs,
        # and the stages below read it from the job.
        overrides = {k: v for k, v in kwargs.items() if k in fields and v is not None}
        cfg = (kwargs.get("config") or self.config).replace(**overrides)
        job = self.prepare(image, audio, face_box=kwargs.get("face_box"), face_index=kwargs.get("face_index"),
                           duration=kwargs.get("duration"), config=cfg, portrait=kwargs.get("portrait"))
        cond = self.encode(job, callback=callback, portrait_encoding=kwargs.get("portrait_encoding"))
        latents = self.sample(cond, noise=kwargs.get("noise"), callback=callback)
        return job, self.decode_iter(latents, decode_chunk_size=cfg.decode_chunk_size, callback=callback), callback


# --------------------------------------------------------------------------------- helpers
def _get(info, key):
    return info[key] if isinstance(info, dict) else getattr(info, key)


def _check_noise(noise: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor):
        raise ParameterError(f"noise must be a torch tensor of shape {shape}, got {type(noise).__name__}")
    if tuple(noise.shape) != tuple(shape):
        raise ParameterError(f"noise has shape {tuple(noise.shape)} but this job needs {tuple(shape)} "
                             f"(1, frames, 4, height/8, width/8)")
    if not torch.isfinite(noise).all():
        raise ParameterError("noise contains NaN or infinite values")
    return noise.float()
