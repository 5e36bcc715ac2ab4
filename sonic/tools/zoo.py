"""A complete tiny model folder built from the golden fixtures (random weights, CPU-fast).

`write_tiny_zoo(dest)` lays out every file the pipeline loads, in the official or the ComfyUI
layout, with the tiny random-weight models of `tests/fixtures/golden/` (UNet, VAE, Whisper,
audio adapters, RIFE) plus a seeded tiny CLIP image encoder. The whole pipeline then runs on
CPU in seconds, in tests and for reviewers:

    python -m sonic make-tiny-zoo /tmp/zoo && python -m sonic generate --models /tmp/zoo ...

The videos are noise (the weights are random); only the plumbing is real. The golden fixtures
live in the repository's tests/ folder, which a pip-installed package lacks: pass
`fixtures_dir` or run from a checkout.

The face detector is omitted (the pipeline falls back to OpenCV) unless `with_face_detector`
is set: then `yoloface_v5m.pt` is a tiny random-weight YOLOv5-face (the architecture of
`sonic.models.yoloface`) traced into a TorchScript archive with the released call signature
(`pred = model(img, grids)`, SPEC 2.1). Sonic reads only its tensors; its boxes are random.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from ..errors import ParameterError, WeightsError
from ..weights.locate import BUILTIN_SVD_CONFIGS, LAYOUTS, OFFICIAL_LAYOUT, SVD_FOLDER, SVD_SINGLE_FILES, WHISPER_FOLDER

FILE_FORMATS = ("pickle", "safetensors")
CLIP_SEED = 20250601
# Tiny CLIP vision tower; projection_dim equals the golden models' CLIP width (12).
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 patch_size=14, image_size=224, projection_dim=12, num_channels=3)


def default_fixtures_dir() -> Path:
    """The checkout's tests/fixtures/golden (absent in an installed package)."""
    return Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "golden"


def write_tiny_zoo(dest, *, layout: str = OFFICIAL_LAYOUT, fixtures_dir=None, file_format: str = "pickle",
                   with_face_detector: bool = False, svd_single_file: bool = False) -> Path:
    """Write the tiny zoo under `dest`; returns the folder to pass as `models_dir`.

    layout "official": `dest/{Sonic/, RIFE/flownet.pkl, whisper-tiny/, stable-video-diffusion-img2vid-xt/}`,
    returns `dest`. layout "comfyui": `dest/models/sonic/{unet.pth, ..., flownet.pkl, whisper-tiny/,
    stable-video-diffusion-img2vid-xt/}`, returns `dest/models`. file_format "pickle" writes the
    released `.pth`/`.pkl` names (torch.save), "safetensors" writes `.safetensors` files instead.

    svd_single_file: the SVD VAE and CLIP go into ONE original-layout checkpoint,
    `<returned folder>/checkpoints/svd_xt.safetensors` (ComfyUI's models/checkpoints), with the
    same weights as the diffusers folder would hold. The SVD folder then keeps only
    `unet/config.json` and `image_encoder/config.json`: the tiny UNet's and CLIP's attention-head
    counts, which no tensor shape records (real users need no such folder: the built-in SVD-xt
    configs apply). The VAE config is read from the file's shapes.
    """
    if layout not in LAYOUTS:
        raise ParameterError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if file_format not in FILE_FORMATS:
        raise ParameterError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    golden = Path(fixtures_dir).expanduser() if fixtures_dir is not None else default_fixtures_dir()
    if not (golden / "unet_forward" / "weights.safetensors.index.json").is_file():
        raise WeightsError(
            f"golden fixtures not found at {golden}: the tiny zoo is built from tests/fixtures/golden of a source "
            f"checkout (a pip-installed package does not ship them); pass fixtures_dir=.../tests/fixtures/golden")
    dest = Path(dest).expanduser()
    if layout == OFFICIAL_LAYOUT:
        models_dir, sonic_dir, rife_dir = dest, dest / "Sonic", dest / "RIFE"
        root = dest
    else:
        models_dir = dest / "models"
        root = sonic_dir = rife_dir = models_dir / "sonic"
    for folder in (sonic_dir, rife_dir):
        folder.mkdir(parents=True, exist_ok=True)

    from ..weights.reading import read_state_dict

    def golden_weights(*parts: str) -> dict[str, torch.Tensor]:
        return read_state_dict(golden.joinpath(*parts), what=f"golden {'/'.join(parts)}")

    _save(_merged_unet(golden), sonic_dir / "unet", ".pth", file_format)
    _save(golden_weights("audio2token", "weights.safetensors"), sonic_dir / "audio2token", ".pth", file_format)
    _save(golden_weights("audio2bucket", "weights.safetensors"), sonic_dir / "audio2bucket", ".pth", file_format)
    # As released: every key carries `module.`.
    _save(golden_weights("rife", "weights.safetensors"), rife_dir / "flownet", ".pkl", file_format)
    _write_whisper(root / WHISPER_FOLDER, golden)
    if svd_single_file:
        write_tiny_svd_single_file(models_dir / "checkpoints" / SVD_SINGLE_FILES[0], fixtures_dir=golden)
        _write_svd_configs_only(root / SVD_FOLDER, golden)
    else:
        _write_svd(root / SVD_FOLDER, golden)
    if with_face_detector:
        write_tiny_face_detector(root / "yoloface_v5m.pt")
    (root / "TINY_RANDOM_WEIGHTS.txt").write_text(
        "Tiny random-weight models built from tests/fixtures/golden by sonic.tools.zoo.write_tiny_zoo.\n"
        "They exercise the code paths only: generated videos are noise.\n")
    return models_dir


