"""SVD temporal VAE wrappers (sonic.models.image_models, sonic.diffusion.decode) against the golden fixture."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import GOLDEN, SVD_CONFIGS, assert_close_peak, assert_close_to_golden, load_golden
from sonic.config import VAE_SCALING_FACTOR
from sonic.diffusion.decode import decode_all, decode_latents
from sonic.errors import ParameterError, WeightsError
from sonic.models.image_models import build_vae, encode_reference


@pytest.fixture(scope="module")
def golden():
    torch.set_num_threads(2)
    config = json.loads((GOLDEN / "vae" / "config.json").read_text())["config"]
    return {"config": config, "weights": load_golden("vae", "weights.safetensors"),
            "inputs": load_golden("vae", "inputs.safetensors"), "outputs": load_golden("vae", "outputs.safetensors")}


@pytest.fixture(scope="module")
def vae(golden):
    return build_vae(golden["config"], golden["weights"])


def _as_official_layout(frames: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] -> (1, 3, N, H, W), the layout of the golden decode outputs."""
    return frames.permute(3, 0, 1, 2).unsqueeze(0)


def test_encode_reference_matches_golden(golden, vae):
    ref_latent, image_latent = encode_reference(vae, golden["inputs"]["image"])
    out = golden["outputs"]
    assert ref_latent.dtype == image_latent.dtype == torch.float32
    assert_close_to_golden(ref_latent, out["ref_image_latents"], "vae/ref_latent")
    assert_close_to_golden(image_latent, out["latent_mode"], "vae/image_latent")
    # One encode serves both: mean == mode for a diagonal Gaussian, only the scaling differs.
    assert torch.equal(ref_latent, image_latent * VAE_SCALING_FACTOR)
    # The concat latent is NOT scaled: a swap of the two would fail here.
    assert not torch.allclose(image_latent, ref_latent, atol=1e-3)


def test_noise_augmentation_uses_a_second_encode(golden, vae):
    image = golden["inputs"]["image"]
    plain_ref, plain_image = encode_reference(vae, image)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(3))
    ref, augmented = encode_reference(vae, image, noise_aug_strength=0.05, noise=noise)
    assert torch.equal(ref, plain_ref)  # the reference latent never sees the noise
    expected = vae.encode(image + 0.05 * noise).latent_dist.mode()
    assert_close_peak(augmented, expected, 1e-5, "augmented latent")
    assert not torch.allclose(augmented, plain_image, atol=1e-4)
    # Same seed, same draw: reproducible through a generator too.
    a = encode_reference(vae, image, noise_aug_strength=0.05, generator=torch.Generator().manual_seed(3))[1]
    assert torch.equal(a, augmented)


def test_chunked_decode_matches_golden(golden, vae):
    latents = golden["inputs"]["latents"]
    out = golden["outputs"]
    chunks = list(decode_latents(vae, latents, chunk_size=2))
    assert [c.shape for c in chunks] == [(2, 64, 96, 3), (2, 64, 96, 3), (1, 64, 96, 3)]
    assert all(c.dtype == torch.float32 and c.device.type == "cpu" for c in chunks)
    frames = _as_official_layout(torch.cat(chunks))
    assert_close_to_golden(frames, out["video_0_1_chunk2"], "vae/chunk 2")
    single = _as_official_layout(decode_all(vae, latents[0], chunk_size=8))  # (N, C, h, w) input works too
    expected_single = (out["frames_chunk5"] * 0.5 + 0.5).clamp(0, 1)
    assert_close_to_golden(single, expected_single, "vae/one chunk")
    # Chunking is not cosmetic: the temporal decoder mixes frames inside a chunk only.
    assert (single - frames).abs().max() > 1e-3


def test_decode_is_a_lazy_generator(golden, vae):
    stream = decode_latents(vae, golden["inputs"]["latents"], chunk_size=4)
    assert next(stream).shape == (4, 64, 96, 3)
    assert next(stream).shape == (1, 64, 96, 3)
    assert next(stream, None) is None


def test_low_precision_vae_returns_float32(golden):
    vae16 = build_vae(golden["config"], golden["weights"], dtype=torch.bfloat16)
    frames = decode_all(vae16, golden["inputs"]["latents"][:, :1])  # fp32 latents in, cast inside
    assert frames.dtype == torch.float32 and frames.shape == (1, 64, 96, 3)
    assert torch.isfinite(frames).all() and 0 <= frames.min() and frames.max() <= 1
    ref_latent, image_latent = encode_reference(vae16, golden["inputs"]["image"])
    assert ref_latent.dtype == image_latent.dtype == torch.float32
    # bf16 keeps about 3 significant digits: a loose check that it computes the same thing.
    assert_close_peak(image_latent, golden["outputs"]["latent_mode"], 0.05, "bf16 encode")


def test_bad_inputs_are_clear_errors(golden, vae):
    with pytest.raises(ParameterError, match="chunk_size"):
        decode_latents(vae, golden["inputs"]["latents"], chunk_size=0)
    with pytest.raises(ParameterError, match="channels"):
        decode_latents(vae, torch.zeros(2, 8, 8, 12))
    with pytest.raises(ParameterError, match="B = 1"):
        decode_latents(vae, torch.zeros(2, 2, 4, 8, 12))
    with pytest.raises(ParameterError, match="multiple of 8"):
        encode_reference(vae, torch.zeros(1, 3, 60, 96))
    weights = dict(golden["weights"])
    weights.pop("decoder.time_conv_out.bias")
    with pytest.raises(WeightsError, match="time_conv_out.bias"):
        build_vae(golden["config"], weights)


def test_full_size_config_builds_on_meta():
    config = json.loads((SVD_CONFIGS / "vae" / "config.json").read_text())
    with torch.device("meta"):
        vae = build_vae(config)
    assert sum(p.numel() for p in vae.parameters()) == 97_742_847  # 97.7 M (SPEC 6.2)
