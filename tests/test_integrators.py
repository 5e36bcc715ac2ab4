"""Euler and DPM-Solver++(2M) against hand-computed steps, and their convergence on the tiny zoo."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import FACE, SR, speech_like
from sonic.diffusion.integrators import integrator, sample_dpmpp_2m, sample_euler
from sonic.errors import ParameterError


def scripted(values):
    """A denoiser that returns the given x0 at each step, whatever x is, and records its calls."""
    calls = []

    def denoiser(x, sigma, *, step):
        calls.append((float(sigma), step))
        return torch.full_like(x, values[step])

    return denoiser, calls


def test_dpmpp_2m_two_steps_by_hand():
    # sigmas 4 -> 2 -> 0.5: h0 = ln 2, h1 = 2 ln 2, r = h0 / h1 = 1/2, so 1/(2r) = 1.
    # step 0 (first order): x1 = (2/4) * 4 - expm1(-ln 2) * 1 = 2 + 0.5 = 2.5
    # step 1: D = (1 + 1) * 3 - 1 * 1 = 5;  x2 = (0.5/2) * 2.5 - expm1(-2 ln 2) * 5 = 0.625 + 0.75 * 5 = 4.375
    denoiser, calls = scripted([1.0, 3.0])
    x = sample_dpmpp_2m(denoiser, torch.full((2, 3), 4.0), torch.tensor([4.0, 2.0, 0.5]))
    assert torch.allclose(x, torch.full((2, 3), 4.375), rtol=0, atol=1e-6)
    assert calls == [(4.0, 0), (2.0, 1)]
    # equal steps (r = 1): D = 1.5 * 3 - 0.5 * 1 = 4; x2 = 0.5 * 2.5 + 0.5 * 4 = 3.25
    denoiser, _ = scripted([1.0, 3.0])
    x = sample_dpmpp_2m(denoiser, torch.full((1,), 4.0), torch.tensor([2.0, 1.0, 0.5]))
    assert x.item() == pytest.approx(3.25, abs=1e-6)
    # the last step to sigma 0 returns the denoised estimate itself
    denoiser, _ = scripted([1.0, 3.0, 7.0])
    assert sample_dpmpp_2m(denoiser, torch.full((1,), 4.0), torch.tensor([4.0, 2.0, 0.5, 0.0])).item() == 7.0


def test_euler_two_steps_by_hand():
    # x1 = 4 + (4 - 1)/2 * (1 - 2) = 2.5;  x2 = 2.5 + (2.5 - 3)/1 * (0.5 - 1) = 2.75
    denoiser, _ = scripted([1.0, 3.0])
    assert sample_euler(denoiser, torch.full((1,), 4.0), torch.tensor([2.0, 1.0, 0.5])).item() == pytest.approx(2.75)


def test_dpmpp_2m_is_exact_where_the_denoiser_is_constant():
    """With D(x, sigma) = c the ODE solution is c + (x - c) * sigma / sigma_0: both solvers' log-SNR
    forms are exact for it, Euler is exact too (linear in sigma), at any step count."""
    sigmas = torch.tensor([80.0, 20.0, 3.0, 0.7, 0.1])
    for run in (sample_euler, sample_dpmpp_2m):
        denoiser, _ = scripted([0.3] * 4)
        x = run(denoiser, torch.full((1,), 5.0), sigmas)
        assert x.item() == pytest.approx(0.3 + (5.0 - 0.3) * 0.1 / 80.0, rel=1e-5)


def test_unknown_sampler_is_a_parameter_error():
    assert integrator("euler") is sample_euler and integrator("dpmpp_2m") is sample_dpmpp_2m
    with pytest.raises(ParameterError, match="unknown sampler 'ddim'"):
        integrator("ddim")


def test_convergence_table_on_the_tiny_zoo(tiny_zoo, portrait, torch_threads):
    from sonic import SonicPipeline
    from sonic.tools.convergence import convergence_table, format_convergence

    pipe = SonicPipeline.from_pretrained(tiny_zoo, device="cpu", dtype="fp32", face_detector=False)
    rows = convergence_table(pipe, portrait, (speech_like(0.4), SR), steps=(3, 12), reference_steps=24,
                             shift_offsets=(0,), face_box=FACE, min_resolution=64)
    table = format_convergence(rows)
    assert table.splitlines()[0] == "| window shift | sampler | 3 steps | 12 steps |"
    for sampler in ("euler", "dpmpp_2m"):
        errors = [r["mean_abs_error"] for r in rows if r["sampler"] == sampler]
        assert all(math.isfinite(e) for e in errors)
        assert errors[-1] < errors[0], f"{sampler}: more steps should land closer to the fine solution: {errors}"
