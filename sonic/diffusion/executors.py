"""Where the work units of a step run: one interface, three implementations.

An executor maps `compute(worker, unit) -> tensor` over the units of one step and returns every
result in canonical unit order on its `main_device`; the caller fuses them. Implementations:

* `SerialExecutor`: one device, units one after the other (the default; the official order).
* `ThreadExecutor`: one UNet replica per device of a list, one thread per device pulling units
  from a shared queue (the only choice inside a ComfyUI process).
* `sonic.diffusion.distributed.DistributedExecutor`: one process per device under torchrun.

Results do not depend on the executor: units are independent and the fusion order is fixed.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections import Counter
from typing import Callable, Optional, Sequence

import torch

from ..errors import ParameterError

Compute = Callable[[int, object], torch.Tensor]


class SerialExecutor:
    """Every unit on one device, in canonical order."""

    kind = "serial"
    is_main = True
    rank = 0

    def __init__(self, device="cpu"):
        self.main_device = torch.device(device)
        self.local_devices = [self.main_device]
        self.num_workers = 1
        self.unit_counts: Counter = Counter()

    def replicate(self, module: torch.nn.Module) -> list:
        return [module]

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def local_share(self, num_units: int) -> int:
        """How many of `num_units` units this process computes (and reports progress for)."""
        return num_units

    def map(self, compute: Compute, units: Sequence, *, on_result: Optional[Callable[[int], None]] = None,
            to=None, tally: bool = True) -> list[torch.Tensor]:
        results = []
        for index, unit in enumerate(units):
            results.append(compute(0, unit).to(to or self.main_device))
            self.unit_counts[0] += tally
            if on_result is not None:
                on_result(index)  # an exception here (cancel) stops before the next unit
        return results

    def raise_if_cancelled(self) -> None:
        """Only the distributed executor holds signals back (during its exchanges)."""

    def close(self) -> None:
        pass


class ThreadExecutor(SerialExecutor):
    """One thread per device; each thread pulls the next unit from a queue (fast devices take more)."""

    kind = "threads"

    def __init__(self, devices: Sequence):
        if not devices:
            raise ParameterError("the device list is empty")
        self.local_devices = [torch.device(d) for d in devices]
        self.main_device = self.local_devices[0]
        self.num_workers = len(self.local_devices)
        self.unit_counts = Counter()
        self._replicas: dict[tuple[int, torch.device], torch.nn.Module] = {}

    def replicate(self, module: torch.nn.Module) -> list:
        """One replica per device (a device listed twice shares one; the module itself serves its own device)."""
        home = _module_device(module)
        replicas = []
        for device in self.local_devices:
            key = (id(module), device)
            if device == home:
                replica = module
            elif key not in self._replicas:
                replica = self._replicas[key] = torch.nn.Module.to(copy.deepcopy(module), device)
            else:
                replica = self._replicas[key]
            replicas.append(replica)
        return replicas

    def map(self, compute: Compute, units: Sequence, *, on_result: Optional[Callable[[int], None]] = None,
            to=None, tally: bool = True) -> list[torch.Tensor]:
        target = to or self.main_device
        todo: queue.Queue = queue.Queue()
        for item in enumerate(units):
            todo.put(item)
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        grad = torch.is_grad_enabled()  # grad mode is per thread: the workers inherit the caller's

        def work(worker: int) -> None:
            device = self.local_devices[worker]
            with torch.set_grad_enabled(grad), _device_context(device):
                while not stop.is_set():
                    try:
                        index, unit = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        done.put((index, worker, compute(worker, unit).to(target), None))
                    except BaseException as exc:  # handed to the caller, which re-raises it
                        done.put((index, worker, None, exc))
                        return

        threads = [threading.Thread(target=work, args=(w,), daemon=True, name=f"sonic-{d}")
                   for w, d in enumerate(self.local_devices)]
        for thread in threads:
            thread.start()
        results: list = [None] * len(units)
        try:
            for _ in range(len(units)):
                index, worker, result, error = done.get()
                if error is not None:
                    raise error
                results[index] = result
                self.unit_counts[worker] += tally
                if on_result is not None:
                    on_result(index)
        finally:
            stop.set()  # on an error or a cancel the workers finish their current unit and stop
            for thread in threads:
                thread.join()
        return results


def _module_device(module) -> torch.device | None:
    parameter = next(iter(module.parameters()), None) if isinstance(module, torch.nn.Module) else None
    return None if parameter is None else parameter.device



def _device_context(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    import contextlib

    return contextlib.nullcontext()


def parse_devices(text: str | Sequence | None) -> list[torch.device] | None:
    """`--devices`: "cuda:0,cuda:1", "all" (every visible GPU) or a list; None when not given.

    A device may be listed twice ("cpu,cpu": two threads on the CPU, for tests)."""
    if text is None or text == "" or text == []:
        return None
    if isinstance(text, str):
        if text.strip().lower() == "all":
            count = torch.cuda.device_count()
            if count == 0:
                raise ParameterError("--devices all: this torch build sees no CUDA GPU; list devices instead (e.g. cpu)")
            return [torch.device("cuda", i) for i in range(count)]
        names = [part.strip() for part in text.split(",") if part.strip()]
    else:
        names = [str(part) for part in text]
    from ..devices import resolve_device

    devices = []
    for name in names:
        device = resolve_device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
        if device.type == "cuda" and device.index >= torch.cuda.device_count():
            raise ParameterError(f"device {name!r} does not exist: this machine sees {torch.cuda.device_count()} GPU(s)")
        devices.append(device)
    if not devices:
        raise ParameterError(f"--devices lists no device: {text!r}")
    return devices


def executor_for(devices=None, device=None):
    """The executor of a pipeline: `devices` itself when it is one; torchrun's when launched by it;
    threads for a list of several devices; else serial on `device` (None: the best available)."""
    from ..devices import launched_by_torchrun

    if hasattr(devices, "map") and hasattr(devices, "local_devices"):
        return devices
    if launched_by_torchrun():
        from .distributed import DistributedExecutor

        return DistributedExecutor.from_environment()
    devices = parse_devices(devices)
    if devices is not None and len(devices) > 1:
        return ThreadExecutor(devices)
    if devices:
        return SerialExecutor(devices[0])
    from ..devices import resolve_device

    return SerialExecutor(resolve_device(device))


def spread_summary(executor, units_per_step: int, unit_name: str = "windows") -> str:
    """`5 windows/step over 2 devices: 3+2` (how the units of a step were spread)."""
    workers = executor.num_workers
    if workers == 1:
        return f"{units_per_step} {unit_name}/step on 1 device"
    counts = static_assignment(units_per_step, workers) if executor.kind == "distributed" else None
    if counts is None:
        total = sum(executor.unit_counts.values()) or 1
        steps = max(1, round(total / max(units_per_step, 1)))
        counts = [round(executor.unit_counts[w] / steps, 1) for w in range(workers)]
    text = "+".join(f"{c:g}" for c in counts)
    return f"{units_per_step} {unit_name}/step over {workers} devices: {text}"


def window_spread_summary(executor, num_frames: int, config) -> str:
    """`spread_summary` for a clip of `num_frames` generated frames sampled with `config` (a SonicConfig)."""
    from .windows import work_units

    windows = -(-num_frames // (config.frames_per_window - config.window_overlap))
    units = work_units(windows, executor.num_workers)
    name = "windows" if units[0][1] is None else f"(window, branch) units of {windows} window(s)"
    return spread_summary(executor, len(units), name)


def static_assignment(num_units: int, workers: int) -> list[int]:
    """Units per worker when unit i goes to worker i % workers."""
    return [len(range(w, num_units, workers)) for w in range(workers)]


def ideal_speedup(num_units: int, workers: int) -> float:
    """W / ceil(W / G): the UNet-stage speed-up when every unit costs the same."""
    return num_units / -(-num_units // workers)
