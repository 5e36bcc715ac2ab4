"""RIFE IFNet (sonic.models.rife) and 2x frame-rate doubling (sonic.diffusion.interpolate) against the golden fixture."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import MANIFESTS, assert_close_peak, assert_close_to_golden, load_golden
from sonic.errors import ParameterError, WeightsError
from sonic.diffusion.executors import ThreadExecutor
from sonic.diffusion.interpolate import (double_frame_rate, interpolate_pairs, iter_double_frame_rate,
                                        iter_double_frame_rate_split)
from sonic.models.rife import IFNet, build_rife, rife_state_dict

SIZES = ("64x64", "48x80")


@pytest.fixture(scope="module")
def golden():
    torch.set_num_threads(2)
    return {"weights": load_golden("rife", "weights.safetensors"), "inputs": load_golden("rife", "inputs.safetensors"),
            "outputs": load_golden("rife", "outputs.safetensors")}


@pytest.fixture(scope="module")
def model(golden):
    return build_rife(golden["weights"])


def _video(frames: int, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth moving gradients [N, H, W, 3] in [0, 1], so consecutive frames are related."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width, 1)
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1, 1)
    phase = torch.rand(1, 1, 1, 3, generator=g) * 6
    return (0.5 + 0.45 * torch.sin(6 * xs + 3 * ys + 0.4 * t + phase)).float()


def test_golden_stages_and_middle(golden, model):
    inputs, outputs = golden["inputs"], golden["outputs"]
    for size in SIZES:
        with torch.no_grad():
            got = model.flows(inputs[f"img0_{size}"], inputs[f"img1_{size}"])
        for name in ("flow_stage0", "flow_stage1", "flow", "mask_sigmoid", "middle"):
            assert_close_to_golden(got[name], outputs[f"{name}_{size}"], f"rife/{name} {size}")
        middle = interpolate_pairs(model, inputs[f"img0_{size}"], inputs[f"img1_{size}"])
        assert_close_to_golden(middle, outputs[f"middle_clamped_{size}"], f"rife/middle_clamped {size}")


def test_batched_equals_per_pair(golden, model):
    a = golden["inputs"]["img0_64x64"]
    b = golden["inputs"]["img1_64x64"]
    firsts = torch.cat([a, b, a.flip(-1)])
    seconds = torch.cat([b, a, b])
    batched = interpolate_pairs(model, firsts, seconds)
    for i in range(3):
        single = interpolate_pairs(model, firsts[i:i + 1], seconds[i:i + 1])
        assert_close_peak(batched[i:i + 1], single, 1e-5, f"pair {i}")
    # RIFE is symmetric by design (each stage averages the swapped run): middle(a, b) == middle(b, a).
    assert_close_peak(batched[1], batched[0], 1e-5, "swapped pair")
    # A different pair gives a different frame, so the per-pair check above can fail.
    assert not torch.allclose(batched[2], batched[0], atol=1e-3)


def test_sizes_not_multiple_of_16_are_padded(golden, model):
    img0, img1 = golden["inputs"]["img0_72x56"], golden["inputs"]["img1_72x56"]
    with pytest.raises(RuntimeError):  # what the official (unpadded) call does at 72x56
        model(img0, img1)
    middle = interpolate_pairs(model, img0, img1)
    assert middle.shape == (1, 3, 72, 56) and torch.isfinite(middle).all()
    assert 0 <= middle.min() and middle.max() <= 1
    # Warping a flat image gives the same flat image whatever the flow, so the middle of two flat
    # frames is a per-pixel blend of their colours: padding must not leak anything else in.
    flat0 = torch.full((2, 3, 72, 56), 0.2)
    flat1 = torch.full((2, 3, 72, 56), 0.7)
    blend = interpolate_pairs(model, flat0, flat1)
    assert blend.shape == (2, 3, 72, 56)
    assert blend.min() >= 0.2 - 1e-5 and blend.max() <= 0.7 + 1e-5
    same = interpolate_pairs(model, flat1, flat1)
    assert torch.allclose(same, flat1, atol=1e-5)


def test_double_frame_rate_order_and_count(model):
    video = _video(5)
    doubled = double_frame_rate(model, video, batch_size=2)
    assert doubled.shape == (10, 32, 48, 3) and doubled.dtype == torch.float32
    assert torch.equal(doubled[0:10:2], video)  # originals at even positions
    assert torch.equal(doubled[9], video[4])  # last frame held once more: 2N frames span N/12.5 s
    for k in range(4):
        mid = interpolate_pairs(model, video[k:k + 1].permute(0, 3, 1, 2), video[k + 1:k + 2].permute(0, 3, 1, 2))
        assert_close_peak(doubled[2 * k + 1], mid[0].permute(1, 2, 0), 1e-5, f"middle {k}")
        assert not torch.equal(doubled[2 * k + 1], video[k])


def test_streamed_chunks_equal_whole_tensor_and_are_lazy(model):
    video = _video(7, seed=1)
    whole = double_frame_rate(model, video, batch_size=3)
    pulled = []

    def chunks():
        for part in (video[:2], video[2:2], video[2:6], video[6:]):
            pulled.append(len(part))
            yield part

    stream = double_frame_rate(model, chunks(), batch_size=3)
    first = next(stream)
    assert len(pulled) < 4, "the whole input was consumed before the first output chunk"
    streamed = torch.cat([first, *stream])
    assert streamed.shape == whole.shape == (14, 32, 48, 3)
    assert_close_peak(streamed, whole, 1e-5, "streamed vs whole")
    # Every streamed chunk stays small: at most batch_size pairs (2 frames each).
    sizes = [len(c) for c in iter_double_frame_rate(model, iter([video]), batch_size=3)]
    assert max(sizes) <= 6 and sum(sizes) == 14


@pytest.mark.parametrize("frames", [1, 2, 4, 7, 8, 9, 17])
def test_batches_spread_over_devices_give_the_serial_frames(model, frames):
    """Threads over cpu,cpu: the serial batches (3 pairs + 1 frame of overlap) in rounds of 2, same frames."""
    video = _video(frames, seed=frames)
    executor = ThreadExecutor(["cpu", "cpu"])
    serial = torch.cat(list(iter_double_frame_rate(model, video, batch_size=3)))
    split_chunks = list(iter_double_frame_rate_split(executor, executor.replicate(model), video, batch_size=3))
    assert torch.equal(torch.cat(split_chunks), serial)
    streamed = iter_double_frame_rate_split(executor, executor.replicate(model), iter([video[:3], video[3:]]),
                                            batch_size=3)
    assert torch.equal(torch.cat(list(streamed)), serial)
    assert max(len(chunk) for chunk in split_chunks) <= 6  # one batch per chunk: memory stays bounded


def test_single_frame(model):
    video = _video(1)
    doubled = double_frame_rate(model, video)
    assert doubled.shape == (2, 32, 48, 3)
    assert torch.equal(doubled[0], video[0]) and torch.equal(doubled[1], video[0])


def test_bad_inputs_are_clear_errors(model):
    with pytest.raises(ParameterError, match="empty"):
        double_frame_rate(model, torch.zeros(0, 32, 32, 3))
    with pytest.raises(ParameterError, match=r"\[N, H, W, 3\]"):
        double_frame_rate(model, torch.zeros(4, 3, 32, 32))
    with pytest.raises(ParameterError, match="batch_size"):
        double_frame_rate(model, _video(2), batch_size=0)
    with pytest.raises(ParameterError, match="same size"):
        list(double_frame_rate(model, iter([_video(2), _video(2, height=48)])))
    with pytest.raises(ParameterError, match="empty"):
        list(double_frame_rate(model, iter([])))


def test_full_size_model_matches_release_manifest():
    manifest = {k: v for k, v in json.loads((MANIFESTS / "rife_flownet.json").read_text()).items() if k != "__meta__"}
    with torch.device("meta"):
        state = IFNet().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    # Width and teacher input are read back from the shapes.
    with torch.device("meta"):
        rebuilt = build_rife({f"module.{k}": torch.empty(v, device="meta") for k, v in manifest.items()}, device="meta")
    assert rebuilt.block0.conv0[1][0].out_channels == 90 and rebuilt.block_tea.conv0[0][0].in_channels == 14


def test_state_dict_prefix_rules(golden):
    prefixed = golden["weights"]
    assert all(k.startswith("module.") for k in prefixed)
    bare = rife_state_dict(prefixed)
    assert set(bare) == {k[len("module."):] for k in prefixed}
    assert rife_state_dict(bare).keys() == bare.keys()  # already stripped: accepted as is
    mixed = dict(prefixed)
    mixed["block0.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="mixes"):
        rife_state_dict(mixed)
    with pytest.raises(WeightsError, match="not a RIFE flownet"):
        rife_state_dict({"encoder.weight": torch.zeros(1)})
    incomplete = dict(prefixed)
    del incomplete["module.block1.conv2.2.bias"]
    with pytest.raises(WeightsError, match="block1.conv2.2.bias"):
        build_rife(incomplete)