# ------------------------------------------------------------------------------ pieces
def _owned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Fresh contiguous storage per tensor (the fixture tensors are views into one mmap).
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _save(state: dict[str, torch.Tensor], stem: Path, pickle_suffix: str, file_format: str) -> Path:
    if file_format == "pickle":
        path = stem.with_name(stem.name + pickle_suffix)
        torch.save(_owned(state), path)
    else:
        from safetensors.torch import save_file

        path = stem.with_name(stem.name + ".safetensors")
        save_file(_owned(state), str(path), metadata={"format": "pt"})
    return path


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


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_whisper(folder: Path, golden: Path) -> None:
    """whisper-tiny/ like the real download: WhisperForConditionalGeneration keys (`model.encoder.*`)."""
    from safetensors.torch import save_file

    from ..weights.reading import read_state_dict

    config = json.loads((golden / "audio_features" / "config.json").read_text())
    _write_json(folder / "config.json", {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
                                         **config["whisper_config"]})
    extractor = config["feature_extractor"]["kwargs"]
    _write_json(folder / "preprocessor_config.json", {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "n_samples": extractor["chunk_length"] * extractor["sampling_rate"],
        "nb_max_frames": extractor["chunk_length"] * extractor["sampling_rate"] // extractor["hop_length"],
        "padding_side": "right", **extractor})
    weights = read_state_dict(golden / "audio_features" / "whisper_weights.safetensors", what="golden Whisper")
    renamed = {f"model.{k}": v for k, v in weights.items() if k.startswith(("encoder.", "decoder."))}
    if len(renamed) != len(weights):
        raise WeightsError(f"golden Whisper weights hold keys outside encoder./decoder.: "
                           f"{sorted(set(weights) - {k[6:] for k in renamed})[:5]}")
    save_file(_owned(renamed), str(folder / "model.safetensors"), metadata={"format": "pt"})


def _write_svd(folder: Path, golden: Path) -> None:
    """The diffusers SVD folder: tiny VAE, tiny UNet config (no UNet weights), real scheduler, tiny CLIP."""
    from safetensors.torch import save_file

    from ..weights.reading import read_state_dict

    vae_config = json.loads((golden / "vae" / "config.json").read_text())["config"]
    _write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKLTemporalDecoder", **vae_config})
    vae = read_state_dict(golden / "vae" / "weights.safetensors", what="golden VAE")
    save_file(_owned(vae), str(folder / "vae" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    unet_config = json.loads((golden / "unet_forward" / "config.json").read_text())["unet_config"]
    _write_json(folder / "unet" / "config.json", {"_class_name": "UNetSpatioTemporalConditionModel", **unet_config})
    for name in ("scheduler/scheduler_config.json", "model_index.json", "feature_extractor/preprocessor_config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUILTIN_SVD_CONFIGS / name, folder / name)
    write_tiny_clip(folder / "image_encoder")


def _write_svd_configs_only(folder: Path, golden: Path) -> None:
    """What a single-file zoo keeps of the SVD folder: the configs no tensor shape can give."""
    unet_config = json.loads((golden / "unet_forward" / "config.json").read_text())["unet_config"]
    _write_json(folder / "unet" / "config.json", {"_class_name": "UNetSpatioTemporalConditionModel", **unet_config})
    config, _ = _tiny_clip()
    (folder / "image_encoder").mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(folder / "image_encoder" / "config.json"))


def write_tiny_svd_single_file(path, *, fixtures_dir=None, seed: int = CLIP_SEED) -> Path:
    """The tiny zoo's VAE (golden) and CLIP (seeded) as one original-layout `svd_xt.safetensors`.

    The keys follow Stability's single file (`first_stage_model.*`,
    `conditioner.embedders.3.encoder.*`, `conditioner.embedders.0.open_clip.model.visual.*`);
    loading it gives bit-exactly the weights of the diffusers-folder zoo.
    """
    from safetensors.torch import save_file

    from ..weights.svd_single_file_export import to_single_file_layout
    from ..weights.reading import read_state_dict

    golden = Path(fixtures_dir).expanduser() if fixtures_dir is not None else default_fixtures_dir()
    vae = read_state_dict(golden / "vae" / "weights.safetensors", what="golden VAE")
    _, clip = _tiny_clip(seed)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_owned(to_single_file_layout(vae, clip.state_dict())), str(path), metadata={"format": "pt"})
    return path


def _tiny_clip(seed: int = CLIP_SEED):
    """(config, model) of the seeded tiny `CLIPVisionModelWithProjection`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**TINY_CLIP)
    config.architectures = ["CLIPVisionModelWithProjection"]
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config).eval()
    return config, model


def write_tiny_clip(folder, *, seed: int = CLIP_SEED) -> Path:
    """A seeded tiny `CLIPVisionModelWithProjection` saved as config.json + model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config, model = _tiny_clip(seed)
    # Written directly (not save_pretrained) to keep progress bars out of test logs.
    config.to_json_file(str(folder / "config.json"))
    save_file(_owned(model.state_dict()), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


TINY_YOLO_SEED = 20250602


def write_tiny_face_detector(path, *, seed: int = TINY_YOLO_SEED) -> Path:
    """A tiny seeded random YOLOv5-face (our architecture, stem width 4) saved as a TorchScript
    archive traced with the release call `model(img, grids)`, the same kind of file as the
    release's `yoloface_v5m.pt`. Sonic reads only its tensors; its boxes are random."""
    from .models.yoloface import STRIDES, cell_grid, random_yoloface

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = random_yoloface(seed)
    h, w = 64, 64
    grids = [cell_grid(h // s, w // s) for s in STRIDES]
    with warnings.catch_warnings():  # new torch marks TorchScript deprecated; the release file is TorchScript
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.zeros(1, 3, h, w), grids), check_trace=False)
        torch.jit.save(traced, str(path))
    return path
