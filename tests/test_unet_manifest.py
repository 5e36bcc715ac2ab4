"""The full-size Sonic UNet (built on the meta device, nothing allocated) has exactly the keys and shapes of
the official `unet.pth`; the stock diffusers SVD-xt UNet has the stock keys; they differ by the 64 adapter
keys. Also the "this looks like the stock SVD UNet" diagnosis for the weights loader."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MANIFESTS, SVD_CONFIGS

from sonic.models.unet import adapter_keys, build_sonic_unet
from sonic.weights import hint_stock_svd_unet, identify_weights


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((MANIFESTS / name).read_text())
    return {k: tuple(v) for k, v in data.items() if k != "__meta__"}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def svd_config() -> dict:
    return json.loads((SVD_CONFIGS / "unet" / "config.json").read_text())


@pytest.fixture(scope="module")
def full_unet():
    with torch.device("meta"):
        return build_sonic_unet(svd_config())


def test_full_size_keys_and_shapes_equal_unet_pth(full_unet):
    expected = manifest("unet.json")
    actual = shapes(full_unet)
    assert sorted(set(actual) - set(expected)) == [] and sorted(set(expected) - set(actual)) == []
    assert actual == expected
    assert len(actual) == 1492
    assert sum(p.numel() for p in full_unet.parameters()) == 1_575_741_162
    assert all(p.is_meta for p in full_unet.parameters()) and not list(full_unet.buffers())


def test_stock_unet_and_adapter_difference():
    from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel

    config = {k: v for k, v in svd_config().items() if not k.startswith("_")}
    with torch.device("meta"):
        stock = shapes(UNetSpatioTemporalConditionModel(**config))
        sonic = shapes(build_sonic_unet(svd_config()))
    assert stock == manifest("svd_unet_stock.json")
    diff = json.loads((MANIFESTS / "unet_adapter_diff.json").read_text())
    added = {k: tuple(v) for k, v in diff["added_by_add_ip_adapters"].items()}
    assert {k: v for k, v in sonic.items() if k not in stock} == added
    assert all(sonic[k] == v for k, v in stock.items())  # nothing removed or reshaped
    assert sorted(adapter_keys(sonic)) == sorted(added) and len(added) == 64


def test_stock_svd_unet_diagnosis():
    """The weights loader tells Sonic's unet.pth from the stock SVD UNet by its keys."""
    sonic, stock = manifest("unet.json"), manifest("svd_unet_stock.json")
    assert identify_weights(sonic) == "unet" and hint_stock_svd_unet(sonic) is None
    assert identify_weights(stock) == "stock_svd_unet"
    assert "stock SVD UNet" in hint_stock_svd_unet(stock)
    # single-file SVD checkpoints (svd_xt.safetensors) use the original SGM names
    sgm = {"model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3), "conditioner.embedders.0.x": (1,)}
    assert "svd_xt.safetensors" in hint_stock_svd_unet(sgm)
    assert hint_stock_svd_unet(manifest("audio2token.json")) is None
    assert hint_stock_svd_unet({}) is None
