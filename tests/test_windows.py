"""Sliding-window layout against the official recording (golden/window_layout)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import GOLDEN

from sonic.errors import ParameterError
from sonic.diffusion.sampler import window_added_time_ids
from sonic.diffusion.windows import all_step_indices, frame_counts, window_indices, window_starts

CASES = json.loads((GOLDEN / "window_layout" / "windows.json").read_text())["cases"]


@pytest.mark.parametrize("num_frames", sorted(CASES, key=int))
def test_layout_matches_official_every_step(num_frames):
    case = CASES[num_frames]
    n = int(num_frames)
    assert len(case["steps"]) == 25
    for step in case["steps"]:
        i = step["step"]
        expected = torch.tensor([w["frames"] for w in step["windows"]], dtype=torch.long)
        idx = window_indices(n, i)
        assert idx.dtype == torch.long
        assert torch.equal(idx, expected), f"N={n} step {i}"
        assert window_starts(n, i) == [w["index_start"] for w in step["windows"]]
        assert frame_counts(idx, n).tolist() == step["coverage_count"], f"N={n} step {i}"


@pytest.mark.parametrize("num_frames", sorted(CASES, key=int))
def test_window_time_ids_match_official_means(num_frames):
    """Probe buckets motion=k, expression=100+2k for frame k: the official float32 window means."""
    n = int(num_frames)
    frame = torch.arange(n, dtype=torch.float32)
    buckets = torch.stack([frame, 100 + 2 * frame], dim=1)
    for step in CASES[num_frames]["steps"]:
        expected = torch.tensor([w["added_time_ids"] for w in step["windows"]], dtype=torch.float32)
        got = window_added_time_ids(buckets, window_indices(n, step["step"]), 12.5)
        assert torch.equal(got, expected), f"N={n} step {step['step']}: {got} != {expected}"


def test_all_step_indices_stacks_every_step():
    stacked = all_step_indices(63, 5)
    assert stacked.shape == (5, 3, 25)
    for i in range(5):
        assert torch.equal(stacked[i], window_indices(63, i))


def test_overlap_and_other_window_lengths():
    idx = window_indices(10, 1, frames_per_window=4, overlap=1, shift_offset=2)
    # starts 0,3,6,9 shifted by -2 -> -2,1,4,7
    assert idx.tolist() == [[8, 9, 0, 1], [1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 9, 0]]
    assert frame_counts(idx, 10).tolist() == [2, 2, 1, 1, 2, 1, 1, 2, 2, 2]


def test_single_frame_window_repeats_frame_zero():
    assert window_indices(1, 3).tolist() == [[0] * 25]
    assert frame_counts(window_indices(1, 3), 1).tolist() == [25]


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_frames=0, step_index=0), "no frames"),
    (dict(num_frames=5, step_index=-1), "step_index"),
    (dict(num_frames=5, step_index=0, frames_per_window=0), "frames_per_window"),
    (dict(num_frames=5, step_index=0, overlap=25), "overlap"),
    (dict(num_frames=5, step_index=0, shift_offset=-7), "shift_offset"),
    (dict(num_frames=5.0, step_index=0), "integer"),
])
def test_bad_layout_arguments_are_parameter_errors(kwargs, words):
    with pytest.raises(ParameterError, match=words):
        window_indices(**kwargs)


def test_frame_counts_rejects_out_of_range_indices():
    with pytest.raises(ParameterError, match="indices"):
        frame_counts(torch.tensor([[0, 5]]), 5)
