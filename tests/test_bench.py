"""`python -m sonic bench`: the tiny CPU run end to end, its JSON report, the FLOP counter and the
full-size random models (on the meta device: shapes only)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import GOLDEN, MANIFESTS

from sonic.cli import main
from sonic.tools.bench import STAGES, count_unet_flops
from sonic.media.probe import probe

HEADLINE = ("seconds_per_video_second", "seconds_per_step", "peak_device_memory_gb", "peak_host_memory_gb", "mfu",
            "stages")
# FlopCounterMode on the meta device, SVD-xt UNet + audio adapters, 3 branches x 25 frames x 64x64 latents.
FULL_SIZE_FLOPS_512 = 95_336_056_258_560


def test_cpu_bench_runs_end_to_end_and_writes_a_valid_report(tmp_path, capsys):
    import torch

    out, video = tmp_path / "report.json", tmp_path / "kept.mp4"
    threads = torch.get_num_threads()
    rc = main(["bench", "--device", "cpu", "--threads", "1", "--audio-seconds", "1", "--steps", "2",
                        "--repeats", "1", "--warmup", "1", "--peak-tflops", "1", "--x264-preset", "ultrafast",
                        "--json", str(out), "--keep-video", str(video)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert torch.get_num_threads() == threads, "--threads leaked out of the benchmark"
    assert "seconds per video second" in printed and "sampling" in printed
    report = json.loads(out.read_text())
    assert all(key in report for key in HEADLINE)
    assert report["models"].startswith("tiny zoo") and report["device"]["type"] == "cpu"

    # 1 s of audio: 25 audio frames -> 12 generated frames -> 24 at 25 fps, plus the last frame held once so the
    # video ends with its audio (as every product path does): 25 frames; 2 steps x 1 window.
    assert report["video"] == {"seconds": 25 / 25, "frames": 25, "fps": 25.0, "generated_frames": 12,
                               "unet_calls": 2, "windows_per_step": 1, "latent_size": [8, 8]}
    stages = report["stages"]
    assert list(stages) == list(STAGES)
    assert all(stages[name]["seconds"] > 0 for name in STAGES if name != "prepare")
    assert sum(s["share"] for s in stages.values()) == pytest.approx(1.0)
    total = sum(s["seconds"] for s in stages.values())
    assert report["seconds_per_video_second"] == pytest.approx(total / (25 / 25))
    assert report["seconds_per_step"] == pytest.approx(stages["sampling"]["seconds"] / 2)
    assert report["outside_unet_share"] == pytest.approx(1 - stages["sampling"]["share"])

    # MFU is the counted FLOPs over the measured sampling time and the given peak (1 TFLOP/s).
    flops = report["unet_flops_per_call"]
    assert flops > 1e8
    assert report["mfu"] == pytest.approx(flops * 2 / stages["sampling"]["seconds"] / 1e12)
    assert report["peak_device_memory_gb"] is None  # no device memory on the CPU
    assert 0.1 < report["peak_host_memory_gb"] < 64
    assert len(report["runs"]) == 1 and len(report["warmup_seconds"]) == 1
    assert report["placement_ok"] is True  # keep: every model on the device in every stage

    facts = probe(video)  # the streamed decode -> RIFE -> MP4 chain wrote a real, complete video
    assert facts["frame_count"] == 25 and facts["fps"] == pytest.approx(25.0)
    assert facts["audio_codec"] is not None and facts["width"] == facts["height"] == 64


@pytest.mark.parametrize("argv, message", [
    (["--resolution", "100"], "--resolution must be a multiple of 64"),
    (["--attention", "efficient", "--device", "cpu"], "needs a CUDA GPU"),
    (["--steps", "0"], "--steps must be between 1 and 1000"),
    (["--compile", "--memory-policy", "offload", "--device", "cpu"], "--compile needs the UNet to stay"),
    (["--models", "/nonexistent/weights"], "is not a folder"),
])
def test_bad_settings_are_clear_errors_before_any_work(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _tiny_unet_config() -> dict:
    return json.loads((GOLDEN / "unet_forward" / "config.json").read_text())["unet_config"]


def test_meta_flop_count_equals_a_real_forward_with_explicit_attention():
    """The meta count sees SDPA as matrix products; a real CPU forward on the MATH backend must agree
    exactly, and batching the three branches must cost exactly three single-branch calls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sonic.models.unet import build_sonic_unet
    from sonic.tools.random_models import materialize

    shape = dict(latent_height=8, latent_width=12, frames=25, tokens=4)
    on_meta = count_unet_flops(_tiny_unet_config(), dtype=torch.float32, **shape)
    with torch.device("meta"):
        unet = build_sonic_unet(_tiny_unet_config())
    real = materialize(unet, "cpu")
    with sdpa_kernel([SDPBackend.MATH]):
        on_cpu = count_unet_flops(real, **shape)
    assert on_meta == on_cpu
    assert on_meta == 3 * count_unet_flops(_tiny_unet_config(), batch=1, dtype=torch.float32, **shape)
    # Attention is part of the count: 4 audio tokens per frame cost less than 8.
    assert on_meta < count_unet_flops(_tiny_unet_config(), dtype=torch.float32, **dict(shape, tokens=8))


