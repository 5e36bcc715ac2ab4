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

HUB = "https://huggingface.co"
SVD_FOLDER = "stable-video-diffusion-img2vid-xt"
WHISPER_FOLDER = "whisper-tiny"
SVD_SINGLE_FILES = ("svd_xt.safetensors", "svd_xt_1_1.safetensors")
FACE_DETECTOR_FILE = "yoloface_v5m.pt"
# The two folder layouts: the official `checkpoints/` and ComfyUI's `models/` (with `models/sonic/`).
OFFICIAL_LAYOUT, COMFYUI_LAYOUT = LAYOUTS = ("official", "comfyui")

#: SVD-xt configs shipped with the package (used when the diffusers folder lacks them).
BUILTIN_SVD_CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "svd_xt"


@dataclass(frozen=True)
class Source:
    """A Hugging Face repository that Sonic takes files from."""

    name: str  # the `download --only` group
    repo_id: str
    folder: str  # where its files go inside the Sonic weights folder ("" = the folder itself)
    licence: str
    gated: bool = False  # the hub asks users to accept the licence before any download
    comfyui_strip: str = ""  # repository sub-folder dropped in the ComfyUI layout (files lie flat there)

    @property
    def url(self) -> str:
        return f"{HUB}/{self.repo_id}"

    def local_path(self, name: str, layout: str) -> str:
        """Where the repository file `name` goes, relative to the Sonic weights folder."""
        if layout == COMFYUI_LAYOUT and self.comfyui_strip and name.startswith(self.comfyui_strip):
            name = name[len(self.comfyui_strip):]
        return f"{self.folder}/{name}" if self.folder else name


SONIC_SOURCE = Source("sonic", "LeonJoe13/Sonic", "", "CC BY-NC-SA 4.0 (non-commercial use only)",
                      comfyui_strip="Sonic/")
SVD_SOURCE = Source("svd", "stabilityai/stable-video-diffusion-img2vid-xt", SVD_FOLDER,
                    "Stability AI Community License (accept it on the model page)", gated=True)
WHISPER_SOURCE = Source("whisper", "openai/whisper-tiny", WHISPER_FOLDER, "Apache-2.0 (per its model card)")
SOURCES = {s.name: s for s in (SONIC_SOURCE, SVD_SOURCE, WHISPER_SOURCE)}
SONIC_REPO, SVD_REPO, WHISPER_REPO = SONIC_SOURCE.url, SVD_SOURCE.url, WHISPER_SOURCE.url


@dataclass(frozen=True)
class RepoFile:
    """One file Sonic reads, as its repository names it. `names`: the accepted alternatives,
    best first (what the official code loads first: SVD's fp16 variants); the downloader
    fetches the first one the repository has. Optional files are used when present."""

    key: str
    source: Source
    names: tuple[str, ...]
    what: str
    optional: bool = False


#: Every file Sonic reads from the three repositories (and nothing else: never SVD's UNet
#: weights, which Sonic's unet.pth replaces). `find_model_files` and `sonic download` use it.
RELEASE_FILES = (
    RepoFile("unet", SONIC_SOURCE, ("Sonic/unet.pth",), "Sonic UNet"),
    RepoFile("audio2token", SONIC_SOURCE, ("Sonic/audio2token.pth",), "Sonic audio-to-token adapter"),
    RepoFile("audio2bucket", SONIC_SOURCE, ("Sonic/audio2bucket.pth",), "Sonic audio-to-bucket adapter"),
    RepoFile("rife", SONIC_SOURCE, ("RIFE/flownet.pkl",), "RIFE frame interpolation (or turn interpolation off)",
             optional=True),
    RepoFile("face_detector", SONIC_SOURCE, (FACE_DETECTOR_FILE,),
             "YOLOv5-face detector (or use the OpenCV fallback detector)", optional=True),
    RepoFile("whisper_config", WHISPER_SOURCE, ("config.json",), "Whisper-tiny config"),
    RepoFile("whisper_weights", WHISPER_SOURCE, ("model.safetensors", "pytorch_model.bin"), "Whisper-tiny weights"),
    RepoFile("whisper_preprocessor", WHISPER_SOURCE, ("preprocessor_config.json",), "Whisper-tiny preprocessor config",
             optional=True),
    RepoFile("vae_config", SVD_SOURCE, ("vae/config.json",), "SVD-xt vae config"),
    RepoFile("vae_weights", SVD_SOURCE, ("vae/diffusion_pytorch_model.fp16.safetensors",
                                         "vae/diffusion_pytorch_model.safetensors"), "SVD-xt vae weights"),
    RepoFile("image_encoder_config", SVD_SOURCE, ("image_encoder/config.json",), "SVD-xt image_encoder config"),
    RepoFile("image_encoder_weights", SVD_SOURCE, ("image_encoder/model.fp16.safetensors",
                                                   "image_encoder/model.safetensors"), "SVD-xt image_encoder weights"),
    RepoFile("unet_config", SVD_SOURCE, ("unet/config.json",), "SVD-xt UNet config (no weights)", optional=True),
    RepoFile("scheduler_config", SVD_SOURCE, ("scheduler/scheduler_config.json",), "SVD-xt scheduler config",
             optional=True),
)
FILES = {f.key: f for f in RELEASE_FILES}


