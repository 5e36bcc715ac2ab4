"""Read weight files without ever running code from them.

* `.safetensors` / `.sft`: parsed by the `safetensors` library (pure data, memory-mapped).
* `.pth` / `.pkl` / `.bin` / `.pt` / `.ckpt`: `torch.load(weights_only=True)`, memory-mapped
  when the file is a zip archive. torch's restricted unpickler builds tensors and plain
  containers only. A file that needs anything else (a pickled Python class, a function call)
  is refused with a `WeightsError`; before that its GLOBAL opcodes are listed with
  `pickletools`-style static disassembly, which executes nothing, so the message can say
  which classes the file wanted.
* TorchScript (`yoloface_v5m.pt`): never `torch.jit.load` (that would run the archive's
  program, which can write files). `sonic.weights.torchscript` reads only its tensors with a
  restricted unpickler, and our own network (`sonic.models.yoloface`) runs them.

Damaged files (empty, truncated, garbage header, a folder) give a `WeightsError` with the
file's size and the advice to download it again.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pkl", ".bin", ".pt", ".ckpt")
# Container keys some trainers wrap a state dict in; unwrapped only around a plain dict of tensors.
_WRAPPER_KEYS = ("state_dict", "module", "model")


def _human_size(num_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    raise AssertionError("unreachable")


def file_size_text(path: Path) -> str:
    """'12,345 bytes (12.3 kB)' for messages."""
    size = path.stat().st_size
    return f"{size:,} bytes ({_human_size(size)})"


def _damaged(path: Path, what: str, detail: str) -> WeightsError:
    return WeightsError(
        f"{what} file {path} is damaged or incomplete ({file_size_text(path)}): {detail}. "
        f"Delete it and download it again (an interrupted or mirrored download is the usual cause); then "
        f"`python -m sonic doctor --models DIR` checks every weights file.")


def check_is_file(path, what: str) -> Path:
    """The path as a `Path`, or a `WeightsError` if it is missing, a folder or empty."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise WeightsError(f"{what} path {path} is a folder, but a weights file was expected there "
                           f"(check the download: the file itself belongs at this path)")
    if path.stat().st_size == 0:
        raise _damaged(path, what, "the file is empty")
    return path


def read_state_dict(path, *, what: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a weights file as a flat `{key: tensor}` dict on the CPU.

    `what` names the model in messages ("Sonic UNet (unet.pth)"). A `{"state_dict": {...}}` or
    `{"module": {...}}` wrapper around a plain dict of tensors is removed. `trust_pickle=True`
    (only for `convert_checkpoints` in a sandbox, on files from the official source) lets a
    pickle that needs Python classes load with `weights_only=False`; never use it otherwise.
    """
    path = check_is_file(path, what)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path, what)
    return _read_pickle(path, what, trust_pickle=trust_pickle)


def read_safetensors_metadata(path) -> dict[str, str]:
    """The text metadata of a safetensors header ({} when none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, what, f"not a readable safetensors file ({exc})") from None
    if not state:
        raise WeightsError(f"{what} file {path} holds no tensors; download it again")
    return state


def _read_pickle(path: Path, what: str, *, trust_pickle: bool) -> dict[str, torch.Tensor]:
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it merely did not expect; the load is still checked.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        unsafe = unsafe_pickle_globals(path)
        if unsafe or "GLOBAL" in str(exc):  # torch names the import it blocked; anything else is garbage
            raise _refused(path, what, unsafe) from None
        # torch's own text here advises weights_only=False (running the file's code): never quote it.
        raise _damaged(path, what, "not a PyTorch checkpoint (its bytes are not a valid torch pickle)") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError, ImportError,
            zipfile.BadZipFile) as exc:
        raise _damaged(path, what, f"not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    return _as_state_dict(obj, path, what)


_DETAIL_CHARS = 200  # longest library text quoted in a message


def _first_line(exc: BaseException) -> str:
    """The first sentence of an error's text, leaving out torch's unsafe weights_only=False advice.

    Whole sentences only: torch follows its one useful sentence with boilerplate ("This is an
    internal miniz error. If you are seeing this error, ..."), and a cut mid-sentence reads as nonsense.
    """
    text = str(exc).strip().splitlines()
    if not text or "weights_only" in text[0].lower().replace(" ", "_"):
        return type(exc).__name__
    return f"{type(exc).__name__}: {_first_sentence(text[0])}"


def _first_sentence(line: str) -> str:
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", line.strip(), maxsplit=1)[0].rstrip(".")
    if len(sentence) <= _DETAIL_CHARS:
        return sentence
    return sentence[:_DETAIL_CHARS].rsplit(" ", 1)[0] + " ..."  # a word boundary, marked as cut


def _refused(path: Path, what: str, unsafe: list[str]) -> WeightsError:
    needs = (f"it needs the Python object(s) {', '.join(unsafe[:8])}" + (" ..." if len(unsafe) > 8 else "")
             if unsafe else "it needs more than tensors and plain containers")
    return WeightsError(
        f"refusing to load {what} file {path}: {needs}, and unpickling that could run arbitrary code. "
        f"Download the file again from its official source (a plain state dict loads safely). If you trust "
        f"this exact file, convert it once inside a sandbox or throw-away machine with "
        f"`python -m sonic convert --models DIR --trust-pickles`, which writes a .safetensors copy that "
        f"loads safely from then on.")


def _as_state_dict(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):  # only reachable with trust_pickle
        obj = obj.state_dict()
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
    if isinstance(obj, Mapping) and len(obj) == 0:
        raise WeightsError(f"{what} file {path} holds an empty dict, not weights; download it again")
    found = type(obj).__name__
    if isinstance(obj, Mapping):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        found = f"a dict of {', '.join(kinds)} under keys {list(obj)[:5]}"
    raise WeightsError(f"{what} file {path} is not a state dict (a dict of tensors): it holds {found}. "
                       f"Check that the right file is at this path")


def _is_tensor_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


# ------------------------------------------------------------------------------ static pickle scan
def unsafe_pickle_globals(path) -> list[str]:
    """Names of Python objects a torch/pickle file would import, beyond what torch allows.

    Static: the pickle opcodes are only disassembled, nothing is imported or run. Returns []
    when the file cannot be parsed (the load error then explains it).
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            try:
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            except Exception:  # older torch or an odd archive: fall back to our own scan below
                with zipfile.ZipFile(path) as archive:
                    names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                    data = archive.read(names[0]) if names else b""
                return sorted(g for g in _scan_globals(data) if not _torch_allows(g))
        return sorted(g for g in _scan_globals(path.read_bytes()) if not _torch_allows(g))
    except (OSError, zipfile.BadZipFile, IndexError):
        return []


def _torch_allows(name: str) -> bool:
    # Rough stand-in for torch's allow-list, used only for the message of legacy (non-zip) files.
    return name.startswith("torch.") or name in {"collections.OrderedDict", "builtins.set", "builtins.bytearray"}


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def _scan_globals(data: bytes) -> set[str]:
    """GLOBAL / STACK_GLOBAL targets of every pickle stored back to back in `data`."""
    found: set[str] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        memo: dict[int, str | None] = {}
        last: str | None = None
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name in ("GLOBAL", "INST"):
                    found.add(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
                if name in _STRING_OPS:
                    last = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                    strings.append(last)
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = last
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    last = memo.get(int(arg))
                    if last is not None:
                        strings.append(last)
                else:
                    last = None
        except Exception:  # raw tensor bytes after the pickles, or a truncated file: stop scanning
            break
    return found
