"""Read the tensors of a TorchScript archive without running or importing anything from it.

A TorchScript file (`torch.jit.save`, e.g. the release's `yoloface_v5m.pt`) is a zip:
`<name>/data.pkl` pickles the module object tree (objects of `__torch__.*` classes whose
attributes are sub-modules, parameters and buffers), `<name>/data/<key>` holds the raw bytes
of each storage, and `<name>/code/` holds the TorchScript program. `torch.jit.load` would
compile and later run that program; a crafted archive can then write files
(`torch.from_file(..., shared=True)`) or worse.

Here the program is never read. `data.pkl` goes through a restricted unpickler that knows a
handful of names and builds only:

* `__torch__.*` objects as inert records (nothing is imported; their methods do not exist),
* tensors (`torch._utils._rebuild_tensor_v2` over storages read from `data/`, bounds-checked),
* `collections.OrderedDict` and the list builders of `torch.jit._pickle`.

Every other global (`os.system`, `builtins.eval`, custom TorchScript classes, quantized
tensors, ...) is refused with a `WeightsError` before anything is called. BUILD is allowed only
on the inert records, so no object's `__setstate__` runs. The record tree is then walked and
every tensor attribute becomes `{"dotted.path": tensor}`, the names `nn.Module.state_dict()`
would use.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import zipfile
from pathlib import Path

import torch

from ..errors import WeightsError
from .reading import _damaged, check_is_file

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_MAX_DEPTH = 100  # module nesting; YOLOv5 needs 6
_MAX_PICKLE_BYTES = 64 << 20  # data.pkl describes the modules (YOLOv5m: tens of kB); tensors live in data/
_MAX_RECORDS = 100_000  # module records walked (shared sub-modules count once per name); YOLOv5m has ~400


class _ScriptRecord:
    """An inert stand-in for one `__torch__.*` object: its class name and pickled state, nothing else."""

    qualified_name = "__torch__"

    def __setstate__(self, state) -> None:  # called by BUILD; stores, never interprets
        self.__dict__["state"] = state


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _Storage:
    """One `data/<key>` entry as a flat tensor of its dtype."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat


class _Refused(Exception):
    """A global outside the allow-list (turned into a WeightsError naming it)."""


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *_metadata) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor without a storage from data/")
    if hooks:  # backward hooks are callables: never part of weights
        raise _Refused("tensor backward hooks")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise ValueError(f"bad tensor geometry size={size} stride={stride} offset={offset}")
    numel = storage.flat.numel()
    if all(size):  # a non-empty view must end inside its storage
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise ValueError(f"tensor view size={size} stride={stride} offset={offset} overruns its storage "
                             f"of {numel} elements")
    elif offset > numel:
        raise ValueError(f"empty tensor offset {offset} beyond its storage of {numel} elements")
    return torch.as_strided(storage.flat, size, stride, offset)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    if not isinstance(data, torch.Tensor) or hooks:
        raise ValueError("a parameter that is not a plain tensor")
    return data


def _as_list(values, *_type_tag):
    return list(values)


def _same(value, *_type_tag):
    return value


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
    ("torch.jit._pickle", "build_genericlist"): _as_list,
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcode table can be narrowed
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, read_storage) -> None:
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        self._records: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.startswith("__torch__") and not module.startswith("__torch__.torch.classes"):
            qualified = f"{module}.{name}"
            if qualified not in self._records:  # a fresh inert class per name; nothing is imported
                self._records[qualified] = type("ScriptRecord", (_ScriptRecord,), {"qualified_name": qualified})
            return self._records[qualified]
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"unknown persistent id {str(pid)[:80]}")
        return self._read_storage(pid[1].dtype, str(pid[2]), int(pid[4]))

    def load_reduce(self):  # REDUCE: only our own functions may be called
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is allowed for allowed in _ALLOWED.values()) or not isinstance(args, tuple):
            raise _Refused(f"a call of {getattr(func, 'qualified_name', type(func).__name__)}")
        self.stack[-1] = func(*args)

    def load_build(self):  # BUILD: only on inert records (no __setstate__ of any real class runs)
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _ScriptRecord):
            raise _Refused(f"restoring the state of a {type(inst).__name__}")
        inst.__setstate__(state)

    def load_newobj(self):  # NEWOBJ: only inert records, without arguments
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, _ScriptRecord)) or args:
            raise _Refused(f"creating a {getattr(cls, '__name__', type(cls).__name__)} object")
        self.append(cls())

    # Filling containers: only plain ones (a tensor's or a record's own methods never run).
    def _target(self, kinds: tuple[type, ...]):
        target = self.stack[-1]
        if type(target) not in kinds:
            raise _Refused(f"filling a {type(target).__name__} as a container")
        return target

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._target((dict, collections.OrderedDict))[key] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict))
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_append(self):
        value = self.stack.pop()
        self._target((list,)).append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._target((list,)).extend(items)

    def load_additems(self):
        items = self.pop_mark()
        self._target((set,)).update(items)

    def _refuse_opcode(self):
        raise _Refused("an object built by the INST/OBJ/NEWOBJ_EX opcodes")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.ADDITEMS[0]] = load_additems
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = _refuse_opcode
    del _op


