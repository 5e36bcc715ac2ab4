"""Window plan properties and exactness of the executors inside one process (serial vs threads)."""

from __future__ import annotations

import pytest
import torch

from sonic.config import SonicConfig
from sonic.diffusion.executors import (SerialExecutor, ThreadExecutor, ideal_speedup, parse_devices, spread_summary,
                                       static_assignment)
from sonic.diffusion.sampler import sample_latents
from sonic.diffusion.schedule import make_schedule
from sonic.diffusion.windows import window_plan, work_units
from sonic.errors import Interrupted, ParameterError
from test_sampler import CFG, StandInUNet, make_inputs


def official_indices(num_frames: int, step: int, frames=25, overlap=0, shift_offset=7) -> list[list[int]]:
    """The official loop (SPEC 6.5) transcribed: shift grows by shift_offset per step, Python modulo."""
    shift = shift_offset * step
    return [[(s0 - shift + k) % num_frames for k in range(frames)] for s0 in range(0, num_frames, frames - overlap)]


@pytest.mark.parametrize("step", [0, 1, 2, 3, 7, 24, 60])
def test_window_plan_is_the_official_indexing_for_every_length(step):
    settings = SonicConfig()
    for num_frames in range(1, 401):
        plan = window_plan(num_frames, step, settings)
        assert plan.tolist() == official_indices(num_frames, step), f"N={num_frames} step {step}"
        assert plan.shape[0] == -(-num_frames // 25)
        assert set(plan.reshape(-1).tolist()) == set(range(num_frames)), f"N={num_frames}: a frame is not covered"


def test_window_plan_with_other_settings():
    settings = SonicConfig(frames_per_window=10, window_overlap=3, shift_offset=4)
    for num_frames in (1, 6, 26, 99):
        for step in (0, 1, 5):
            assert window_plan(num_frames, step, settings).tolist() == official_indices(num_frames, step, 10, 3, 4)


def test_work_units_split_branches_only_when_windows_are_fewer_than_devices():
    assert work_units(5, 2) == [(w, None) for w in range(5)]
    assert work_units(1, 2) == [(0, 0), (0, 1), (0, 2)]
    assert work_units(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert work_units(2, 8, split_branches=False) == [(0, None), (1, None)]
    assert static_assignment(5, 2) == [3, 2] and static_assignment(3, 8) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert ideal_speedup(5, 2) == pytest.approx(5 / 3) and ideal_speedup(30, 4) == pytest.approx(30 / 8)


def run(num_frames, executor, split=None, unet=None, callback=None):
    return sample_latents(unet or StandInUNet(), schedule=make_schedule(None, 2, 1.0), config=CFG,
                          executor=executor, split_branches=split, callback=callback, **make_inputs(num_frames))


@pytest.mark.parametrize("num_frames", [7, 25, 50, 75, 125])  # 1 (frames repeated), 1, 2, 3 and 5 windows
@pytest.mark.parametrize("split", [False, True])
def test_threads_over_two_devices_equal_serial_bit_for_bit(num_frames, split):
    serial = run(num_frames, SerialExecutor(), split)
    threads = ThreadExecutor(["cpu", "cpu"])
    assert torch.equal(run(num_frames, threads, split), serial)
    units = (3 if split else 1) * -(-num_frames // 25)
    assert sum(threads.unit_counts.values()) == 2 * units  # 2 steps, every unit once


def test_branch_units_are_close_to_batched_calls():
    batched, split = run(75, SerialExecutor(), False), run(75, SerialExecutor(), True)
    peak = batched.abs().max()
    assert (batched - split).abs().max() <= 1e-5 * peak  # batch 1 vs 3 rounds differently, nothing more


def test_thread_error_and_cancel_stop_every_thread():
    class Broken(StandInUNet):
        def forward(self, *args, **kwargs):
            if len(self.calls) == 3:
                raise RuntimeError("broken on purpose")
            return super().forward(*args, **kwargs)

    unet = Broken()
    with pytest.raises(RuntimeError, match="broken on purpose"):
        run(125, ThreadExecutor(["cpu", "cpu"]), unet=unet)
    assert len(unet.calls) <= 5  # no unit of the next step starts (5 windows per step)

    def cancel(info):
        if info.call == 2:
            raise Interrupted("stop")

    unet = StandInUNet()
    with pytest.raises(Interrupted):
        run(125, ThreadExecutor(["cpu", "cpu"]), unet=unet, callback=cancel)
    assert len(unet.calls) <= 5


def test_spread_summary_and_device_parsing():
    threads = ThreadExecutor(["cpu", "cpu"])
    run(125, threads)
    counts = [threads.unit_counts[0], threads.unit_counts[1]]
    assert sum(counts) == 10
    assert spread_summary(threads, 5).startswith("5 windows/step over 2 devices: ")
    assert spread_summary(SerialExecutor(), 3) == "3 windows/step on 1 device"
    assert parse_devices("cpu,cpu") == [torch.device("cpu")] * 2
    assert parse_devices(None) is None
    for bad in ("cpu,gpu:7", ","):
        with pytest.raises(ParameterError):
            parse_devices(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA GPU"):
            parse_devices("all")
