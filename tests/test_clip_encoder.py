"""CLIP image encoder wrapper (sonic.models.image_models): stock transformers model, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sonic.errors import ParameterError, WeightsError
from sonic.models.image_models import build_clip_image_encoder, clip_image_embeds

# Tiny stand-in for SVD-xt's ViT-H/14 (hidden 1280, 32 layers, 16 heads, projection 1024): same
# patch/image size and activation so the token count (1 + 16 x 16) is the real one.
TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 14, "image_size": 224, "projection_dim": 12, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
        "model_type": "clip_vision_model", "architectures": ["CLIPVisionModelWithProjection"]}


@pytest.fixture(scope="module")
def weights():
    torch.set_num_threads(2)
    torch.manual_seed(11)
    model = build_clip_image_encoder(TINY)
    # Random LayerNorm affine too, so a skipped norm cannot go unnoticed.
    return {k: (v + 0.1 * torch.randn_like(v)).clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def encoder(weights):
    return build_clip_image_encoder(TINY, weights)


def _pixels(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _reference_embeds(w: dict, pixels: torch.Tensor) -> torch.Tensor:
    """ViT forward written out: patches + CLS + positions, pre-LN, pre-norm blocks, post-LN on CLS, projection."""
    prefix = "vision_model."
    p = lambda name: w[prefix + name]  # noqa: E731
    d, heads = TINY["hidden_size"], TINY["num_attention_heads"]
    patches = F.conv2d(pixels, p("embeddings.patch_embedding.weight"), stride=14).flatten(2).transpose(1, 2)
    cls = p("embeddings.class_embedding").expand(pixels.shape[0], 1, d)
    x = torch.cat([cls, patches], 1) + p("embeddings.position_embedding.weight")
    x = F.layer_norm(x, (d,), p("pre_layrnorm.weight"), p("pre_layrnorm.bias"), 1e-5)
    for i in range(TINY["num_hidden_layers"]):
        layer = lambda name: p(f"encoder.layers.{i}.{name}")  # noqa: E731
        h = F.layer_norm(x, (d,), layer("layer_norm1.weight"), layer("layer_norm1.bias"), 1e-5)

        def split(name):
            y = F.linear(h, layer(f"self_attn.{name}.weight"), layer(f"self_attn.{name}.bias"))
            return y.view(y.shape[0], y.shape[1], heads, d // heads).transpose(1, 2)

        q, k, v = split("q_proj"), split("k_proj"), split("v_proj")
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        attn = attn.transpose(1, 2).reshape(h.shape)
        x = x + F.linear(attn, layer("self_attn.out_proj.weight"), layer("self_attn.out_proj.bias"))
        h = F.layer_norm(x, (d,), layer("layer_norm2.weight"), layer("layer_norm2.bias"), 1e-5)
        h = F.linear(F.gelu(F.linear(h, layer("mlp.fc1.weight"), layer("mlp.fc1.bias"))),
                     layer("mlp.fc2.weight"), layer("mlp.fc2.bias"))
        x = x + h
    cls_out = F.layer_norm(x[:, 0], (d,), p("post_layernorm.weight"), p("post_layernorm.bias"), 1e-5)
    return F.linear(cls_out, w["visual_projection.weight"])


def test_image_embeds_equal_hand_written_vit(weights, encoder):
    pixels = _pixels(batch=2)
    embeds = clip_image_embeds(encoder, pixels)
    assert embeds.shape == (2, TINY["projection_dim"]) and embeds.dtype == torch.float32
    expected = _reference_embeds(weights, pixels)
    assert torch.allclose(embeds, expected, rtol=1e-4, atol=1e-5), (embeds - expected).abs().max()
    # Not L2-normalised (SPEC 2.4): the UNet and audio2bucket see the raw projection.
    assert not torch.allclose(embeds.norm(dim=-1), torch.ones(2), atol=1e-2)
    # Each image gets its own embedding.
    assert not torch.allclose(embeds[0], embeds[1], atol=1e-3)


def test_full_clip_config_and_low_precision(weights):
    full_config = {"model_type": "clip", "projection_dim": 12, "vision_config": {k: v for k, v in TINY.items()
                                                                                if k != "projection_dim"}}
    model = build_clip_image_encoder(full_config, weights, dtype=torch.bfloat16)
    assert model.config.projection_dim == 12
    embeds = clip_image_embeds(model, _pixels())  # fp32 pixels are cast to the model's dtype
    assert embeds.dtype == torch.float32
    expected = _reference_embeds(weights, _pixels())
    assert (embeds - expected).abs().max() <= 0.05 * expected.abs().max()


def test_bad_inputs_are_clear_errors(weights, encoder):
    with pytest.raises(ParameterError, match=r"\(B, 3, 224, 224\)"):
        clip_image_embeds(encoder, torch.zeros(1, 3, 256, 256))
    incomplete = dict(weights)
    incomplete.pop("visual_projection.weight")
    with pytest.raises(WeightsError, match="visual_projection.weight"):
        build_clip_image_encoder(TINY, incomplete)
    wrong_shape = dict(weights)
    wrong_shape["visual_projection.weight"] = torch.zeros(8, 16)
    with pytest.raises(WeightsError, match="visual_projection"):
        build_clip_image_encoder(TINY, wrong_shape)


def test_full_size_vit_h_builds_on_meta():
    vit_h = dict(TINY, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                 projection_dim=1024)
    with torch.device("meta"):
        model = build_clip_image_encoder(vit_h)
    assert sum(p.numel() for p in model.parameters()) == 632_076_800  # SPEC 2.4
