"""One clip over several processes with torch.distributed (launched by `torchrun`).

Every rank runs the whole job with a full model replica on its device (NCCL between GPUs, gloo
on CPUs). Per step, unit i goes to rank i % world; every rank then gathers all results and fuses
them in canonical order, so all ranks hold the same latents without any further exchange.

Faults end the run on every rank, never in a hang:
* a cancel (Ctrl-C, SIGTERM) on any rank is collective: it is reported at the next status exchange
  and every rank raises `Interrupted` there. A signal that lands while the ranks are exchanging
  is held until the exchange ends (leaving mid-exchange would look like a dead rank to the others).
  While an executor is open it owns SIGINT/SIGTERM of the main thread (a previous handler is still
  called first; `close()` restores them);
* before results travel, the ranks exchange a status (ok / failed / cancelled, with a message):
  a rank whose unit raised, or whose callback cancelled, makes every rank raise at the same step;
* a rank that dies or hangs breaks the next collective: gloo reports a closed connection at once,
  otherwise the process-group timeout fires. The survivors raise `RankLostError`, naming the ranks
  of this machine whose process is gone.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import threading
import time
from collections import Counter
from typing import Callable, Optional, Sequence

import torch

from ..errors import Interrupted, SonicError

Compute = Callable[[int, object], torch.Tensor]  # as in executors.py (which imports this module lazily)

DEFAULT_TIMEOUT_S = 600.0  # a step of a long clip on a slow GPU stays well below this
TIMEOUT_ENV = "SONIC_DIST_TIMEOUT"
STATUS_OK, STATUS_FAILED, STATUS_CANCELLED = 0, 1, 2
MESSAGE_BYTES = 400
MAX_DIMS = 8


class RankFailedError(SonicError):
    """Another rank of the run failed or was cancelled; the message names it."""


class RankLostError(SonicError):
    """A rank died, was killed or did not answer within the process-group timeout."""


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        from ..errors import ParameterError

        raise ParameterError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    return value


def init_process_group(*, backend: str | None = None, timeout_s: float | None = None) -> None:
    """Join the group described by torchrun's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SONIC_DIST_BACKEND") != "gloo" else "gloo"
    # NCCL only raises on a timeout (instead of hanging) with blocking waits or async error handling.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else timeout_seconds())
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timeout)


