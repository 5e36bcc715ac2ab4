"""Glue shared by the Sonic nodes: type names, model folders, progress/interrupts, errors.

Everything ComfyUI-specific lives in `nodes/`; the `sonic` library never imports `comfy`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Iterator

import folder_paths

log = logging.getLogger("sonic.comfy")

CATEGORY = "Sonic"

# Custom link types between this pack's own nodes (opaque Python objects).
SONIC_MODEL = "SONIC_MODEL"  # a `loaders.LazySonicPipeline`: checked files, the SonicPipeline built on first use
SONIC_PREDATA = "SONIC_PREDATA"  # a `sonic.pipeline.PreparedJob` (crop, audio, timeline)
SONIC_LATENTS = "SONIC_LATENTS"  # `SonicLatents`: sampled latents + the job they belong to

MODEL_FOLDER_KEY = "sonic"
# What may sit in models/sonic: weights, TorchScript, diffusers/whisper configs.
MODEL_EXTENSIONS = {".pth", ".pt", ".pkl", ".bin", ".safetensors", ".sft", ".json"}


def register_model_folder() -> None:
    """Register `models/sonic` with `folder_paths` (keeping paths a user added in extra_model_paths.yaml).

    Setting the extension set explicitly matters: a new key created by `add_model_folder_path`
    gets an empty set, which matches every file.
    """
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER_KEY)
    current = folder_paths.folder_names_and_paths.get(MODEL_FOLDER_KEY)
    paths = list(current[0]) if current else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[MODEL_FOLDER_KEY] = (paths, set(MODEL_EXTENSIONS))


def declared_range_problem(node_class, **values) -> str | None:
    """Every value outside the min/max that `node_class.INPUT_TYPES()` declares for it, else None.

    ComfyUI skips its own min/max check for each input that a node's VALIDATE_INPUTS names,
    so every VALIDATE_INPUTS passes its numeric inputs here. Linked inputs arrive as None and
    values ComfyUI failed to convert to numbers are left to its own error.
    """
    declared = _declared_options(node_class)
    problems = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or name not in declared:
            continue
        low, high = declared[name].get("min"), declared[name].get("max")
        outside = (low is not None and value < low) or (high is not None and value > high)
        if outside or not math.isfinite(value):
            problems.append(f"{name} must be {_range_text(low, high)}, got {value}")
    return "; ".join(problems) or None


def _declared_options(node_class) -> dict[str, dict]:
    """Input name -> its options dict (required and optional inputs)."""
    options = {}
    for category in ("required", "optional"):
        for name, spec in node_class.INPUT_TYPES().get(category, {}).items():
            if len(spec) > 1 and isinstance(spec[1], dict):
                options[name] = spec[1]
    return options


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"


class SonicLatents:
    """Output of SonicInference: latents (1, N, 4, h, w) float32 on the CPU and their job."""

    def __init__(self, latents, job):
        self.latents = latents
        self.job = job

    def __repr__(self) -> str:
        return f"SonicLatents(shape={tuple(self.latents.shape)})"


def model_management():
    import comfy.model_management as mm

    return mm


class ComfyProgress:
    """A `sonic` progress callback that drives `comfy.utils.ProgressBar` and honours `/interrupt`.

    The pipeline calls it once per unit of work (a UNet call while sampling, a chunk while
    decoding); raising from it aborts the stage. `interrupted` remembers that the raise was an
    interrupt so `comfy_errors` can hand the executor the exception type it expects.
    """

    def __init__(self, node_id: str | None = None):
        self.node_id = node_id
        self.interrupted = False
        self._bars: dict[str, object] = {}

    def __call__(self, info) -> None:
        import comfy.utils

        bar = self._bars.get(info.stage)
        if bar is None:
            bar = comfy.utils.ProgressBar(max(int(info.total), 1), **self._node_kwargs())
            self._bars[info.stage] = bar
        try:
            bar.update_absolute(int(info.done), max(int(info.total), 1))
            model_management().throw_exception_if_processing_interrupted()
        except BaseException:
            self.interrupted = True
            raise

    def _node_kwargs(self) -> dict:
        # ProgressBar(node_id=...) exists on 0.3.x cores only; older ones take the total alone.
        import inspect

        import comfy.utils

        if self.node_id is not None and "node_id" in inspect.signature(comfy.utils.ProgressBar.__init__).parameters:
            return {"node_id": self.node_id}
        return {}


@contextlib.contextmanager
def comfy_errors(progress: ComfyProgress | None, *, knobs: str) -> Iterator[None]:
    """Translate what the library raises into what ComfyUI handles best.

    * an interrupt raised inside our progress callback (possibly wrapped by the library) is
      re-raised as comfy's `InterruptProcessingException`, so the executor reports
      `execution_interrupted` instead of an error;
    * a device OOM frees ComfyUI's models and becomes a `DeviceMemoryError` naming the knobs.
    """
    import torch

    from sonic.errors import DeviceMemoryError

    mm = model_management()
    try:
        yield
    except mm.InterruptProcessingException:
        raise
    except torch.OutOfMemoryError:
        mm.unload_all_models()
        mm.soft_empty_cache()
        raise DeviceMemoryError(f"the device ran out of memory; {knobs}") from None
    except DeviceMemoryError as exc:
        mm.unload_all_models()
        mm.soft_empty_cache()
        raise DeviceMemoryError(f"{exc} ({knobs})") from None
    except Exception as exc:
        if progress is not None and progress.interrupted:
            raise mm.InterruptProcessingException() from exc
        raise


def release_memory(pipe) -> None:
    """After a heavy stage: give cached device memory back when the policy moves models around."""
    if _unloads_others(pipe):
        model_management().soft_empty_cache()


def make_room(pipe) -> None:
    """Before a heavy stage on a GPU: evict ComfyUI's other models when the policy says so."""
    device = getattr(pipe, "device", None)
    if device is None or getattr(device, "type", "cpu") == "cpu":
        return
    if _unloads_others(pipe):
        model_management().unload_all_models()
    model_management().soft_empty_cache()


def _unloads_others(pipe) -> bool:
    from sonic.placement import get_policy

    return get_policy(getattr(pipe, "memory_policy", "keep")).unload_others


def config_range(name: str) -> dict:
    """A widget's min/max from the library's one table of ranges (`sonic.config.RANGES`)."""
    from sonic.config import RANGES

    low, high = RANGES[name].low, RANGES[name].high
    return {"min": low, "max": high}
