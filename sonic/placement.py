"""Where every model rests and where it works, per memory policy: the one table that the pipeline,
the benchmark, the ComfyUI nodes and the docs read (like diffusers' `model_cpu_offload_seq`, but
for three policies).

A model "rests" on the compute device or on the CPU between stages; a stage moves the models it
runs onto the device for its duration and puts them back after. Decode and RIFE are streamed into
each other, so while the decoder is alive the VAE and RIFE share the device, and RIFE's last batch
may run after the decoder has finished.
"""

from __future__ import annotations

from dataclasses import dataclass

MODELS = ("unet", "vae", "image_encoder", "whisper", "audio2token", "audio2bucket", "rife")


@dataclass(frozen=True)
class MemoryPolicy:
    name: str
    resting_on_device: frozenset[str]  # models that stay on the compute device between stages
    unload_others: bool  # ComfyUI: evict its other models before a heavy stage
    description: str


POLICIES = {p.name: p for p in (
    MemoryPolicy("keep", frozenset(MODELS), False,
                 "every model stays on the GPU (fastest, most VRAM)"),
    MemoryPolicy("offload", frozenset(), True,
                 "every model, the UNet included, is on the GPU only during its stage "
                 "(least VRAM between stages and runs)"),
    MemoryPolicy("lowvram", frozenset({"unet"}), True,
                 "the UNet stays on the GPU; encoders, VAE and RIFE visit it only for their stage "
                 "(and ComfyUI's other models are unloaded first)"),
)}
MEMORY_POLICIES = tuple(POLICIES)

# Stage -> (models the stage runs and moves onto the device, models that may be there during it).
# The first three stages make up "conditioning". Decode feeds RIFE chunk by chunk, so the two
# share the device while both are alive.
STAGE_MODELS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "audio_features": (frozenset({"whisper"}),) * 2,
    "reference": (frozenset({"image_encoder", "vae"}),) * 2,  # CLIP embedding and VAE encode
    "audio_tokens": (frozenset({"audio2token", "audio2bucket"}),) * 2,
    "sampling": (frozenset({"unet"}),) * 2,
    "decode": (frozenset({"vae"}), frozenset({"vae", "rife"})),
    "interpolate": (frozenset({"rife"}), frozenset({"vae", "rife"})),
}


def get_policy(name: str) -> MemoryPolicy:
    from .errors import ParameterError

    if name not in POLICIES:
        raise ParameterError(f"memory_policy must be one of {MEMORY_POLICIES}, got {name!r}")
    return POLICIES[name]


def rests_on_device(policy_name: str, model: str) -> bool:
    return model in get_policy(policy_name).resting_on_device


def expected_resident(policy_name: str, stage: str) -> tuple[set[str], set[str]]:
    """(models that must be, models that may be) on the device during `stage` under a policy."""
    resting = get_policy(policy_name).resting_on_device
    least, most = STAGE_MODELS[stage]
    return set(resting | least), set(resting | most)


def describe_policies() -> str:
    """One line per policy, for tooltips and help texts."""
    return " ".join(f"{p.name}: {p.description}." for p in POLICIES.values())