class DistributedExecutor:
    """Units of a step split over the ranks of an initialised process group (this rank: one device)."""

    kind = "distributed"

    def __init__(self, device=None):
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.num_workers = dist.get_world_size()
        self.backend = dist.get_backend()
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl"
                      else torch.device("cpu"))
        self.main_device = torch.device(device)
        self.local_devices = [self.main_device]
        self.is_main = self.rank == 0
        self.unit_counts: Counter = Counter()
        self.peers = self._exchange_identities()
        self._exchanging = False
        self._held_signal: int | None = None  # a cancel signal that arrived during an exchange
        self._previous_handlers = _install_handlers(self._on_signal)

    @classmethod
    def from_environment(cls) -> "DistributedExecutor":
        init_process_group()
        return cls()

    # ------------------------------------------------------------------------ interface
    def replicate(self, module: torch.nn.Module) -> list:
        return [module]

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (same shape everywhere: it comes from the same inputs)."""
        dtype = tensor.dtype
        buffer = tensor.detach().to(self.main_device).contiguous().clone()
        self._collective(lambda: self.dist.broadcast(buffer, src=0), "sharing the conditioning")
        return buffer.to(device=tensor.device, dtype=dtype)

    def local_share(self, num_units: int) -> int:
        return len(range(self.rank, num_units, self.num_workers))

    def map(self, compute: Compute, units: Sequence, *, on_result: Optional[Callable[[int], None]] = None,
            to=None, tally: bool = True) -> list[torch.Tensor]:
        mine = list(range(self.rank, len(units), self.num_workers))
        local: list[torch.Tensor] = []
        status, message = STATUS_OK, ""
        try:
            for index in mine:
                self.raise_if_cancelled()
                local.append(compute(0, units[index]).to(self.main_device))
                self.unit_counts[self.rank] += tally
                if on_result is not None:
                    on_result(index)
            self.raise_if_cancelled()  # also on a rank without units this step
        except (Interrupted, KeyboardInterrupt) as exc:
            status, message = STATUS_CANCELLED, str(exc) or "interrupted"
            error: BaseException = exc
        except Exception as exc:  # reported to every rank, then re-raised here
            status, message = STATUS_FAILED, f"{type(exc).__name__}: {exc}"
            error = exc
        shape = tuple(local[0].shape) if local else ()
        statuses = self._exchange_status(status, message, shape)
        if status != STATUS_OK:
            raise error
        self._raise_for_peers(statuses)
        shapes = [s[2] for s in statuses if s[2]]
        if not shapes:
            return []
        per_rank = -(-len(units) // self.num_workers)
        stacked = torch.zeros((per_rank, *shapes[0]), dtype=torch.float32, device=self.main_device)
        for slot, result in enumerate(local):
            stacked[slot] = result
        gathered = [torch.empty_like(stacked) for _ in range(self.num_workers)]
        self._collective(lambda: self.dist.all_gather(gathered, stacked), "gathering the window results")
        target = to or self.main_device
        return [gathered[i % self.num_workers][i // self.num_workers].to(target) for i in range(len(units))]

    def close(self) -> None:
        _restore_handlers(self._previous_handlers)
        self._previous_handlers = {}
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    # ------------------------------------------------------------------------ cancel
    def _on_signal(self, signum: int, frame) -> None:
        if self._exchanging:
            self._held_signal = signum  # acted on before the next unit (see the module doc)
            return
        previous = self._previous_handlers.get(signum)
        if callable(previous):
            previous(signum, frame)  # e.g. the CLI's SIGTERM handler, which raises KeyboardInterrupt
        raise KeyboardInterrupt

    def raise_if_cancelled(self) -> None:
        """Raise `KeyboardInterrupt` for a signal held since the last exchange. `map` calls it before
        each unit; call it once the collective work is over and before anything is published."""
        if self._held_signal is not None:
            name = signal.Signals(self._held_signal).name
            self._held_signal = None
            raise KeyboardInterrupt(f"{name} received")

    # ------------------------------------------------------------------------ faults
    def _exchange_status(self, status: int, message: str, shape: tuple[int, ...]) -> list[tuple[int, str, tuple]]:
        encoded = message.encode("utf-8", "replace")[:MESSAGE_BYTES]
        packet = torch.zeros(2 + MAX_DIMS + MESSAGE_BYTES, dtype=torch.int64)
        packet[0], packet[1] = status, len(shape)
        packet[2:2 + len(shape)] = torch.tensor(shape, dtype=torch.int64)
        packet[2 + MAX_DIMS:2 + MAX_DIMS + len(encoded)] = torch.tensor(list(encoded), dtype=torch.int64)
        packet = packet.to(self.main_device)
        gathered = [torch.empty_like(packet) for _ in range(self.num_workers)]
        self._collective(lambda: self.dist.all_gather(gathered, packet), "exchanging the step status")
        result = []
        for row in gathered:
            row = row.cpu()
            ndim = int(row[1])
            result.append((int(row[0]), _text(row[2 + MAX_DIMS:]), tuple(int(v) for v in row[2:2 + ndim])))
        return result

    def _raise_for_peers(self, statuses) -> None:
        failed = [(r, s[1]) for r, s in enumerate(statuses) if s[0] == STATUS_FAILED]
        if failed:
            rank, message = failed[0]
            raise RankFailedError(f"rank {rank} of {self.num_workers} failed, so every rank stopped: {message}")
        cancelled = [r for r, s in enumerate(statuses) if s[0] == STATUS_CANCELLED]
        if cancelled:
            raise Interrupted(f"cancelled on rank {cancelled[0]}: every rank stopped")

    def _collective(self, call: Callable[[], object], what: str) -> None:
        self._exchanging = True
        try:
            call()
        except Exception as exc:  # gloo/NCCL errors have several types (DistBackendError, RuntimeError, ...)
            gone = self.dead_local_ranks()
            deadline = time.monotonic() + 3.0  # a killed peer's sockets close before its process is gone
            while not gone and time.monotonic() < deadline:
                time.sleep(0.1)
                gone = self.dead_local_ranks()
            who = (f"rank {', '.join(map(str, gone))} is gone (died or was killed)" if gone
                   else "a rank died, was killed or did not answer")
            raise RankLostError(f"rank {self.rank} lost contact with the other ranks while {what}: {who}; "
                                f"every rank stops ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        finally:
            self._exchanging = False

    def _exchange_identities(self) -> list[tuple[str, int]]:
        """(host, pid) of every rank: lets a survivor name the dead ranks of its machine."""
        # A fixed-size tensor, not all_gather_object: nothing a peer sends is unpickled.
        host = socket.gethostname().encode("utf-8", "replace")[:MESSAGE_BYTES]
        packet = torch.zeros(1 + MESSAGE_BYTES, dtype=torch.int64)
        packet[0] = os.getpid()
        packet[1:1 + len(host)] = torch.tensor(list(host), dtype=torch.int64)
        packet = packet.to(self.main_device)
        gathered = [torch.empty_like(packet) for _ in range(self.num_workers)]
        self.dist.all_gather(gathered, packet)
        return [(_text(row[1:]), int(row[0])) for row in (row.cpu() for row in gathered)]

    def dead_local_ranks(self) -> list[int]:
        host = socket.gethostname()
        return [rank for rank, (peer_host, pid) in enumerate(self.peers)
                if rank != self.rank and peer_host == host and not _process_alive(pid)]


def _text(codes: torch.Tensor) -> str:
    """The UTF-8 text of a zero-padded row of byte values."""
    return bytes(int(b) for b in codes if int(b) != 0).decode("utf-8", "replace")


def _install_handlers(handler) -> dict:
    """Route SIGINT and SIGTERM through `handler` (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue  # ignored on purpose (e.g. a background job's SIGINT): stays ignored
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous


def _restore_handlers(previous: dict) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] not in ("Z", "X")  # a zombie is dead
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
