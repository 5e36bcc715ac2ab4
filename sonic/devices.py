"""Device and dtype policy, resolved at call time (never at import time)."""

from __future__ import annotations

import os

from .errors import ParameterError

_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def resolve_device(device=None):
    """`None`/"auto" -> cuda if available, else mps, else cpu. Accepts strings and torch.device."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} was requested but this torch build sees no CUDA GPU; use --device cpu")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError(f"device {device!r} was requested but MPS is not available; use --device cpu")
    return resolved


def resolve_dtype(dtype, device):
    """The heavy-model dtype: "auto" is bf16 where supported, fp16 on older GPUs, fp32 on CPU.

    fp16 is refused on CPU (about 60x slower than bf16 there, see DEPENDENCIES.md).
    """
    import torch

    device = torch.device(device)
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.lower())
        if name is None:
            raise ParameterError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
        dtype = getattr(torch, name)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ParameterError(f"unsupported dtype {dtype}: use auto, fp32, bf16 or fp16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ParameterError("fp16 on the CPU is extremely slow and not supported; use dtype fp32 or bf16 on CPU")
    return dtype


def launched_by_torchrun() -> bool:
    """True inside a torchrun worker of a run with several processes (read from its environment)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ


def torchrun_rank() -> int:
    """This process's rank in a torchrun job; 0 outside one."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0
