"""Full-size Sonic models with random weights, for timing and memory measurements.

Run time and memory do not depend on weight values, so the benchmark needs no download: every
network is built from the released configurations (the SVD-xt diffusers configs shipped in
`sonic/assets/svd_xt/`, whisper-tiny's encoder values and the release's adapter widths below)
with parameters on the meta device, then materialised directly on the target device and filled
with cheap scaled-normal values. Nothing here reads a checkpoint.

The values are chosen so that activations stay O(1) through the deep networks (weights
~ N(0, 1/fan_in), norm scales 1, biases 0): no NaN/inf in bf16 and no denormals on the CPU,
either of which could distort timings. The outputs are of course meaningless.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..config import TOKEN_WINDOW, TOKEN_WINDOW_LAYERS
from ..errors import ParameterError
from ..weights.loading import parameters_on_meta
from ..weights.locate import BUILTIN_SVD_CONFIGS

# whisper-tiny's config.json values the encoder uses (openai/whisper-tiny as released with Sonic).
WHISPER_TINY_ENCODER = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                            num_mel_bins=80, max_source_positions=1500)
# Widths of the released adapters that no config file records (checkpoint_manifests/audio2*.json).
AUDIO2TOKEN_INTERMEDIATE = 1024  # proj1/proj2 width
AUDIO2TOKEN_TOKENS = 32  # audio tokens per frame (proj3 = tokens x UNet cross-attention width)
AUDIO2BUCKET_INTERMEDIATE = 1024
RIFE_WIDTH = 90  # IFBlock channels of RIFE/flownet.pkl
RIFE_TEACHER_IN = 14


def svd_config(part: str) -> dict:
    """A diffusers/transformers config of SVD-xt shipped with the package ("unet", "vae", "image_encoder")."""
    path = Path(BUILTIN_SVD_CONFIGS) / part / "config.json"
    return json.loads(path.read_text(encoding="utf-8"))


def build_random_models(*, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                        interpolation: bool = True):
    """Every network of the pipeline at full size with random weights, as a `SonicModels`.

    device: where the weights are created ("meta" builds shapes only, no memory, no values).
    dtype: of the UNet, VAE and CLIP encoder (created directly in it, no fp32 copy on the device);
        Whisper, the audio adapters and RIFE are fp32 as in the reference.
    interpolation: include RIFE. No face detector is built (give a face box, or OpenCV is used).
    """
    from ..models.audio_adapters import AudioToBucket, AudioToTokens
    from ..models.image_models import build_clip_image_encoder, build_vae
    from ..models.rife import IFNet
    from ..models.unet import build_sonic_unet
    from ..models.whisper import build_whisper_encoder
    from ..weights.loading import SonicModels

    device = torch.device(device)
    unet_config, clip_config = svd_config("unet"), svd_config("image_encoder")
    context_dim = int(unet_config["cross_attention_dim"])
    clip_width = int(clip_config["projection_dim"])
    whisper_width = WHISPER_TINY_ENCODER["d_model"]
    seeds = iter(range(int(seed), int(seed) + 1000))  # one stream per network, in a fixed order

    def make(build, module_dtype):
        with parameters_on_meta():  # parameters on meta, buffers real
            module = build()
        # nn.Module.to, not diffusers ModelMixin.to (which warns about dtype casts of random weights)
        return materialize(torch.nn.Module.to(module, module_dtype), device, seed=next(seeds))

    def unet():
        with torch.device("meta"):  # the SVD UNet has no buffers: build all of it on meta (fast)
            return build_sonic_unet(unet_config)

    models = SonicModels(
        unet=make(unet, dtype),
        vae=make(lambda: build_vae(svd_config("vae")), dtype),
        image_encoder=make(lambda: build_clip_image_encoder(clip_config), dtype),
        whisper=make(lambda: build_whisper_encoder(WHISPER_TINY_ENCODER), torch.float32),
        audio2token=make(lambda: AudioToTokens(channels=whisper_width, intermediate_dim=AUDIO2TOKEN_INTERMEDIATE,
                                               output_dim=context_dim, context_tokens=AUDIO2TOKEN_TOKENS,
                                               seq_len=TOKEN_WINDOW, blocks=TOKEN_WINDOW_LAYERS), torch.float32),
        audio2bucket=make(lambda: AudioToBucket(channels=whisper_width, clip_channels=clip_width,
                                                intermediate_dim=AUDIO2BUCKET_INTERMEDIATE), torch.float32),
        scheduler_config=json.loads((Path(BUILTIN_SVD_CONFIGS) / "scheduler" / "scheduler_config.json").read_text()),
        rife=make(lambda: IFNet(RIFE_WIDTH, RIFE_TEACHER_IN), torch.float32) if interpolation else None,
    )
    return models


@torch.no_grad()
def materialize(module: torch.nn.Module, device, *, seed: int = 0) -> torch.nn.Module:
    """Give a module built on the meta device real storage on `device`, filled with random values.

    Weights with two or more dimensions ~ N(0, 1/fan_in); other parameters named `bias` are 0,
    the rest (norm scales, PReLU slopes, blend factors) 1. Buffers that already had values (e.g.
    CLIP's `position_ids`) keep them. With device "meta" the module is returned as is. Returns
    the module in eval mode without gradients.
    """
    device = torch.device(device)
    module.eval().requires_grad_(False)
    if device.type == "meta":
        return module
    kept = {name: buf.detach().clone() for name, buf in module.named_buffers() if not buf.is_meta}
    missing = [name for name, buf in module.named_buffers() if buf.is_meta]
    if missing:
        raise ParameterError(f"cannot give random values to buffers {missing[:3]} built on the meta device; "
                             "build the module under sonic.weights.loading.parameters_on_meta()")
    module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if device.type in ("cpu", "cuda") else None
    for name, param in module.named_parameters():
        if param.dim() >= 2:
            fan_in = max(param[0].numel(), 1)
            param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)
    for name, value in kept.items():
        module.get_buffer(name).copy_(value)
    return module