def _basenames(key: str) -> tuple[str, ...]:
    return tuple(n.rsplit("/", 1)[-1] for n in FILES[key].names)


# Accepted local weight file names, best first.
_DIFFUSERS_WEIGHTS = _basenames("vae_weights")
_TRANSFORMERS_WEIGHTS = _basenames("image_encoder_weights")
_WHISPER_WEIGHTS = _basenames("whisper_weights")


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

    def need(path: Path | None, key: str, target_path: Path | None = None, source: str | None = None,
             what: str | None = None) -> Path | None:
        if path is None:
            entry = FILES[key]
            others = [n.rsplit("/", 1)[-1] for n in entry.names[1:]]
            missing.append(_Missing(what or entry.what + (f" (or {', '.join(others)})" if others else ""),
                                    target_path or target / entry.source.local_path(entry.names[0], layout),
                                    source or f"{entry.source.url} (file {entry.names[0]})"))
        return path

    found: dict[str, Path | None] = {}
    for key in ("unet", "audio2token", "audio2bucket", "rife"):
        subfolder, name = FILES[key].names[0].split("/")
        stem, suffix = name.rsplit(".", 1)
        found[key] = _sonic_file(roots, stem, f".{suffix}", subfolder)
        if key != "rife" or need_interpolation:
            need(found[key], key)
    face = _first_file(root / FACE_DETECTOR_FILE for root in roots)
    if need_face_detector:
        need(face, "face_detector")

    whisper_dir = _find_dir(roots, WHISPER_FOLDER) or target / WHISPER_FOLDER
    whisper_config = need(_first_file([whisper_dir / "config.json"]), "whisper_config", whisper_dir / "config.json")
    whisper_weights = need(_first_file(whisper_dir / n for n in _WHISPER_WEIGHTS), "whisper_weights",
                           whisper_dir / _WHISPER_WEIGHTS[0])
    whisper_pre = _first_file([whisper_dir / "preprocessor_config.json"])

    svd = _find_svd(roots, target, checkpoints_dir, svd_checkpoint, need)
    if missing:
        raise WeightsError(_missing_message(missing, roots, checkpoints_dir, layout, models_dir))
    return ModelFiles(
        root=models_dir, layout=layout, unet=found["unet"], audio2token=found["audio2token"],
        audio2bucket=found["audio2bucket"], whisper_dir=whisper_dir, whisper_config=whisper_config,
        whisper_weights=whisper_weights, whisper_preprocessor=whisper_pre, face_detector=face, rife=found["rife"],
        **svd)


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
            need(None, "vae_weights", single, f"{SVD_REPO} (svd_xt.safetensors), or drop svd_checkpoint= to use the "
                 f"diffusers folder", what="SVD-xt single-file checkpoint (svd_checkpoint=)")
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
    for key in ("vae_config", "vae_weights", "image_encoder_config", "image_encoder_weights"):
        names = FILES[key].names
        if _first_file(folder / n for n in names) is None:
            need(None, key, folder / names[0],
                 f"{SVD_REPO} (file {names[0]}; accept the licence on Hugging Face first{alt})")
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


def default_models_dir() -> Path:
    """The weights folder used when none is given: `$SONIC_MODELS`, else a per-user cache
    folder (`~/.cache/sonic/models` on Linux, `~/Library/Caches/sonic/models` on macOS,
    `%LOCALAPPDATA%\\sonic\\models` on Windows)."""
    import os
    import sys

    if os.environ.get("SONIC_MODELS", "").strip():
        return Path(os.environ["SONIC_MODELS"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sonic" / "models"


def detect_layout(models_dir) -> str:
    """"official" or "comfyui": what the folder looks like ("official" for a new, empty one)."""
    return _layout_and_target(Path(models_dir).expanduser())[0]


def sonic_folder(models_dir, layout: str) -> Path:
    """Where the Sonic files go: `models_dir` itself (official, or ComfyUI's models/sonic), else models/sonic."""
    models_dir = Path(models_dir).expanduser()
    if layout == OFFICIAL_LAYOUT or models_dir.name.lower() == "sonic":
        return models_dir
    return models_dir / "sonic"


def download_command(models_dir, layout: str) -> str:
    """The command that fetches every missing file into `models_dir`."""
    import shlex

    if Path(models_dir).expanduser() == default_models_dir() and layout == OFFICIAL_LAYOUT:
        return "python -m sonic download"
    return f"python -m sonic download --models {shlex.quote(str(models_dir))} --layout {layout}"


def _missing_message(missing: list[_Missing], roots: list[Path], checkpoints_dir: Path, layout: str,
                     models_dir: Path) -> str:
    searched = sorted({str(r) for r in roots} | {str(checkpoints_dir)})
    lines = [f"{len(missing)} model file(s) missing ({layout} layout). Searched: {', '.join(searched)}."]
    absent = [r for r in roots if not r.exists()]
    if absent:
        lines.append(f"  (the folder {absent[0]} does not exist yet: create it and put the files below in it)")
    for m in missing:
        lines.append(f"  - {m.what}: put it at {m.target}  <- {m.source}")
    lines.append(f"Download them with `{download_command(models_dir, layout)}` (only the files Sonic needs).")
    return "\n".join(lines)
