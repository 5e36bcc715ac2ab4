"""The MP4 writer and reader, against the real bundled ffmpeg (and PyAV where it is installed)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sonic.errors import OutputError, ParameterError
from sonic.media.probe import MediaReadError, probe, read_sonic_tags, read_video
from sonic.media.video import build_metadata_tags, fit_audio_length, to_uint8_frames, write_mp4

FPS = 25.0


def gradient_frames(count: int, height: int, width: int) -> torch.Tensor:
    """Smooth moving colour gradients: easy to encode, so decoded pixels stay close to the input."""
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    frames = []
    for t in range(count):
        phase = 2 * torch.pi * t / max(1, count)
        frames.append(torch.stack([0.5 + 0.35 * torch.sin(2 * x + phase), 0.1 + 0.8 * y, 0.1 + 0.4 * (x + y)], dim=-1))
    return torch.stack(frames)


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


def only_file(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_round_trip_sizes_durations_pixels_and_tags(tmp_path):
    frames = gradient_frames(30, 64, 96)
    audio = tone(2.0, 44_100, channels=2)  # longer than the 1.2 s of video: must be trimmed
    meta = {"parameters": {"seed": 7, "dynamic_scale": 1.0}, "image_sha256": "ab" * 32, "audio_sha256": "cd" * 32}
    path = write_mp4(tmp_path / "out.mp4", frames, fps=FPS, audio=audio, sample_rate=44_100, metadata=meta)
    assert only_file(tmp_path) == ["out.mp4"]
    info = probe(path)
    assert (info["video_codec"], info["audio_codec"]) == ("h264", "aac")
    assert (info["width"], info["height"], info["frame_count"], info["fps"]) == (96, 64, 30, FPS)
    assert info["sample_rate"] == 44_100 and info["audio_channels"] == 2
    assert abs(info["video_duration"] - 1.2) < 1e-6
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / FPS

    decoded, fps, sound, rate = read_video(path)
    assert decoded.shape == (30, 64, 96, 3) and fps == FPS and rate == 44_100 and sound.shape[0] == 2
    expected = to_uint8_frames(frames).astype(np.float32)
    assert np.abs(decoded.astype(np.float32) - expected).mean() < 3.0  # crf 18 on smooth gradients
    assert abs(sound.shape[1] / rate - 1.2) <= 1 / FPS

    tags = read_sonic_tags(path)
    assert tags["ai_generated"] is True and tags["tool"] == "sonic" and tags["version"]
    assert tags["parameters"] == meta["parameters"] and tags["image_sha256"] == meta["image_sha256"]
    assert "AI-generated" in info["tags"]["description"]


def test_ffmpeg_fallback_probe_reads_the_same_facts(tmp_path):
    """Without PyAV, `probe` parses `ffmpeg -i` and decodes: same facts (and the same as PyAV's)."""
    path = write_mp4(tmp_path / "o.mp4", gradient_frames(13, 32, 48), fps=12.5, audio=tone(0.5, 16_000),
                     sample_rate=16_000, metadata={"parameters": {"a": "b=c: d"}})
    info = probe(path, use_pyav=False)
    expected = {"video_codec": "h264", "audio_codec": "aac", "width": 48, "height": 32, "fps": 12.5,
                "frame_count": 13, "sample_rate": 16_000, "audio_channels": 1}
    assert {key: info[key] for key in expected} == expected
    assert abs(info["video_duration"] - 1.04) < 1e-6 and abs(info["audio_duration"] - 1.04) <= 1 / 12.5
    assert '"a":"b=c: d"' in info["tags"]["comment"]
    try:
        import av  # noqa: F401  (a test extra: compare both routes where it is installed)
    except ImportError:
        return
    with_av = probe(path, use_pyav=True)
    assert {key: with_av[key] for key in expected} == expected
    assert with_av["tags"]["comment"] == info["tags"]["comment"]


def test_streamed_chunks_equal_one_tensor(tmp_path):
    frames = gradient_frames(21, 32, 32)
    consumed = []

    def chunks():
        for start in range(0, 21, 4):
            consumed.append(start)
            yield frames[start:start + 4]

    generator = chunks()
    assert consumed == []  # nothing is pulled before write_mp4 runs
    a = write_mp4(tmp_path / "a.mp4", generator, fps=FPS, audio=tone(1.0, 16_000), sample_rate=16_000)
    b = write_mp4(tmp_path / "b.mp4", frames, fps=FPS, audio=tone(1.0, 16_000), sample_rate=16_000)
    assert consumed == list(range(0, 21, 4))
    assert np.array_equal(read_video(a)[0], read_video(b)[0])
    assert probe(a)["frame_count"] == 21


def test_odd_sizes_are_cropped_to_even_not_padded(tmp_path):
    frames = torch.rand(3, 33, 51, 3)
    frames[:, -1, :] = 1.0  # last row and column white: they must be the ones dropped
    frames[:, :, -1] = 1.0
    frames[:, :-1, :-1] = gradient_frames(3, 32, 50)
    path = write_mp4(tmp_path / "odd.mp4", frames, fps=FPS)
    decoded = read_video(path)[0]
    assert decoded.shape == (3, 32, 50, 3)
    assert np.abs(decoded.astype(np.float32) - to_uint8_frames(frames[:, :32, :50])).mean() < 3.0


def test_short_audio_is_padded_to_the_video_length(tmp_path):
    path = write_mp4(tmp_path / "pad.mp4", gradient_frames(50, 32, 32), fps=FPS, audio=tone(0.5, 16_000),
                     sample_rate=16_000)
    info = probe(path)
    assert abs(info["audio_duration"] - 2.0) <= 1 / FPS and abs(info["video_duration"] - 2.0) < 1e-6
    sound = read_video(path)[2][0]
    assert np.abs(sound[: 8000 - 800]).max() > 0.2 and np.abs(sound[9600:]).max() < 0.01  # tone, then silence
    assert fit_audio_length(tone(0.5, 16_000), 16_000, 2.0).shape == (1, 32_000)


def test_frames_are_rounded_not_truncated():
    values = torch.tensor([0.0, 0.5, 0.999, 1.2, -0.1, 127.6 / 255]).view(1, 1, 6, 1).expand(1, 1, 6, 3)
    assert to_uint8_frames(values)[0, 0, :, 0].tolist() == [0, 128, 255, 255, 0, 128]


def test_existing_file_needs_overwrite(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        write_mp4(path, gradient_frames(2, 16, 16), fps=FPS)
    assert path.read_bytes() == b"keep me"
    write_mp4(path, gradient_frames(2, 16, 16), fps=FPS, overwrite=True)
    assert probe(path)["frame_count"] == 2 and only_file(tmp_path) == ["x.mp4"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_midway_leaves_no_file_and_no_litter(tmp_path, error):
    def chunks():
        yield gradient_frames(5, 32, 32)
        yield gradient_frames(5, 32, 32)
        raise error("stop")

    with pytest.raises(error):
        write_mp4(tmp_path / "broken.mp4", chunks(), fps=FPS, audio=tone(1, 16_000), sample_rate=16_000)
    assert only_file(tmp_path) == []


def test_ffmpeg_failure_becomes_output_error_with_its_log(tmp_path):
    # 40000 px wide is beyond what libx264 accepts: a genuine encoder failure
    with pytest.raises(OutputError, match="ffmpeg failed.*libx264"):
        write_mp4(tmp_path / "wide.mp4", torch.zeros(2, 4, 40_000, 3, dtype=torch.uint8), fps=FPS)
    assert only_file(tmp_path) == []


def test_bad_inputs_fail_before_encoding(tmp_path):
    good = gradient_frames(2, 16, 16)
    cases = [
        (dict(frames=good.clone().fill_(float("nan")), fps=FPS), ParameterError, "NaN"),
        (dict(frames=torch.rand(2, 16, 16), fps=FPS), ParameterError, r"\[T, H, W, 3\]"),
        (dict(frames=good, fps=0), ParameterError, "fps"),
        (dict(frames=good, fps=FPS, audio=tone(1, 16_000)), ParameterError, "sample_rate"),
        (dict(frames=good, fps=FPS, crf=60), ParameterError, "crf"),
        (dict(frames=good, fps=FPS, preset="warp"), ParameterError, "preset"),
        (dict(frames=good, fps=FPS, metadata={"tool": "x"}), ParameterError, "reserved"),
        (dict(frames=good, fps=FPS, metadata={"p": object()}), ParameterError, "JSON"),
        (dict(frames=iter([]), fps=FPS), ParameterError, "no frames"),
        (dict(frames=iter([good, gradient_frames(1, 8, 8)]), fps=FPS), ParameterError, "same size"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            write_mp4(tmp_path / "bad.mp4", **kwargs)
    with pytest.raises(OutputError, match="does not exist"):
        write_mp4(tmp_path / "missing" / "x.mp4", good, fps=FPS)
    assert only_file(tmp_path) == []


def test_reader_errors_and_silent_video(tmp_path):
    with pytest.raises(MediaReadError, match="not found"):
        probe(tmp_path / "none.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(MediaReadError):
        read_video(junk)
    path = write_mp4(tmp_path / "mute.mp4", gradient_frames(4, 16, 16), fps=FPS)
    frames, fps, audio, rate = read_video(path)
    assert frames.shape == (4, 16, 16, 3) and audio is None and rate is None
    assert probe(path)["audio_codec"] is None and read_sonic_tags(path)["ai_generated"] is True


def test_metadata_tags_are_json():
    tags = build_metadata_tags({"parameters": {"steps": 25}})
    assert '"ai_generated":true' in tags["comment"] and '"steps":25' in tags["comment"]


# ------------------------------------------------------------------------------ ComfyUI graph tags
def mdta_keys(path) -> list[str]:
    """Names in the MP4's `keys` box (QuickTime `mdta` metadata), in order: where ComfyUI's frontend
    looks for `workflow` and `prompt` when an MP4 is dropped on the canvas."""
    import struct

    data = open(path, "rb").read()
    start = data.find(b"keys")
    assert start > 0, "no keys box: the tags are not stored as mdta keys"
    count = struct.unpack(">I", data[start + 8:start + 12])[0]
    names, at = [], start + 12
    for _ in range(count):
        size, namespace = struct.unpack(">I4s", data[at:at + 8])
        assert namespace == b"mdta", namespace
        names.append(data[at + 8:at + size].decode())
        at += size
    return names


def write_like_core_savevideo(path, tags: dict) -> None:
    """A reference file written the way ComfyUI's SaveVideo writes (PyAV, use_metadata_tags)."""
    import av

    with av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as container:
        for key, value in tags.items():
            container.metadata[key] = json.dumps(value)
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for frame in to_uint8_frames(gradient_frames(2, 16, 16)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("with_audio", [True, False])
def test_comfyui_prompt_and_workflow_are_their_own_tags(tmp_path, with_audio):
    """ComfyUI's frontend reopens a dropped MP4's graph from separate `prompt`/`workflow` keys."""
    import av

    # A workflow larger than one command-line argument may be (128 KiB), with ffmetadata's special characters.
    workflow = {"nodes": [{"id": i, "title": "a=b; c#d \\ e\nnext ü"} for i in range(4000)], "version": 0.4}
    prompt = {"1": {"class_type": "SonicInference", "inputs": {"seed": 1, "note": "x=y"}}}
    assert len(json.dumps(workflow)) > 131072
    audio = tone(0.2, 16_000) if with_audio else None
    path = write_mp4(tmp_path / "graph.mp4", gradient_frames(5, 16, 16), fps=FPS, audio=audio,
                     sample_rate=16_000 if with_audio else None, metadata={"parameters": {"steps": 2}},
                     tags={"prompt": prompt, "workflow": workflow})
    with av.open(str(path)) as container:
        tags = dict(container.metadata)
    assert json.loads(tags["workflow"]) == workflow and json.loads(tags["prompt"]) == prompt
    assert json.loads(probe(path, use_pyav=False)["tags"]["prompt"]) == prompt
    provenance = read_sonic_tags(path)
    assert provenance["ai_generated"] is True and provenance["parameters"] == {"steps": 2}
    assert "workflow" not in provenance and "prompt" not in provenance, "the graph belongs in its own tags"
    reference = tmp_path / "core.mp4"
    write_like_core_savevideo(reference, {"prompt": prompt, "workflow": {"nodes": []}})
    assert {"prompt", "workflow"} <= set(mdta_keys(path)) and {"prompt", "workflow"} <= set(mdta_keys(reference))
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "moov after mdat: the frontend reads only the file's start"


def test_plain_outputs_keep_the_standard_comment_and_bad_tag_names_are_refused(tmp_path):
    path = write_mp4(tmp_path / "plain.mp4", gradient_frames(3, 16, 16), fps=FPS)
    assert b"keys" not in path.read_bytes()[:4096] and read_sonic_tags(path)["ai_generated"] is True
    for bad in ("comment", "description", "a=b", ""):
        with pytest.raises(ParameterError, match="tag names"):
            write_mp4(tmp_path / "bad.mp4", gradient_frames(3, 16, 16), fps=FPS, tags={bad: "x"})
    assert not (tmp_path / "bad.mp4").exists()