def test_flops_only_counts_the_full_size_unet(tmp_path, capsys):
    out = tmp_path / "flops.json"
    assert main(["bench", "--flops-only", "--resolution", "512", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["unet_flops_per_call"] == FULL_SIZE_FLOPS_512
    assert report["unet_calls_per_video_second"] == 12.5  # 25 steps x 12.5 frames/s / 25 frames per window
    # bf16 dense peak of an H100 SXM, 989.4 TFLOP/s: 95.3 TFLOP x 12.5 calls -> 1.2 s per video second
    assert report["floor_seconds_per_video_second_bf16"]["H100"] == pytest.approx(
        FULL_SIZE_FLOPS_512 * 12.5 / 989.4e12)
    assert "95.34 TFLOP" in capsys.readouterr().err


def test_full_size_random_models_have_the_release_shapes():
    from sonic.tools.random_models import build_random_models

    models = build_random_models(device="meta", dtype=torch.bfloat16)
    for attribute, manifest in (("unet", "unet"), ("audio2token", "audio2token"), ("audio2bucket", "audio2bucket"),
                                ("rife", "rife_flownet")):
        expected = json.loads((MANIFESTS / f"{manifest}.json").read_text())
        expected.pop("__meta__")
        shapes = {k: list(v.shape) for k, v in getattr(models, attribute).state_dict().items()}
        assert shapes == expected, attribute
    assert models.unet.dtype == torch.bfloat16 and models.whisper.conv1.weight.dtype == torch.float32
    assert models.image_encoder.config.hidden_size == 1280 and models.vae.config.block_out_channels[-1] == 512


def test_materialize_gives_finite_scaled_values_and_keeps_buffers():
    from sonic.weights.loading import parameters_on_meta
    from sonic.models.image_models import build_clip_image_encoder
    from sonic.tools.random_models import materialize
    from sonic.tools.zoo import TINY_CLIP

    with parameters_on_meta():
        clip = build_clip_image_encoder(dict(TINY_CLIP, intermediate_size=512))
    assert clip.vision_model.encoder.layers[0].mlp.fc2.weight.is_meta
    clip = materialize(clip, "cpu", seed=1)
    params = dict(clip.named_parameters())
    assert not any(p.is_meta or not torch.isfinite(p).all() for p in params.values())
    fc2 = params["vision_model.encoder.layers.0.mlp.fc2.weight"]  # fan-in 512: std 1/sqrt(512)
    assert fc2.std().item() == pytest.approx(512 ** -0.5, rel=0.1)
    assert torch.equal(params["vision_model.encoder.layers.0.mlp.fc2.bias"], torch.zeros(16))
    assert torch.equal(params["vision_model.post_layernorm.weight"], torch.ones(16))
    positions = clip.vision_model.embeddings.position_ids
    assert torch.equal(positions, torch.arange(positions.shape[-1]).expand_as(positions))
    again = materialize(_rebuilt(), "cpu", seed=1)
    assert torch.equal(dict(again.named_parameters())["vision_model.encoder.layers.0.mlp.fc2.weight"], fc2)


def _rebuilt():
    from sonic.weights.loading import parameters_on_meta
    from sonic.models.image_models import build_clip_image_encoder
    from sonic.tools.zoo import TINY_CLIP

    with parameters_on_meta():
        return build_clip_image_encoder(dict(TINY_CLIP, intermediate_size=512))
