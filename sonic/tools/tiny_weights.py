"""The weights of the tiny zoo, as state dicts in the released files' key layouts.

Two sources give the same keys and shapes: `seeded_weights()` builds the tiny networks of
`tiny_configs` and fills them from fixed seeds (needs nothing but the package: this is what
`python -m sonic make-tiny-zoo` uses), and `golden_weights(folder)` reads the tiny random
weights recorded with the golden fixtures in a source checkout's tests/fixtures/golden (the
tests use them so that their outputs can be compared with the official code's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import WeightsError
from . import tiny_configs

ROLES = ("unet", "audio2token", "audio2bucket", "rife", "whisper", "vae")
WEIGHTS_SEED = 20250603  # first of one seed per network, in the order of ROLES


def seeded_weights(seed: int = WEIGHTS_SEED) -> dict[str, dict[str, torch.Tensor]]:
    """Each role's state dict, random from `seed` (N(0, 1/fan_in) matrices, see `materialize`).

    Keys as in the released files: `unet.pth`, `audio2token.pth`, `audio2bucket.pth`,
    `flownet.pkl` (every key under `module.`), whisper-tiny's `model.safetensors` (`model.*`,
    encoder and decoder) and the SVD VAE's diffusers file.
    """
    from transformers import WhisperConfig, WhisperModel

    from ..models.audio_adapters import AudioToBucket, AudioToTokens
    from ..models.image_models import build_vae
    from ..models.rife import IFNet
    from ..models.unet import build_sonic_unet
    from ..weights.loading import parameters_on_meta
    from .random_models import materialize

    def unet():
        with torch.device("meta"):  # the SVD UNet has no buffers: build all of it on meta
            return build_sonic_unet(tiny_configs.unet_config())

    def meta_parameters(build):
        def built():
            with parameters_on_meta():  # buffers keep their values
                return build()
        return built

    def whisper():
        config = WhisperConfig(**tiny_configs.whisper_config())
        return WhisperModel(config)

    builders = {
        "unet": unet,
        "audio2token": meta_parameters(lambda: AudioToTokens(**tiny_configs.audio2token_kwargs())),
        "audio2bucket": meta_parameters(lambda: AudioToBucket(**tiny_configs.audio2bucket_kwargs())),
        "rife": meta_parameters(lambda: IFNet(*tiny_configs.rife_arguments())),
        "whisper": meta_parameters(whisper),
        "vae": meta_parameters(lambda: build_vae(tiny_configs.vae_config())),
    }
    prefixes = {"rife": "module.", "whisper": "model."}  # as released
    weights = {}
    for offset, role in enumerate(ROLES):
        module = materialize(builders[role](), "cpu", seed=seed + offset)
        prefix = prefixes.get(role, "")
        weights[role] = {prefix + key: value for key, value in module.state_dict().items()}
    return weights


def golden_weights(golden) -> dict[str, dict[str, torch.Tensor]]:
    """Each role's state dict from the golden fixtures folder `golden`, keys as in `seeded_weights`."""
    from ..weights.reading import read_state_dict

    golden = Path(golden).expanduser()
    if not (golden / "unet_forward" / "weights.safetensors.index.json").is_file():
        raise WeightsError(
            f"golden fixtures not found at {golden}: pass the tests/fixtures/golden folder of a source checkout, "
            f"or no fixtures folder at all (seeded random weights)")

    def read(*parts: str) -> dict[str, torch.Tensor]:
        return read_state_dict(golden.joinpath(*parts), what=f"golden {'/'.join(parts)}")

    whisper = read("audio_features", "whisper_weights.safetensors")
    renamed = {f"model.{k}": v for k, v in whisper.items() if k.startswith(("encoder.", "decoder."))}
    if len(renamed) != len(whisper):
        raise WeightsError(f"golden Whisper weights hold keys outside encoder./decoder.: "
                           f"{sorted(set(whisper) - {k[6:] for k in renamed})[:5]}")
    return {"unet": _merged_unet(golden), "audio2token": read("audio2token", "weights.safetensors"),
            "audio2bucket": read("audio2bucket", "weights.safetensors"),
            "rife": read("rife", "weights.safetensors"),  # already under `module.`, as released
            "whisper": renamed, "vae": read("vae", "weights.safetensors")}


def _merged_unet(golden: Path) -> dict[str, torch.Tensor]:
    """The golden UNet state dict, merged from its HF-style shards (checked against the index)."""
    from ..weights.reading import read_state_dict

    folder = golden / "unet_forward"
    weight_map = json.loads((folder / "weights.safetensors.index.json").read_text())["weight_map"]
    merged: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        merged.update(read_state_dict(folder / shard, what=f"golden UNet shard {shard}"))
    if set(merged) != set(weight_map):
        raise WeightsError(f"golden UNet shards in {folder} do not match their index "
                           f"({len(merged)} keys read, {len(weight_map)} indexed); restore the fixtures")
    return merged
