"""`python -m sonic convert`: write verified `.safetensors` twins of pickled weights.

Each Sonic / RIFE / Whisper `.pth`/`.pkl`/`.bin` file is read safely (`read_state_dict`),
written beside itself as `<stem>.safetensors` (Whisper's `pytorch_model.bin` becomes
`model.safetensors`, the name transformers and `find_model_files` look for) under a temporary
name, re-read and compared tensor by tensor (SHA-256 of dtype, shape and bytes), and only then
renamed into place. Keys are kept exactly (RIFE keeps its `module.` prefix; the loader strips
it with `rife_state_dict` either way). An existing twin is verified, never overwritten.
The TorchScript face detector is not a state dict and is never converted.

Memory: the source is memory-mapped and the twin is hashed one tensor at a time, so the
6.3 GB UNet converts without holding a second copy in RAM.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import WeightsError
from .checking import RELEASE_NAMES, identify_weights, shapes_of
from .locate import WHISPER_FOLDER, _layout_and_target, _search_roots
from .reading import check_is_file, read_safetensors_metadata, read_state_dict

CONVERTER_TAG = "sonic convert"


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (bit-exact identity)."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def state_dict_digests(state_dict) -> dict[str, str]:
    return {k: tensor_digest(v) for k, v in state_dict.items()}


def safetensors_digests(path) -> dict[str, str]:
    """Digests of every tensor of a safetensors file, reading one tensor at a time."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tensor_digest(handle.get_tensor(k)) for k in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path} cannot be read back as safetensors ({exc}); delete it and convert again") from None


def _savable(state_dict) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses aliases, e.g. tied weights)."""
    out, seen = {}, set()
    for key, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if storage in seen and t.numel():
            t = t.clone()
        seen.add(storage)
        out[key] = t
    return out


def _difference(expected: dict[str, str], got: dict[str, str]) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = [f"{len(x)} {name} (e.g. {x[0]})" for name, x in
             (("missing", missing), ("extra", extra), ("different", changed)) if x]
    return ", ".join(parts)


def convert_file(source, twin=None, *, what: str, trust_pickle: bool = False, role: str | None = None) -> Path:
    """Write (or verify) the safetensors twin of one pickled state dict; returns the twin's path.

    `role` (a `RELEASE_NAMES` key such as "audio2token"): refuse a file whose keys clearly belong
    to another known model (e.g. audio2token.pth and audio2bucket.pth swapped) before writing.
    """
    source = check_is_file(source, what)
    twin = Path(twin) if twin is not None else source.with_suffix(".safetensors")
    state = read_state_dict(source, what=what, trust_pickle=trust_pickle)
    if role is not None:
        _check_role(state, source, role)
    expected = state_dict_digests(state)
    if twin.exists():
        got = safetensors_digests(check_is_file(twin, what))
        if got != expected:
            raise WeightsError(f"{twin} exists but does not hold the same tensors as {source} "
                               f"({_difference(expected, got)}); delete {twin.name} and run convert again")
        return twin
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..files import Scratch, publish

    with Scratch(twin.parent) as scratch:  # removed on every exit; a killed run's is swept by the next
        partial = scratch.path("twin.safetensors")
        try:
            save_file(_savable(state), str(partial),
                      metadata={"format": "pt", "converted_by": CONVERTER_TAG, "source": source.name})
        except (OSError, SafetensorError) as exc:  # a full disk, a quota: the library's own text says which
            raise WeightsError(f"could not write {twin} ({' '.join(str(exc).split())[:160]}); is the disk full? "
                               f"free some space and run convert again") from None
        del state
        got = safetensors_digests(partial)
        if got != expected:
            raise WeightsError(f"writing {twin} failed verification ({_difference(expected, got)}); "
                               f"check the disk and run convert again")
        try:
            publish(partial, twin, overwrite=False, error=WeightsError)
        except WeightsError:  # another convert published it meanwhile: fine when it holds the same tensors
            if safetensors_digests(twin) != expected:
                raise
    return twin


def _check_role(state, source: Path, role: str) -> None:
    """WeightsError when the file's keys/shapes are those of another known model than its name says."""
    found = identify_weights(shapes_of(state))
    if found is None or found == role:
        return
    short = {"audio2token": "audio2token", "audio2bucket": "audio2bucket", "unet": "Sonic UNet",
             "rife": "RIFE", "whisper": "Whisper"}
    other = short.get(found, RELEASE_NAMES.get(found, found))
    swapped = " the files are swapped or misnamed;" if found in short else ""
    raise WeightsError(f"{source} holds {other} weights, not those of {RELEASE_NAMES.get(role, role)}:{swapped} "
                       f"put each file under its released name and run convert again (no twin of it was written)")


