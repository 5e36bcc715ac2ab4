"""End-to-end runs of `SonicPipeline` on the tiny zoo built from the golden weights (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from sonic import ParameterError, SonicPipeline
from sonic.errors import Interrupted

from helpers import FACE, SR, speech_like

SMALL = dict(face_box=FACE, min_resolution=64, inference_steps=4)


@pytest.fixture(scope="session")
def pipe(tiny_zoo, torch_threads):
    return SonicPipeline.from_pretrained(tiny_zoo, device="cpu", dtype="fp32", face_detector=False)


def test_tiny_run_shapes_fps_and_soundtrack(pipe, portrait):
    audio = speech_like(1.0)
    out = pipe(portrait, (audio, SR), **SMALL)
    assert out.fps == 25.0
    assert out.frames.dtype == torch.float32
    assert out.frames.shape[0] == 25  # 1.0 s: N = 12 generated frames -> 24 after RIFE, + 1 held
    assert out.frames.shape[3] == 3 and out.frames.shape[1] % 64 == 0 and out.frames.shape[2] % 64 == 0
    assert 0.0 <= float(out.frames.min()) and float(out.frames.max()) <= 1.0
    # The soundtrack spans exactly the video.
    assert out.audio.shape[1] == round(out.frames.shape[0] / out.fps * out.sample_rate)


def test_same_seed_same_frames_different_seed_differs(pipe, portrait):
    audio = (speech_like(0.8), SR)
    a = pipe(portrait, audio, seed=0, interpolate=False, **SMALL)
    b = pipe(portrait, audio, seed=0, interpolate=False, **SMALL)
    c = pipe(portrait, audio, seed=1, interpolate=False, **SMALL)
    assert a.fps == 12.5
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, c.frames)


def test_injected_noise_equals_seeded_noise(pipe, portrait):
    from sonic.diffusion.sampler import initial_noise

    audio = (speech_like(0.8), SR)
    job = pipe.prepare(portrait, audio, face_box=FACE, min_resolution=64)
    shape = (1, job.timeline.generated_frames, 4, job.portrait.height // 8, job.portrait.width // 8)
    noise = initial_noise(5, shape)
    by_seed = pipe(portrait, audio, seed=5, interpolate=False, **SMALL)
    by_noise = pipe(portrait, audio, seed=99, noise=noise, interpolate=False, **SMALL)
    assert torch.equal(by_seed.frames, by_noise.frames)
    with pytest.raises(ParameterError, match="noise has shape"):
        pipe(portrait, audio, noise=noise[:, :1], interpolate=False, **SMALL)


def test_stages_compose_to_the_one_call(pipe, portrait):
    audio = (speech_like(0.6), SR)
    whole = pipe(portrait, audio, seed=3, **SMALL)
    job = pipe.prepare(portrait, audio, face_box=FACE, min_resolution=64)
    cond = pipe.encode(job)
    latents = pipe.sample(cond, inference_steps=4, seed=3)
    frames = pipe.interpolate(pipe.decode(latents))
    held = job.timeline.held_frames(True)  # 0.6 s = 15 frames at 25 fps: 14 made, the last one held once more
    assert held == 1 and whole.frames.shape[0] == frames.shape[0] + held
    assert torch.equal(frames, whole.frames[:frames.shape[0]])
    assert torch.equal(whole.frames[-1], frames[-1])


def test_callback_reports_every_stage_and_can_cancel(pipe, portrait):
    seen = []
    pipe(portrait, (speech_like(0.6), SR), callback=seen.append, **SMALL)
    stages = {i.stage for i in seen}
    assert {"conditioning", "sampling", "decode", "interpolate"} <= stages
    sampling = [i for i in seen if i.stage == "sampling"]
    assert sampling[-1].done == sampling[-1].total == len(sampling)

    def cancel(info):
        if info.stage == "sampling" and info.done == 2:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        pipe(portrait, (speech_like(0.6), SR), callback=cancel, **SMALL)


def test_interrupted_streamed_job_leaves_no_file(pipe, portrait, tmp_path):
    from sonic.media.video import write_mp4

    def cancel_while_decoding(info):
        if info.stage == "decode" and info.done >= 8:
            raise Interrupted("stop")

    out = pipe.stream(portrait, (speech_like(1.5), SR), callback=cancel_while_decoding, **SMALL)
    target = tmp_path / "job.mp4"
    with pytest.raises(Interrupted):
        write_mp4(target, out.frames, fps=out.fps, audio=out.audio, sample_rate=out.sample_rate)
    assert list(tmp_path.iterdir()) == []


def test_settings_do_not_leak_between_runs(pipe, portrait):
    audio = (speech_like(0.6), SR)
    first = pipe(portrait, audio, seed=2, interpolate=False, **SMALL)
    pipe(portrait, audio, seed=2, interpolate=False, dynamic_scale=1.7, motion_scale=0.3, **SMALL)
    again = pipe(portrait, audio, seed=2, interpolate=False, **SMALL)
    assert torch.equal(first.frames, again.frames)
    assert pipe.config.dynamic_scale == 1.0


def test_advanced_sampling_settings_take_effect(pipe, portrait):
    audio = (speech_like(0.6), SR)
    base = pipe(portrait, audio, seed=4, interpolate=False, **SMALL)
    # N = 7 frames here: a shift of 7 would be a whole turn of the circular layout, 3 is not.
    for setting in (dict(ip_audio_scale=0.0), dict(audio_guidance=3.0), dict(shift_offset=3)):
        changed = pipe(portrait, audio, seed=4, interpolate=False, **SMALL, **setting)
        assert not torch.equal(base.frames, changed.frames), setting
    again = pipe(portrait, audio, seed=4, interpolate=False, **SMALL)
    assert torch.equal(base.frames, again.frames)  # nothing leaked from the changed runs


def test_noise_augmentation_changes_only_the_concat_latent(pipe, portrait):
    from sonic import SonicConfig

    audio = (speech_like(0.6), SR)
    plain = pipe.encode(pipe.prepare(portrait, audio, face_box=FACE, min_resolution=64))
    noisy_config = SonicConfig(noise_aug_strength=0.5)
    noisy = [pipe.encode(pipe.prepare(portrait, audio, face_box=FACE, min_resolution=64, config=noisy_config))
             for _ in range(2)]
    assert torch.equal(noisy[0].ref_latent, plain.ref_latent)
    assert not torch.equal(noisy[0].image_latent, plain.image_latent)
    assert torch.equal(noisy[0].image_latent, noisy[1].image_latent)  # seeded: reproducible


def test_absurd_parameters_are_refused_before_work(pipe, portrait):
    audio = (speech_like(0.6), SR)
    with pytest.raises(ParameterError, match="leaves"):
        pipe(portrait, audio, face_box=FACE, min_resolution=64, inference_steps=1, i2i_noise_strength=0.7)
    with pytest.raises(ParameterError, match="inference_steps"):
        pipe(portrait, audio, face_box=FACE, min_resolution=64, inference_steps=0)
    with pytest.raises(ParameterError, match="longer"):
        pipe(portrait, audio, face_box=FACE, min_resolution=64, duration=5.0)


def test_postprocess_through_the_pipeline(pipe, portrait):
    from sonic.finishing.postprocess import PostProcessOptions

    options = PostProcessOptions(colour_match=True, smoothing=0.5, paste_back=True, output_fps=30.0)
    plain = pipe(portrait, (speech_like(1.0), SR), **SMALL)
    out = pipe(portrait, (speech_like(1.0), SR), postprocess=options, **SMALL)
    assert tuple(out.frames.shape[1:3]) == portrait.shape[:2]  # the original framing (80x72, even)
    assert out.fps == 30.0
    assert abs(out.frames.shape[0] / 30.0 - plain.frames.shape[0] / 25.0) <= 1 / 30
    assert abs(out.audio.shape[1] / out.sample_rate - out.frames.shape[0] / 30.0) <= 1 / 30
    assert {"colour_match", "smoothing", "fps"} <= set(out.report["postprocess"])


def test_settings_of_the_wrong_type_are_refused(pipe, portrait):
    from sonic import SonicConfig

    for bad in (dict(inference_steps="2"), dict(min_resolution=64.0), dict(seed=True), dict(crop="yes")):
        with pytest.raises(ParameterError):
            SonicConfig().replace(**bad)
    calls = []
    with pytest.raises(ParameterError, match="inference_steps"):  # refused before any model runs
        pipe(portrait, (speech_like(0.6), SR), face_box=FACE, min_resolution=64, inference_steps=100000,
             callback=calls.append)
    assert calls == []
