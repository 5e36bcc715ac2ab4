"""Memory policies ("keep", "offload", "lowvram"): which models are on the compute device while each
model runs, where they rest between stages, and what happens when a stage fails or memory runs out.

The CPU has one device, so the pipeline is given `cpu:0` as its compute device: a device distinct
from the resting place "cpu" that still runs on the CPU, so every policy really moves its models
(`Module.to`) and keeps its books. Forward pre-hooks record the pipeline's view of the device
(`resident_modules()`) at the moment each network runs. That the books match the physical
placement is checked on a GPU by `python -m sonic bench` (`placement_ok` in its report).
"""

from __future__ import annotations

import pytest
import torch
from conftest import FACE, SR, speech_like

from sonic.errors import DeviceMemoryError, Interrupted
from sonic.weights.loading import load_models
from sonic.pipeline import SonicPipeline
from sonic.placement import MODELS, POLICIES, STAGE_MODELS, expected_resident

EVERYTHING = {"unet", "vae", "image_encoder", "whisper", "audio2token", "audio2bucket", "rife"}
SMALL = dict(face_box=FACE, min_resolution=64, inference_steps=1, seed=4)
# The network that runs -> the pipeline stage it belongs to; `sonic.placement` says which models may
# be on the device in each stage under each policy.
STAGE_OF = {"whisper": "audio_features", "image_encoder": "reference", "vae_encoder": "reference",
            "audio2token": "audio_tokens", "unet": "sampling", "vae_decoder": "decode", "rife": "interpolate"}
# What the README and the node tooltip promise, written out once more as the specification.
RESTING = {"keep": EVERYTHING, "offload": set(), "lowvram": {"unet"}}


def allowed_on_device(policy: str, running: str) -> tuple[set[str], set[str]]:
    """(models that must be on the device, models that may be) while `running` runs."""
    return expected_resident(policy, STAGE_OF[running])


def test_the_placement_table_is_the_documented_one():
    assert set(MODELS) == EVERYTHING
    assert {name: set(p.resting_on_device) for name, p in POLICIES.items()} == RESTING
    # ComfyUI evicts its other models exactly when Sonic's models move around.
    assert {name: p.unload_others for name, p in POLICIES.items()} == {"keep": False, "offload": True, "lowvram": True}
    for policy in RESTING:
        for stage, (least, most) in STAGE_MODELS.items():
            assert expected_resident(policy, stage) == (RESTING[policy] | least, RESTING[policy] | most)


@pytest.fixture(scope="module")
def models(tiny_zoo):
    # One thread: these tiny models are dominated by per-op overhead, and two threads on the shared
    # 2-core runners were 10-20x slower under load.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_models(tiny_zoo, need_face_detector=False)
    torch.set_num_threads(threads)


def watched(models, policy: str):
    """A pipeline on `cpu:0` plus a log of (network, models on the device) at every forward."""
    pipe = SonicPipeline(models, device="cpu:0", dtype=torch.float32, memory_policy=policy)
    log: list[tuple[str, frozenset]] = []
    networks = {"whisper": models.whisper, "image_encoder": models.image_encoder, "vae_encoder": models.vae.encoder,
                "audio2token": models.audio2token, "unet": models.unet, "vae_decoder": models.vae.decoder,
                "rife": models.rife}
    handles = [net.register_forward_pre_hook(lambda module, args, name=name: log.append(
        (name, frozenset(pipe.resident_modules())))) for name, net in networks.items()]
    return pipe, log, handles


def test_policies_put_exactly_the_documented_models_on_the_device_and_agree(models, portrait):
    frames = {}
    for policy in ("keep", "offload", "lowvram"):
        pipe, log, handles = watched(models, policy)
        try:
            assert pipe.resident_modules() == RESTING[policy]
            frames[policy] = pipe(portrait, (speech_like(0.4), SR), **SMALL).frames
        finally:
            for handle in handles:
                handle.remove()
        assert {name for name, _ in log} == set(STAGE_OF)  # every network ran and was observed
        for name, on_device in log:
            least, most = allowed_on_device(policy, name)
            assert least <= on_device <= most, (policy, name, sorted(on_device))
        assert pipe.resident_modules() == RESTING[policy]  # everything went back to its resting place
    # Where a model rests changes nothing in the numbers.
    assert torch.equal(frames["keep"], frames["offload"]) and torch.equal(frames["keep"], frames["lowvram"])


def test_models_go_home_when_a_stage_is_interrupted(models, portrait):
    pipe = SonicPipeline(models, device="cpu:0", dtype=torch.float32, memory_policy="offload")
    seen = []

    def cancel(info):
        if info.stage == "sampling":
            seen.append(pipe.resident_modules())
            raise Interrupted("stopped by the user")

    with pytest.raises(Interrupted):
        pipe(portrait, (speech_like(0.4), SR), callback=cancel, **SMALL)
    assert seen == [{"unet"}]
    assert pipe.resident_modules() == set()


def test_out_of_memory_in_a_stage_names_the_settings_to_change(models, portrait):
    """torch raises OutOfMemoryError inside the stage (here from the progress callback, which runs
    inside the sampling stage exactly where a CUDA allocation would fail)."""
    pipe = SonicPipeline(models, device="cpu:0", dtype=torch.float32, memory_policy="lowvram")

    def out_of_memory(info):
        if info.stage == "sampling":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(DeviceMemoryError) as caught:
        pipe(portrait, (speech_like(0.4), SR), callback=out_of_memory, **SMALL)
    message = str(caught.value)
    assert "ran out of memory" in message and "--memory-policy lowvram" in message
    assert "decode_chunk_size" in message and "min_resolution" in message
    assert pipe.resident_modules() == {"unet"}