def _convertible(models_dir: Path) -> tuple[list[tuple[Path, Path, str, str]], list[Path]]:
    """(source, twin, what, role) of every pickled Sonic/RIFE/Whisper file, and twins found without source."""
    _, target, _ = _layout_and_target(models_dir)
    roots = _search_roots(models_dir)
    if target.is_dir() and target not in roots:
        roots.append(target)
    jobs: list[tuple[Path, Path, str, str]] = []
    orphans: list[Path] = []
    seen: set[Path] = set()

    def consider(source: Path, twin: Path, what: str, role: str) -> None:
        if source.is_file():
            key = source.resolve()
            if key not in seen:
                seen.add(key)
                jobs.append((source, twin, what, role))
        elif twin.is_file():
            orphans.append(twin)

    for root in roots:
        for folder in (root / "Sonic", root):
            for stem in ("unet", "audio2token", "audio2bucket"):
                consider(folder / f"{stem}.pth", folder / f"{stem}.safetensors", f"Sonic {stem}.pth", stem)
        for folder in (root / "RIFE", root):
            consider(folder / "flownet.pkl", folder / "flownet.safetensors", "RIFE flownet.pkl", "rife")
        whisper = root / WHISPER_FOLDER
        bin_file, st_file = whisper / "pytorch_model.bin", whisper / "model.safetensors"
        # A model.safetensors from Hugging Face is the real thing, not our twin: leave the .bin alone.
        if bin_file.is_file() and st_file.is_file() and \
                read_safetensors_metadata(st_file).get("converted_by") != CONVERTER_TAG:
            orphans.append(st_file)
        else:
            consider(bin_file, st_file, "Whisper pytorch_model.bin", "whisper")
    return jobs, orphans


def convert_checkpoints(models_dir, *, trust_pickles: bool = False) -> list[Path]:
    """Write or verify the `.safetensors` twin of every pickled weight file in `models_dir`.

    Returns the twins now in place (newly written or verified). `trust_pickles=True` lets
    files that need Python classes load with full unpickling: run that only in a sandbox, on
    files from the official source. Raises `WeightsError` if the folder holds no Sonic file.
    """
    models_dir = Path(models_dir).expanduser()
    if models_dir.is_file():
        raise WeightsError(f"{models_dir} is a file, not a folder; pass the folder that holds the weights (the "
                           f"official checkpoints/ folder or ComfyUI's models/ folder)")
    if not models_dir.is_dir():
        raise WeightsError(f"weights folder {models_dir} does not exist (pass the official checkpoints/ "
                           f"folder or ComfyUI's models/ folder)")
    jobs, orphans = _convertible(models_dir)
    if not jobs and not orphans:
        raise WeightsError(f"no Sonic, RIFE or Whisper weights (.pth/.pkl/.bin/.safetensors) found in {models_dir} "
                           f"or its sonic/ folder; pass the folder that holds Sonic/ or unet.pth")
    return [convert_file(source, twin, what=what, trust_pickle=trust_pickles, role=role)
            for source, twin, what, role in jobs]