def _archive_root(names: list[str]) -> str:
    roots = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise ValueError("no single <name>/data.pkl entry")
    return roots[0]


def read_torchscript_tensors(path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, as `{dotted.path: tensor}`.

    Nothing from the file is executed or imported (see the module docstring). `what` names the
    file in messages. Damaged, non-TorchScript or unsafe files raise `WeightsError`.
    """
    path = check_is_file(path, what)
    if not zipfile.is_zipfile(path):
        raise _damaged(path, what, "not a TorchScript archive (no zip directory found)")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read(archive, path, what)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _damaged(path, what, f"unreadable archive ({type(exc).__name__}: {exc})") from None


def _read(archive: zipfile.ZipFile, path: Path, what: str) -> dict[str, torch.Tensor]:
    names = archive.namelist()
    try:
        root = _archive_root(names)
    except ValueError:
        raise _damaged(path, what, "not a TorchScript archive (no data.pkl; archives from torch before 1.4 are "
                                   "not supported)") from None
    if f"{root}/constants.pkl" not in names:
        raise WeightsError(f"{what} file {path} is a plain torch.save file, not a TorchScript archive; "
                           f"the face detector must be the released TorchScript yoloface_v5m.pt")
    if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() != sys.byteorder.encode():
        raise WeightsError(f"{what} file {path} stores its tensors in {archive.read(f'{root}/byteorder')!r} byte "
                           f"order, which this machine cannot read directly; download the release file again")
    storages: dict[str, _Storage] = {}

    def read_storage(dtype: torch.dtype, key: str, numel: int) -> _Storage:
        if key not in storages:
            info = archive.getinfo(f"{root}/data/{key}")  # KeyError: a storage the archive lacks
            if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; refuse zip bombs
                raise ValueError(f"storage {key} is compressed, which torch never writes")
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if numel < 0 or numel * itemsize > info.file_size:
                raise ValueError(f"storage {key} claims {numel} elements but holds {info.file_size} bytes")
            raw = bytearray(archive.read(info.filename)[: numel * itemsize])
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            storages[key] = _Storage(flat)
        return storages[key]

    if archive.getinfo(f"{root}/data.pkl").file_size > _MAX_PICKLE_BYTES:
        raise _damaged(path, what, f"its data.pkl is over {_MAX_PICKLE_BYTES >> 20} MB, far more than any "
                                   f"module description needs")
    try:
        obj = _RestrictedUnpickler(archive.read(f"{root}/data.pkl"), read_storage).load()
    except _Refused as exc:
        raise WeightsError(
            f"refusing {what} file {path}: its data.pkl asks for {exc}, which is not a tensor or a module record. "
            f"Weight files must hold data only; this one may be crafted to run code. Download the file again "
            f"from the official Sonic release") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise _damaged(path, what, f"unreadable archive ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # any malformed pickle (truncated, wrong types, bad geometry) is damage, not a bug
        raise _damaged(path, what, f"its data.pkl is not a valid TorchScript module ({type(exc).__name__}: "
                                   f"{str(exc)[:200]})") from None
    if not isinstance(obj, _ScriptRecord):
        raise WeightsError(f"{what} file {path} is not a TorchScript module (its data.pkl holds a "
                           f"{type(obj).__name__}); download the release file again")
    tensors: dict[str, torch.Tensor] = {}
    _collect(obj, "", tensors, set(), [0], path, what)
    if not tensors:
        raise WeightsError(f"{what} file {path} holds no tensors; download the release file again")
    return tensors


def _collect(record: _ScriptRecord, prefix: str, out: dict, path_ids: set, walked: list, path: Path,
             what: str) -> None:
    walked[0] += 1
    if id(record) in path_ids or len(path_ids) > _MAX_DEPTH or walked[0] > _MAX_RECORDS:
        raise WeightsError(f"{what} file {path} has a module tree that loops, nests over {_MAX_DEPTH} levels or "
                           f"has over {_MAX_RECORDS:,} modules; it is not a real model file")
    path_ids.add(id(record))
    state = record.__dict__.get("state")
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptRecord):
            _collect(value, f"{prefix}{name}.", out, path_ids, walked, path, what)
    path_ids.discard(id(record))  # the same sub-module may be shared by two parents (not a loop)
