"""Post-processing on synthetic clips: sync calibration, smoothing, colour match, paste-back, fps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonic.errors import ParameterError
from sonic.finishing.audio_shift import shift_audio
from sonic.finishing.colour import match_colour, mean_lab
from sonic.finishing.frame_rate import convert_fps
from sonic.finishing.paste_back import paste_back
from sonic.finishing.postprocess import PostProcessOptions, apply_postprocess
from sonic.finishing.smoothing import DEFAULT_SMOOTHING_STRENGTH, flicker_statistic, smooth_motion
from test_sync import FPS, MOUTH_BOX, SAMPLE_RATE, SIZE, offset_audio, run_check_sync, speech_like_audio, talking_frames

FACE_BOX = (84, 26, 140, 92)  # px: the astronaut's face, forehead to chin, in the SIZE x SIZE portrait


@pytest.fixture(scope="module")
def clip():
    audio, envelope = speech_like_audio(5.0, seed=1)
    return torch.from_numpy(talking_frames(envelope)).float().div(255), audio


def test_shift_audio_keeps_length_and_moves_sound():
    audio = np.zeros((2, 1600), np.float32)
    audio[:, 800] = 1.0
    later = shift_audio(audio, 16_000, 10.0)  # +10 ms = 160 samples later
    earlier = shift_audio(audio, 16_000, -10.0)
    assert later.shape == earlier.shape == audio.shape
    assert np.flatnonzero(later[0]).tolist() == [960] and np.flatnonzero(earlier[1]).tolist() == [640]
    assert shift_audio(audio, 16_000, 500.0).shape == audio.shape


@pytest.mark.parametrize("sync", ["auto", 120.0])
def test_calibration_puts_a_late_mouth_back_in_sync(tmp_path, clip, sync):
    from sonic.media.video import write_mp4

    frames, audio = clip
    late = offset_audio(audio, 120)[None]  # the mouth moves 120 ms after the sound
    result = apply_postprocess(frames, FPS, late, SAMPLE_RATE, options=PostProcessOptions(sync=sync),
                               face_box_in_crop=FACE_BOX)
    entry = result.report["sync"]
    assert abs(entry["applied_shift_ms"] - 120) <= 40, entry
    if sync == "auto":
        assert abs(entry["measured_offset_ms"] - 120) <= 40 and entry["confidence"] >= 3
    assert result.audio.shape == late.shape and result.frames.shape == frames.shape  # lengths unchanged
    path = write_mp4(tmp_path / "fixed.mp4", result.frames, fps=result.fps, audio=result.audio,
                     sample_rate=SAMPLE_RATE, preset="ultrafast")
    code, report, err = run_check_sync(path)
    assert code == 0, err
    assert abs(report["offset_ms"]) <= 40 and report["in_sync"], report


def test_auto_sync_does_not_shift_on_low_confidence(clip):
    frames, audio = clip
    still = frames[:1].expand_as(frames).clone()  # the mouth never moves
    result = apply_postprocess(still, FPS, audio[None], SAMPLE_RATE, options=PostProcessOptions(sync="auto"),
                               face_box_in_crop=FACE_BOX)
    assert result.report["sync"]["applied_shift_ms"] == 0.0 and "not applied" in result.report["sync"]["note"]
    assert np.array_equal(result.audio, audio[None])


def jittered(frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random sub-pixel shake (+-1.5 px) and +-2 % brightness flicker on every frame."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for frame in frames.numpy():
        dx, dy = rng.uniform(-1.5, 1.5, 2)
        moved = cv2.warpAffine(frame, np.float32([[1, 0, dx], [0, 1, dy]]), (frame.shape[1], frame.shape[0]),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(moved * rng.uniform(0.98, 1.02), 0, 1))
    return torch.from_numpy(np.stack(out))


def test_smoothing_halves_flicker_and_keeps_the_mouth(clip):
    from sonic.sync.measure import measure_sync

    frames, audio = clip
    shaky = jittered(frames)
    smooth = smooth_motion(shaky, DEFAULT_SMOOTHING_STRENGTH, mouth_box=MOUTH_BOX)
    background = (0, 150, SIZE, SIZE)  # below the face: should be still
    face = FACE_BOX
    for box in (None, background, face):
        assert flicker_statistic(smooth, box) <= 0.5 * flicker_statistic(shaky, box), box
    before = measure_sync(shaky, FPS, audio, SAMPLE_RATE, mouth_box=MOUTH_BOX)
    after = measure_sync(smooth, FPS, audio, SAMPLE_RATE, mouth_box=MOUTH_BOX)
    assert after.peak_correlation >= 0.9 * before.peak_correlation and after.peak_correlation > 0.8, (before, after)
    assert abs(after.offset_ms) <= 40
    assert torch.equal(smooth_motion(shaky, 0.0), shaky)


def test_colour_drift_is_pulled_back_to_the_reference(clip):
    frames, _ = clip
    reference = frames[0]
    ramp = torch.linspace(0, 1, frames.shape[0])[:, None, None, None]
    drift = torch.tensor([1.15, 1.0, 0.85])  # warmer and warmer over the clip
    drifted = (frames * (1 + ramp * (drift - 1)) + ramp * 0.04).clamp(0, 1)
    fixed = match_colour(drifted, reference, face_box=FACE_BOX)

    def distance(video, t):
        return float(np.linalg.norm(mean_lab(video[t], FACE_BOX) - mean_lab(reference, FACE_BOX)))

    last = frames.shape[0] - 1
    assert distance(drifted, last) > 8
    assert distance(fixed, last) < 1.5 and distance(fixed, last // 2) < 1.5
    assert distance(match_colour(frames, reference, face_box=FACE_BOX), last) < 1.5  # no drift: stays put


def test_paste_back_keeps_the_photo_outside_the_feather():
    rng = np.random.default_rng(0)
    photo = torch.from_numpy(rng.random((251, 301, 3), dtype=np.float32))  # odd size on purpose
    frames = torch.full((3, 64, 64, 3), 0.5)
    box, feather = (60, 40, 188, 168), 12
    out = paste_back(frames, photo, box, feather_px=feather)
    assert out.shape == (3, 250, 300, 3)  # rounded down to even
    outside = torch.ones(250, 300, dtype=torch.bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert torch.equal(out[:, outside], photo[:250, :300][outside].expand(3, -1, -1))
    inner = out[:, box[1] + feather:box[3] - feather, box[0] + feather:box[2] - feather]
    assert torch.allclose(inner, torch.tensor(0.5), atol=1e-5)
    edge = out[0, box[1] + 64, box[0]:box[0] + feather, 0]  # the feather ramps from photo to crop
    weights = (edge - photo[box[1] + 64, box[0]:box[0] + feather, 0]) / (0.5 - photo[box[1] + 64, box[0]:box[0] + feather, 0])
    assert weights[0] < 0.1 and weights[-1] > 0.9 and bool((weights[1:] >= weights[:-1] - 1e-4).all())


def test_paste_back_at_the_photo_border_has_no_feather_there():
    photo = torch.zeros(100, 120, 3)
    out = paste_back(torch.ones(1, 50, 50, 3), photo, (0, 0, 50, 50), feather_px=10)
    assert out.shape == (1, 100, 120, 3)
    assert torch.allclose(out[0, 0, :30], torch.tensor(1.0)) and torch.allclose(out[0, :30, 0], torch.tensor(1.0))
    assert float(out[0, 25, 49, 0]) < 0.1  # the inner edge is feathered


@pytest.mark.parametrize("fps_out", [12.5, 24.0, 30.0, 50.0, 60.0])
def test_fps_conversion_keeps_duration(fps_out):
    frames = torch.arange(123, dtype=torch.float32).view(123, 1, 1, 1).expand(123, 2, 2, 3) / 255
    for method in ("nearest", "blend"):
        out = convert_fps(frames, FPS, fps_out, method=method)
        assert abs(out.shape[0] / fps_out - 123 / FPS) <= 1 / fps_out, (method, out.shape[0])
        values = out[:, 0, 0, 0] * 255
        assert bool((values[1:] >= values[:-1] - 1e-4).all())  # time never runs backwards
        if method == "nearest":
            assert torch.allclose(values, values.round(), atol=1e-4)  # only original frames


def test_fps_conversion_through_the_writer(tmp_path, clip):
    from sonic.media.probe import probe
    from sonic.media.video import write_mp4

    frames, audio = clip
    result = apply_postprocess(frames[:50], FPS, audio[None, :32_000], SAMPLE_RATE,
                               options=PostProcessOptions(output_fps=30.0))
    assert result.fps == 30.0 and result.frames.shape[0] == 60 and result.report["fps"]["frames_after"] == 60
    path = write_mp4(tmp_path / "30.mp4", result.frames, fps=result.fps, audio=result.audio, sample_rate=SAMPLE_RATE,
                     preset="ultrafast")
    info = probe(path)
    assert info["fps"] == 30.0 and abs(info["video_duration"] - 2.0) < 1e-6 and abs(info["audio_duration"] - 2.0) <= 1 / 30


def test_everything_together_streams_into_the_writer(tmp_path, clip):
    from sonic.media.probe import probe
    from sonic.media.video import write_mp4

    frames, audio = clip
    photo = torch.rand(401, 333, 3)
    options = PostProcessOptions(sync=40.0, smoothing=0.3, colour_match=True, paste_back=True, feather_px=8,
                                 output_fps=24.0)
    result = apply_postprocess(frames[:50], FPS, audio[None, :32_000], SAMPLE_RATE, options=options,
                               reference_crop=frames[0], crop_box=(20, 30, 276, 286), original_image=photo,
                               face_box_in_crop=FACE_BOX, stream=True)
    assert set(result.report) == {"colour_match", "smoothing", "sync", "fps", "paste_back"}
    assert not isinstance(result.frames, torch.Tensor)  # an iterator of chunks
    path = write_mp4(tmp_path / "all.mp4", result.frames, fps=result.fps, audio=result.audio, sample_rate=SAMPLE_RATE,
                     preset="ultrafast")
    info = probe(path)
    assert (info["width"], info["height"], info["frame_count"]) == (332, 400, 48)


def test_defaults_change_nothing_and_bad_options_are_explained(clip):
    frames, audio = clip
    result = apply_postprocess(frames, FPS, audio[None], SAMPLE_RATE, options=PostProcessOptions())
    assert torch.equal(result.frames, frames) and result.report == {}
    for bad, message in [(dict(sync="sometimes"), "sync"), (dict(sync=5000), "sync"), (dict(smoothing=2), "smoothing"),
                         (dict(feather_px=-1), "feather_px"), (dict(output_fps=0), "output_fps"),
                         (dict(fps_method="magic"), "fps_method")]:
        with pytest.raises(ParameterError, match=message):
            PostProcessOptions(**bad)
    with pytest.raises(ParameterError, match="reference_crop"):
        apply_postprocess(frames, FPS, None, None, options=PostProcessOptions(colour_match=True))
    with pytest.raises(ParameterError, match="original_image"):
        apply_postprocess(frames, FPS, None, None, options=PostProcessOptions(paste_back=True))
    with pytest.raises(ParameterError, match="audio"):
        apply_postprocess(frames, FPS, None, None, options=PostProcessOptions(sync="auto"))
    with pytest.raises(ParameterError, match="inside"):
        paste_back(frames[:1], torch.zeros(50, 50, 3), (0, 0, 60, 60))
