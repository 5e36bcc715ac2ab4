"""Fetch exactly the files Sonic reads from Hugging Face, or from a mirror (`HF_ENDPOINT`).

The file list is `locate.RELEASE_FILES` (the same table `find_model_files` searches with): the
Sonic repository's files, whisper-tiny, and of SVD-xt only `vae/`, `image_encoder/` and the
UNet/scheduler configs, never its UNet weights (Sonic's `unet.pth` replaces them).

Each file is fetched with `huggingface_hub` (its endpoint, token, headers and errors) into a
staging folder (`.sonic-download/` inside the weights folder: partial files stay there, so an
interrupted run resumes where it stopped, with an HTTP Range request) and then moved to its
place in the chosen layout. A file already in place, by any name the loader
accepts, is never requested again. Problems that the user can fix (a gated repository, no
network, no disk space, an unknown --only group) stop with one `WeightsError` line before the
large downloads start.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ParameterError, WeightsError
from .locate import (LAYOUTS, RELEASE_FILES, SOURCES, SVD_SINGLE_FILES, RepoFile, Source, default_models_dir,
                     detect_layout, sonic_folder)

STAGING = ".sonic-download"
_SPACE_MARGIN = 256 * 1024 ** 2  # leave some room besides the files themselves


@dataclass(frozen=True)
class Planned:
    """One file to fetch: its repository name, where it goes, its size (None: not listed)."""

    entry: RepoFile
    name: str
    path: Path
    size: int | None


def parse_only(text: str | None) -> tuple[Source, ...]:
    """`--only sonic,whisper` -> those sources (all of them for None/empty)."""
    if not text or not text.strip():
        return tuple(SOURCES.values())
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ParameterError(f"--only takes a comma-separated list of {', '.join(SOURCES)}; unknown: {', '.join(unknown)}")
    return tuple(SOURCES[n] for n in SOURCES if n in names)


def present(folder: Path, entry: RepoFile, layout: str) -> Path | None:
    """The local file that already stands for `entry` (any accepted name, or a converted
    `.safetensors` twin of a pickle), else None."""
    for name in entry.names:
        path = folder / entry.source.local_path(name, layout)
        for candidate in (path, path.with_suffix(".safetensors")):
            if candidate.is_file():
                return candidate
    return None


def download_weights(models_dir=None, *, layout: str | None = None, only: str | None = None, log=print) -> Path:
    """Fetch every missing file into `models_dir` (default: `default_models_dir()`); returns
    the folder to pass as `--models`. `layout`: "official" or "comfyui" (default: what the
    folder already looks like, "official" for a new one)."""
    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    if models_dir.exists() and not models_dir.is_dir():
        raise WeightsError(f"--models {models_dir} is a file; give a folder")
    layout = layout or detect_layout(models_dir)
    if layout not in LAYOUTS:
        raise ParameterError(f"--layout must be official or comfyui, got {layout!r}")
    sources = parse_only(only)
    folder = sonic_folder(models_dir, layout)
    hub = _hub()
    if hub.constants.HF_HUB_OFFLINE:
        raise WeightsError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, which turns every download off: unset it "
                           "and run the same command again")
    log(f"weights folder: {folder} ({layout} layout); hub: {hub.constants.ENDPOINT}")
    if only is None and SOURCES["svd"] in sources:
        single = _svd_single_file(models_dir, folder)
        if single is not None:
            log(f"SVD-xt: using {single} (the single file replaces the diffusers folder); nothing to fetch")
            sources = tuple(s for s in sources if s.name != "svd")

    # Everything cheap first (listings, the gated check, disk space), then the large files.
    plan: list[Planned] = []
    for source in sources:
        plan += _plan_source(hub, source, folder, layout, log)
    if not plan:
        log("every file is already there: nothing fetched")
        return models_dir
    _check_space(folder, plan)
    plan.sort(key=lambda p: p.size or 0)  # small files first: the large ones are the ones worth resuming
    staging = folder / STAGING
    for item in plan:
        size = "" if item.size is None else f" ({_human(item.size)})"
        log(f"fetching {item.entry.source.repo_id}: {item.name}{size} -> {item.path}")
        _fetch(hub, item, staging / item.entry.source.name, log)
    shutil.rmtree(staging, ignore_errors=True)
    log(f"fetched {len(plan)} file(s)")
    return models_dir


def _plan_source(hub, source: Source, folder: Path, layout: str, log) -> list[Planned]:
    entries = [e for e in RELEASE_FILES if e.source is source]
    wanted = [e for e in entries if present(folder, e, layout) is None]
    if not wanted:
        log(f"{source.repo_id}: all {len(entries)} file(s) already there")
        return []
    log(f"{source.repo_id}: licence {source.licence}; read {source.url} before use")
    listing = _call_hub(hub, source, lambda: {
        f.path: getattr(f, "size", None)
        for f in hub.HfApi().list_repo_tree(source.repo_id, recursive=True) if hasattr(f, "size")})
    plan = []
    for entry in wanted:
        name = next((n for n in entry.names if n in listing), None)
        if name is None:
            if entry.optional:
                log(f"{source.repo_id}: optional {' / '.join(entry.names)} is not in the repository; skipped")
                continue
            raise WeightsError(f"{source.repo_id} at {hub.constants.ENDPOINT} has no {' or '.join(entry.names)} "
                               f"({entry.what}); is HF_ENDPOINT a complete mirror of {source.url}?")
        plan.append(Planned(entry, name, folder / source.local_path(name, layout), listing[name]))
    if source.gated and plan:
        # Listing a gated repository works without access; its files do not. Ask for one now.
        _call_hub(hub, source, lambda: hub.get_hf_file_metadata(hub.hf_hub_url(source.repo_id, plan[0].name)))
    return plan


def _fetch(hub, item: Planned, staging: Path, log) -> None:
    """Download one file into `staging`, continuing a partial one, then move it into place.

    Our own partial file (`NAME.ETAG.part`) rather than `hf_hub_download`: recent
    huggingface_hub releases delete their partial file when a download is interrupted.
    """
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    source = item.entry.source
    url = hub.hf_hub_url(source.repo_id, item.name)
    meta = _call_hub(hub, source, lambda: hub.get_hf_file_metadata(url))
    etag = re.sub(r"[^0-9A-Za-z]", "", meta.etag or "")[:64] or "unknown"
    part = staging / f"{item.name}.{etag}.part"  # another version of the file never continues this one
    part.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    if meta.size is not None and done > meta.size:
        done = 0
    if done:
        log(f"  resuming after {_human(done)}")
    headers = build_hf_headers()
    location = meta.location or url
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # the hub's token is not for its file CDN
    with open(part, "r+b" if done else "wb") as out:
        out.seek(done)
        out.truncate()
        _call_hub(hub, source, lambda: http_get(location, out, resume_size=done, headers=headers,
                                                expected_size=meta.size, displayed_filename=item.name))
    if meta.size is not None and part.stat().st_size != meta.size:
        raise WeightsError(f"{item.name} from {source.repo_id} arrived with {part.stat().st_size} bytes instead of "
                           f"{meta.size}; run the same command again")
    item.path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, item.path)  # same file system: the file appears complete or not at all


def _call_hub(hub, source: Source, call):
    """Run a hub call; turn the hub's and the network's errors into one WeightsError line."""
    from huggingface_hub import errors

    try:
        return call()
    except errors.GatedRepoError as exc:
        raise WeightsError(gated_message(hub, source)) from exc
    except errors.RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if source.gated and status in (401, 403):  # a mirror may drop the GatedRepo header
            raise WeightsError(gated_message(hub, source)) from exc
        raise WeightsError(f"{source.repo_id} not found at {hub.constants.ENDPOINT} (HTTP {status}); check HF_ENDPOINT "
                           f"or the mirror") from exc
    except errors.HfHubHTTPError as exc:
        raise WeightsError(f"{source.repo_id}: the hub at {hub.constants.ENDPOINT} answered: "
                           f"{str(exc).splitlines()[0]}") from exc
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) + _network_errors() as exc:
        raise WeightsError(f"cannot reach {hub.constants.ENDPOINT} for {source.repo_id} ({type(exc).__name__}); check "
                           f"the network, or set HF_ENDPOINT to a mirror; run the same "
                           f"command again to resume") from exc


def gated_message(hub, source: Source) -> str:
    token = None
    try:
        token = hub.get_token()
    except Exception:  # a broken token file must not hide the real advice
        pass
    sent = ("a token was sent, so this account has not accepted the licence yet (or the token cannot read gated "
            "repositories)" if token else "no Hugging Face token was found")
    return (f"{source.repo_id} is gated ({sent}): open {source.url}, log in and accept its licence, then log in "
            f"here with `hf auth login` (or set HF_TOKEN to a read token) and run the same command again; files "
            f"already fetched are kept")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub version uses."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx", "TransportError"), ("httpx2", "TransportError"),
                         ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _check_space(folder: Path, plan: list[Planned]) -> None:
    need = sum(p.size or 0 for p in plan)
    existing = folder
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need + _SPACE_MARGIN:
        raise WeightsError(f"{_human(need)} to fetch but only {_human(free)} free at {existing}; free some space or "
                           f"pass another --models folder")


def _svd_single_file(models_dir: Path, folder: Path) -> Path | None:
    for base in (models_dir / "checkpoints", folder.parent / "checkpoints", folder):
        for name in SVD_SINGLE_FILES:
            if (base / name).is_file():
                return base / name
    return None


def _hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants  # a submodule: not loaded by the package itself
    except ImportError:
        raise WeightsError("huggingface_hub is not installed: pip install huggingface_hub") from None
    return huggingface_hub


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
