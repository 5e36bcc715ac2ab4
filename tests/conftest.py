"""Shared pytest fixtures; plain helpers (paths, golden comparison, media) live in helpers.py."""

from __future__ import annotations

import os

import pytest

# The ComfyUI server helpers are a plugin of the ComfyUI tests: let pytest rewrite their asserts.
pytest.register_assert_rewrite("comfyui_server")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: without it they are skipped (listed by -ra), never run on the CPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); none is visible to torch here")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
    return 2


@pytest.fixture(scope="session")
def portrait():
    """A 72x80 RGB picture (the smallest size the generation issue requires to work)."""
    import numpy as np

    rng = np.random.default_rng(3)
    img = np.full((80, 72, 3), 90, np.uint8)
    img[20:60, 18:54] = (200, 160, 140)  # a face-coloured block
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A complete tiny model folder (official layout) holding the golden fixtures' weights (so that
    tests can compare with the goldens; the default zoo, from seeds, has the same keys and shapes)."""
    from sonic.tools.zoo import write_tiny_zoo

    from helpers import GOLDEN

    return write_tiny_zoo(tmp_path_factory.mktemp("zoo") / "checkpoints", layout="official", fixtures_dir=GOLDEN)


@pytest.fixture(scope="session")
def golden_unet():
    """The tiny golden UNet with the official weights, loaded strictly from the 4 shards (read-only:
    tests that change an attribute put it back)."""
    import json

    from helpers import GOLDEN, golden_unet_state
    from sonic.models.unet import build_sonic_unet

    model = build_sonic_unet(json.loads((GOLDEN / "unet_forward" / "config.json").read_text())["unet_config"])
    model.load_state_dict(golden_unet_state(), strict=True)
    return model.eval()
