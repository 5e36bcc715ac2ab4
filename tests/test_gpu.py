"""Checks that need a CUDA device: bf16 against fp32 on the tiny zoo, the physical placement of every
model under each memory policy, and the message of a real out-of-memory error.

Marked `gpu`: where torch sees no CUDA device these are skipped (and listed as skipped by `-ra`),
never counted as passed. The CPU suite covers the same logic on `cpu:0` (tests/test_memory_policy.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers import FACE, SR, speech_like

from sonic import DeviceMemoryError, SonicPipeline

pytestmark = pytest.mark.gpu

SMALL = dict(face_box=FACE, min_resolution=64, inference_steps=1, seed=4)
POLICIES = ("keep", "offload", "lowvram")


def fresh_pipeline(tiny_zoo, device, dtype, policy="keep"):
    """New models for every pipeline: a pipeline casts its models in place (bf16 would stick)."""
    return SonicPipeline.from_pretrained(tiny_zoo, device=device, dtype=dtype, memory_policy=policy,
                                         face_detector=False)


def frames(pipe, portrait) -> torch.Tensor:
    return pipe(portrait, (speech_like(0.4), SR), **SMALL).frames.float().cpu()


@pytest.fixture(scope="module")
def cpu_frames(tiny_zoo, portrait):
    return frames(fresh_pipeline(tiny_zoo, "cpu", torch.float32), portrait)


def test_fp32_on_cuda_matches_the_cpu(tiny_zoo, portrait, cpu_frames):
    """Frames in [0, 1]. cuDNN convolutions may use TF32; measured on the CPU for scale: bf16 moves the
    mean by 0.008, a different audio clip by 0.010, a different seed by 0.22."""
    cuda = frames(fresh_pipeline(tiny_zoo, "cuda", torch.float32), portrait)
    difference = (cuda - cpu_frames).abs()
    assert difference.mean() < 4e-3 and difference.max() < 0.1, (difference.mean(), difference.max())


def test_bf16_on_cuda_stays_close_to_fp32(tiny_zoo, portrait, cpu_frames):
    pipe = fresh_pipeline(tiny_zoo, "cuda", torch.bfloat16)
    assert next(pipe.models.unet.parameters()).dtype == torch.bfloat16
    half = frames(pipe, portrait)
    assert torch.isfinite(half).all() and half.shape == cpu_frames.shape
    difference = (half - cpu_frames).abs()
    assert difference.mean() > 1e-4, "bf16 gave the fp32 numbers: was it really used?"
    # bf16 against fp32 on the CPU: mean 0.008, max 0.08
    assert difference.mean() < 0.03 and difference.max() < 0.3, (difference.mean(), difference.max())


@pytest.mark.parametrize("policy", POLICIES)
def test_physical_placement_follows_the_memory_policy(tiny_zoo, portrait, policy):
    """At every network's forward the models really on the GPU are those the policy's books name,
    the running network among them; after the run only the resting ones stay there."""
    pipe = fresh_pipeline(tiny_zoo, "cuda", torch.float32, policy)
    models = pipe.models
    networks = {"whisper": models.whisper, "image_encoder": models.image_encoder, "vae_encoder": models.vae.encoder,
                "audio2token": models.audio2token, "unet": models.unet, "vae_decoder": models.vae.decoder,
                "rife": models.rife}
    seen = []

    def on_cuda() -> set[str]:
        return {name for name, device in pipe.module_devices().items() if device.startswith("cuda")}

    def check(name, module):
        assert next(module.parameters()).device.type == "cuda", f"{policy}: {name} runs off the GPU"
        assert on_cuda() == pipe.resident_modules(), (policy, name, sorted(on_cuda()), sorted(pipe.resident_modules()))
        seen.append(name)

    resting = pipe.resident_modules()
    assert on_cuda() == resting
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    handles = [net.register_forward_pre_hook(lambda module, args, name=name: check(name, module))
               for name, net in networks.items()]
    try:
        frames(pipe, portrait)
    finally:
        for handle in handles:
            handle.remove()
    assert set(seen) == set(networks)
    assert on_cuda() == pipe.resident_modules() == resting
    if policy == "offload":
        assert resting == set()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= allocated + (1 << 20), "offload left tensors on the GPU"


def test_out_of_memory_while_computing_names_the_settings(tiny_zoo, portrait):
    """All models on the GPU ("keep"), then the allocator is capped just above what they hold: the
    first activations of the run fail with torch's real OutOfMemoryError."""
    pipe = fresh_pipeline(tiny_zoo, "cuda", torch.float32, "keep")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + (1 << 20)) / total)
    try:
        with pytest.raises(DeviceMemoryError) as caught:
            frames(pipe, portrait)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    message = str(caught.value)
    assert "ran out of memory" in message and "lowvram" in message
    assert "decode_chunk_size" in message and "min_resolution" in message


def test_out_of_memory_while_moving_a_model_names_the_settings(tiny_zoo, portrait):
    pipe = fresh_pipeline(tiny_zoo, "cuda", torch.float32, "offload")  # everything rests on the CPU
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 4096) / total)
    try:
        with pytest.raises(DeviceMemoryError, match="ran out of memory"):
            frames(pipe, portrait)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert pipe.resident_modules() == set()
    assert set(pipe.module_devices().values()) == {"cpu"}
