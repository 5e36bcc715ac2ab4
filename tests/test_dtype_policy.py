"""The dtype policy of issue 2: fp16/bf16/fp32 or "auto" (bf16 where supported, fp32 on CPU, never fp16 on CPU)."""

from __future__ import annotations

import pytest
import torch

from sonic import SonicPipeline
from sonic.devices import resolve_dtype
from sonic.errors import ParameterError, SonicError

CHOICES = ("auto", "fp32", "bf16", "fp16")


@pytest.mark.parametrize("dtype", ["auto", None])
def test_auto_is_fp32_on_cpu(dtype):
    assert resolve_dtype(dtype, "cpu") is torch.float32
    assert resolve_dtype(dtype, torch.device("cpu")) is torch.float32


@pytest.mark.parametrize("name, expected", [
    ("fp32", torch.float32), ("float32", torch.float32), ("FP32", torch.float32),
    ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
    (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
])
def test_names_and_torch_dtypes_map_on_cpu(name, expected):
    assert resolve_dtype(name, "cpu") is expected


@pytest.mark.parametrize("name", ["fp16", "float16", "half", torch.float16])
def test_fp16_names_mean_float16_off_the_cpu(name):
    """No GPU here: the meta device is not a CPU, so it shows what fp16 maps to where it is allowed."""
    assert resolve_dtype(name, "meta") is torch.float16


@pytest.mark.parametrize("name", ["fp16", "FP16", "float16", "half", torch.float16])
def test_fp16_on_cpu_is_refused_with_the_alternatives(name):
    with pytest.raises(ParameterError) as error:
        resolve_dtype(name, "cpu")
    message = str(error.value)
    assert "fp16" in message and "CPU" in message and "fp32" in message and "bf16" in message


@pytest.mark.parametrize("name", ["int8", "fp8", "", "float64"])
def test_unknown_name_is_refused_listing_the_choices(name):
    with pytest.raises(ParameterError, match=repr(name)) as error:
        resolve_dtype(name, "cpu")
    assert all(choice in str(error.value) for choice in CHOICES)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, torch.uint8])
def test_unsupported_torch_dtype_is_refused_listing_the_choices(dtype):
    with pytest.raises(ParameterError, match="unsupported dtype") as error:
        resolve_dtype(dtype, "cpu")
    assert all(choice in str(error.value) for choice in CHOICES)


def test_errors_are_sonic_errors():
    assert issubclass(ParameterError, SonicError)


@pytest.mark.parametrize("dtype, message", [("fp16", "fp16 on the CPU"), ("int4", "unknown dtype")])
def test_from_pretrained_refuses_the_dtype_before_looking_for_weights(tmp_path, dtype, message):
    """The dtype is checked first: a missing models folder would otherwise hide the real mistake."""
    with pytest.raises(ParameterError, match=message):
        SonicPipeline.from_pretrained(tmp_path / "no-models-here", device="cpu", dtype=dtype)
    assert list(tmp_path.iterdir()) == []
