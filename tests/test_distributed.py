"""torch.distributed on CPU (gloo): 2 ranks under torchrun, 2 "nodes" on 127.0.0.1, and faults.

The workers are real processes running tests/dist_worker.py (the stand-in UNet of
test_sampler.py, 2 steps); results are compared bit for bit with the serial executor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dist_worker import FRAME_COUNTS

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "dist_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def check_results(out: Path, frame_counts=FRAME_COUNTS) -> None:
    results = torch.load(out / "latents.pt")
    for num_frames in frame_counts:
        for split in (False, True):
            distributed, serial = results[(num_frames, split, "distributed")], results[(num_frames, split, "serial")]
            assert torch.equal(distributed, serial), f"N={num_frames} split={split}"
    assert [p.read_text() for p in sorted(out.glob("rank*.txt"))] == ["ok", "ok"]


def test_two_ranks_under_torchrun_equal_serial(tmp_path):
    proc = subprocess.run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()), str(WORKER),
                                   str(tmp_path)), env=environment(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_results(tmp_path)


def test_two_nodes_on_localhost_equal_serial(tmp_path):
    port = str(free_port())
    launchers = [subprocess.Popen(torchrun("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                                           "--master-addr", "127.0.0.1", "--master-port", port, str(WORKER),
                                           str(tmp_path), "--frames", "25,125"),
                                  env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for node in (0, 1)]
    logs = [p.communicate(timeout=180)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(log[-2000:] for log in logs)
    check_results(tmp_path, (25, 125))


def spawn_ranks(out: Path, *args: str, timeout_s: float = 20) -> list[subprocess.Popen]:
    """Two workers started directly with torchrun's environment variables (no agent to clean up)."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, str(WORKER), str(out), *args],
                             env=environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                             SONIC_DIST_TIMEOUT=str(timeout_s)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for rank in (0, 1)]


def wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"ranks still running after {timeout} s (a hang)") from None
        codes.append(proc.returncode)
    return codes


def test_a_rank_that_raises_stops_every_rank_naming_it(tmp_path):
    procs = spawn_ranks(tmp_path, "--fault", "raise", "--fault-rank", "1")
    assert wait_all(procs, 90) == [1, 1]
    assert "RuntimeError: the UNet broke on purpose" in (tmp_path / "rank1.txt").read_text()
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("RankFailedError: rank 1 of 2 failed") and "broke on purpose" in message


def test_a_killed_rank_stops_the_others_within_the_timeout(tmp_path):
    procs = spawn_ranks(tmp_path, "--fault", "kill", "--fault-rank", "1", timeout_s=15)
    started = time.monotonic()
    codes = wait_all(procs, 90)
    assert codes[1] == -signal.SIGKILL and codes[0] == 1
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("RankLostError: rank 0 lost contact") and "rank 1 is gone" in message, message
    assert not (tmp_path / "rank1.txt").exists()
    assert time.monotonic() - started < 60


def test_a_hung_rank_ends_the_run_at_the_process_group_timeout(tmp_path):
    """Rank 1 hangs inside a UNet call: rank 0 gives up at the timeout and torchrun stops rank 1."""
    started = time.monotonic()
    proc = subprocess.run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()), str(WORKER),
                                   str(tmp_path), "--fault", "hang"),
                          env=environment(SONIC_DIST_TIMEOUT="8"), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("RankLostError: rank 0 lost contact"), message
    assert time.monotonic() - started < 80


def test_interrupting_one_rank_stops_every_rank(tmp_path):
    procs = spawn_ranks(tmp_path, "--fault", "interrupt", "--fault-rank", "1")
    deadline = time.monotonic() + 60
    while not (tmp_path / "started1").exists():
        assert time.monotonic() < deadline and procs[1].poll() is None, procs[1].communicate()[0][-2000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGINT)
    assert wait_all(procs, 60) == [130, 130]
    assert (tmp_path / "rank0.txt").read_text() == "Interrupted: cancelled on rank 1: every rank stopped"
    assert (tmp_path / "rank1.txt").read_text().startswith("KeyboardInterrupt")


def test_a_signal_during_an_exchange_is_held_until_the_next_step(monkeypatch):
    """SIGINT that lands inside a collective does not break it: the step completes, and the next
    step (or `raise_if_cancelled`, after the last one) raises KeyboardInterrupt. One real gloo rank."""
    from sonic.diffusion.distributed import DistributedExecutor, init_process_group

    for name, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                            LOCAL_RANK="0").items():
        monkeypatch.setenv(name, value)
    # Ctrl-C semantics even when the suite runs as a background job (SIGINT inherited as ignored).
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    init_process_group(backend="gloo", timeout_s=30)
    executor = DistributedExecutor()
    try:
        real_all_gather = executor.dist.all_gather

        def all_gather_hit_by_ctrl_c(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler here, inside the exchange
            return real_all_gather(*args, **kwargs)

        def compute(worker, unit):
            return torch.full((2,), float(unit))

        monkeypatch.setattr(executor.dist, "all_gather", all_gather_hit_by_ctrl_c)
        assert [r.tolist() for r in executor.map(compute, [1, 2])] == [[1.0, 1.0], [2.0, 2.0]]
        monkeypatch.setattr(executor.dist, "all_gather", real_all_gather)
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            executor.map(compute, [3, 4])  # reported as this rank's cancel at the step's status exchange
        monkeypatch.setattr(executor.dist, "all_gather", all_gather_hit_by_ctrl_c)
        executor.map(compute, [5])  # the last step completes...
        monkeypatch.setattr(executor.dist, "all_gather", real_all_gather)
        with pytest.raises(KeyboardInterrupt):
            executor.raise_if_cancelled()  # ...and the held signal stops the job before anything is published
        executor.raise_if_cancelled()  # raised once
    finally:
        executor.close()
        restored = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, original)
    assert restored is signal.default_int_handler
