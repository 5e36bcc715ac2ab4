"""Find every model file Sonic needs, in the official or the ComfyUI folder layout.

Nothing is read here (no torch import): the functions only look at names and sizes, so a
missing download is reported at once, as ONE error that lists every missing file, the
folders searched, the exact path each file must get and the Hugging Face repository it
comes from.

Layouts understood (`models_dir` may be any of the starting folders):

* official `checkpoints/`: `Sonic/{unet,audio2token,audio2bucket}.pth`, `RIFE/flownet.pkl`,
  `yoloface_v5m.pt`, `stable-video-diffusion-img2vid-xt/`, `whisper-tiny/`;
* ComfyUI `models/` (or `models/sonic/` itself): `models/sonic/` holds the same files flat
  (`unet.pth`, ..., `flownet.pkl` or `RIFE/flownet.pkl`, `whisper-tiny/`) and either a
  diffusers SVD folder inside `models/sonic/` or the single file `svd_xt.safetensors` /
  `svd_xt_1_1.safetensors` in `models/checkpoints/`. Configs found in an SVD folder apply even
  when the single file supplies the weights (the built-in SVD-xt configs fill the gaps).

A `.safetensors` twin written by `convert_checkpoints` is preferred over its `.pth`/`.pkl`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError

SONIC_REPO = "https://huggingface.co/LeonJoe13/Sonic"
SVD_REPO = "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt"
WHISPER_REPO = "https://huggingface.co/openai/whisper-tiny"

SVD_FOLDER = "stable-video-diffusion-img2vid-xt"
WHISPER_FOLDER = "whisper-tiny"
SVD_SINGLE_FILES = ("svd_xt.safetensors", "svd_xt_1_1.safetensors")
FACE_DETECTOR_FILE = "yoloface_v5m.pt"
# The two folder layouts: the official `checkpoints/` and ComfyUI's `models/` (with `models/sonic/`).
OFFICIAL_LAYOUT, COMFYUI_LAYOUT = LAYOUTS = ("official", "comfyui")

#: SVD-xt configs shipped with the package (used when the diffusers folder lacks them).
BUILTIN_SVD_CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "svd_xt"

# Accepted weight file names, best first (fp16 variants are accepted, never required).
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.fp16.safetensors")
_WHISPER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelFiles:
    """Where each model file is. Optional ones are None when absent (or not asked for).

    The SVD VAE and CLIP image encoder come either from a diffusers folder (`vae_weights`,
    `image_encoder_weights` set) or from a single original-layout file (`svd_checkpoint`
    set, the two weight fields None); their configs are always set.
    """

    root: Path  # the folder the search started from
    layout: str  # one of LAYOUTS: where missing files would have to go
    unet: Path  # Sonic's complete UNet (unet.pth or its .safetensors twin)
    audio2token: Path
    audio2bucket: Path
    whisper_dir: Path
    whisper_config: Path
    whisper_weights: Path  # model.safetensors (model.encoder.* keys) or pytorch_model.bin
    unet_config: Path  # diffusers UNet config (the SVD folder's, else the built-in SVD-xt one)
    scheduler_config: Path
    vae_config: Path
    image_encoder_config: Path
    whisper_preprocessor: Path | None = None
    svd_dir: Path | None = None
    vae_weights: Path | None = None
    image_encoder_weights: Path | None = None
    svd_checkpoint: Path | None = None
    face_detector: Path | None = None  # TorchScript yoloface_v5m.pt
    rife: Path | None = None  # flownet.pkl (keys carry `module.`) or its twin

    def as_dict(self) -> dict[str, str | None]:
        """Paths as strings, e.g. for a `doctor` report or JSON."""
        return {f.name: (None if (v := getattr(self, f.name)) is None else str(v))
                for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class _Missing:
    what: str
    target: Path
    source: str


def _first_file(candidates) -> Path | None:
    for path in candidates:
        if path.is_file():
            return path
    return None


def _with_twin(folder: Path, stem: str, suffix: str) -> list[Path]:
    """`stem.safetensors` (written by convert) first, then the released `stem.suffix`."""
    return [folder / f"{stem}.safetensors", folder / f"{stem}{suffix}"]


def _search_roots(models_dir: Path) -> list[Path]:
    """Folders that may hold the Sonic files: `models_dir` and a `sonic/` folder inside it."""
    roots = [models_dir]
    for child in ("sonic", "Sonic"):
        sub = models_dir / child
        if sub.is_dir() and not any(sub.samefile(r) for r in roots):  # one folder on case-insensitive disks
            roots.append(sub)
    return roots


def _layout_and_target(models_dir: Path) -> tuple[str, Path, Path]:
    """(layout, folder where missing Sonic files should go, ComfyUI checkpoints folder)."""
    if models_dir.name.lower() == "sonic" and not (models_dir / "Sonic").is_dir():
        return COMFYUI_LAYOUT, models_dir, models_dir.parent / "checkpoints"
    comfy_markers = ("checkpoints", "diffusion_models", "clip_vision", "vae", "loras", "sonic")
    official_markers = ("Sonic", "RIFE", SVD_FOLDER)
    if not any((models_dir / m).is_dir() for m in official_markers) and \
            any((models_dir / m).is_dir() for m in comfy_markers):
        return COMFYUI_LAYOUT, models_dir / "sonic", models_dir / "checkpoints"
    return OFFICIAL_LAYOUT, models_dir, models_dir / "checkpoints"


def _sonic_file(roots: list[Path], stem: str, suffix: str, subfolder: str) -> Path | None:
    candidates: list[Path] = []
    for root in roots:
        candidates += _with_twin(root / subfolder, stem, suffix)
        candidates += _with_twin(root, stem, suffix)
    return _first_file(candidates)


def _find_dir(roots: list[Path], name: str) -> Path | None:
    for root in roots:
        if (root / name).is_dir():
            return root / name
    return None


def find_model_files(models_dir, *, need_face_detector: bool = True, need_interpolation: bool = True,
                     svd_checkpoint=None) -> ModelFiles:
    """Locate every file; raise ONE `WeightsError` listing all that are missing.

    `models_dir`: the official `checkpoints/` folder, a ComfyUI `models/` folder, or
    `models/sonic/`. `svd_checkpoint`: an explicit single-file SVD (`svd_xt.safetensors`)
    that replaces the diffusers VAE/CLIP folders. The face detector and RIFE are optional
    when `need_face_detector` / `need_interpolation` is False (then None if absent).
    """
    if models_dir is None or str(models_dir).strip() == "":
        raise WeightsError("no weights folder given: pass the official checkpoints/ folder or ComfyUI's models/ folder")
    models_dir = Path(models_dir).expanduser()
    if models_dir.exists() and not models_dir.is_dir():
        raise WeightsError(
            f"weights folder {models_dir} is a file, not a folder. Pass the folder holding Sonic/, whisper-tiny/ and "
            f"{SVD_FOLDER}/ (official layout) or ComfyUI's models/ folder (with models/sonic/).")
    # A folder that does not exist yet is searched like an empty one, so the error below lists
    # every file to download and exactly where it goes.
    layout, target, checkpoints_dir = _layout_and_target(models_dir)
    roots = _search_roots(models_dir)
    if target not in roots:
        roots.append(target)
    missing: list[_Missing] = []
    sonic_sub = "Sonic" if layout == OFFICIAL_LAYOUT else ""

    def need(path: Path | None, what: str, target_path: Path, source: str) -> Path | None:
        if path is None:
            missing.append(_Missing(what, target_path, source))
        return path

    found: dict[str, Path | None] = {}
    for stem, what in (("unet", "Sonic UNet"), ("audio2token", "Sonic audio-to-token adapter"),
                       ("audio2bucket", "Sonic audio-to-bucket adapter")):
        found[stem] = need(_sonic_file(roots, stem, ".pth", "Sonic"), what, target / sonic_sub / f"{stem}.pth",
                           f"{SONIC_REPO} (file Sonic/{stem}.pth)")

    rife = _sonic_file(roots, "flownet", ".pkl", "RIFE")
    if need_interpolation:
        need(rife, "RIFE frame interpolation (or turn interpolation off)", target / "RIFE" / "flownet.pkl",
             f"{SONIC_REPO} (file RIFE/flownet.pkl)")
    face = _first_file(root / FACE_DETECTOR_FILE for root in roots)
    if need_face_detector:
        need(face, "YOLOv5-face detector (or use the OpenCV fallback detector)", target / FACE_DETECTOR_FILE,
             f"{SONIC_REPO} (file {FACE_DETECTOR_FILE})")

    whisper_dir = _find_dir(roots, WHISPER_FOLDER) or target / WHISPER_FOLDER
    whisper_config = need(_first_file([whisper_dir / "config.json"]), "Whisper-tiny config",
                          whisper_dir / "config.json", f"{WHISPER_REPO} (config.json)")
    whisper_weights = need(_first_file(whisper_dir / n for n in _WHISPER_WEIGHTS), "Whisper-tiny weights",
                           whisper_dir / "model.safetensors", f"{WHISPER_REPO} (model.safetensors)")
    whisper_pre = _first_file([whisper_dir / "preprocessor_config.json"])

    svd = _find_svd(roots, target, checkpoints_dir, svd_checkpoint, need)
    if missing:
        raise WeightsError(_missing_message(missing, roots, checkpoints_dir, layout))
    return ModelFiles(
        root=models_dir, layout=layout, unet=found["unet"], audio2token=found["audio2token"],
        audio2bucket=found["audio2bucket"], whisper_dir=whisper_dir, whisper_config=whisper_config,
        whisper_weights=whisper_weights, whisper_preprocessor=whisper_pre, face_detector=face, rife=rife, **svd)


def _find_svd(roots, target, checkpoints_dir, svd_checkpoint, need) -> dict:
    """The SVD parts: explicit single file > diffusers folder > single file in checkpoints/."""
    svd_dir = _find_dir(roots, SVD_FOLDER)
    builtin = BUILTIN_SVD_CONFIGS

    def config(folder: Path | None, sub: str, name: str) -> Path:
        own = folder / sub / name if folder is not None else None
        return own if own is not None and own.is_file() else builtin / sub / name

    if svd_checkpoint is not None and str(svd_checkpoint).strip():
        single = Path(svd_checkpoint).expanduser()
        if not single.is_file():
            need(None, "SVD-xt single-file checkpoint (svd_checkpoint=)", single,
                 f"{SVD_REPO} (svd_xt.safetensors), or drop svd_checkpoint= to use the diffusers folder")
            single = None
        return _svd_fields(None, None, None, single, builtin, config, config_dir=svd_dir)

    vae_w = image_w = None
    if svd_dir is not None:
        vae_w = _first_file(svd_dir / "vae" / n for n in _DIFFUSERS_WEIGHTS)
        image_w = _first_file(svd_dir / "image_encoder" / n for n in _TRANSFORMERS_WEIGHTS)
        folder_complete = (vae_w is not None and image_w is not None and (svd_dir / "vae/config.json").is_file()
                           and (svd_dir / "image_encoder/config.json").is_file())
        if folder_complete:
            return _svd_fields(svd_dir, vae_w, image_w, None, builtin, config)
    single = _first_file(folder / name for folder in (checkpoints_dir, *roots) for name in SVD_SINGLE_FILES)
    if single is not None:
        return _svd_fields(None, None, None, single, builtin, config, config_dir=svd_dir)

    # Neither: report the diffusers-folder files (the single file is the alternative).
    folder = svd_dir or target / SVD_FOLDER
    alt = f"; or instead put svd_xt.safetensors in {checkpoints_dir}"
    for sub, name, weights in (("vae", "config.json", None), ("vae", _DIFFUSERS_WEIGHTS[0], _DIFFUSERS_WEIGHTS),
                               ("image_encoder", "config.json", None),
                               ("image_encoder", _TRANSFORMERS_WEIGHTS[0], _TRANSFORMERS_WEIGHTS)):
        names = weights or (name,)
        if _first_file(folder / sub / n for n in names) is None:
            need(None, f"SVD-xt {sub} {'weights' if weights else 'config'}", folder / sub / name,
                 f"{SVD_REPO} (file {sub}/{name}; accept the licence on Hugging Face first{alt})")
    return _svd_fields(None, None, None, None, builtin, config)


def _svd_fields(svd_dir, vae_w, image_w, single, builtin, config, config_dir=None) -> dict:
    """`config_dir`: an SVD folder whose configs apply although its weights are not used (a
    single file supplies them); each config it lacks is the built-in SVD-xt one."""
    config_dir = config_dir or svd_dir
    return dict(svd_dir=svd_dir, vae_weights=vae_w, image_encoder_weights=image_w, svd_checkpoint=single,
                unet_config=config(config_dir, "unet", "config.json"),
                scheduler_config=config(config_dir, "scheduler", "scheduler_config.json"),
                vae_config=config(config_dir, "vae", "config.json"),
                image_encoder_config=config(config_dir, "image_encoder", "config.json"))


def _missing_message(missing: list[_Missing], roots: list[Path], checkpoints_dir: Path, layout: str) -> str:
    searched = sorted({str(r) for r in roots} | {str(checkpoints_dir)})
    lines = [f"{len(missing)} model file(s) missing ({layout} layout). Searched: {', '.join(searched)}."]
    absent = [r for r in roots if not r.exists()]
    if absent:
        lines.append(f"  (the folder {absent[0]} does not exist yet: create it and put the files below in it)")
    for m in missing:
        lines.append(f"  - {m.what}: put it at {m.target}  <- {m.source}")
    lines.append("Download with e.g. `huggingface-cli download LeonJoe13/Sonic --local-dir DIR` (plus the SVD-xt "
                 "and whisper-tiny repositories); this program never downloads anything itself.")
    return "\n".join(lines)
