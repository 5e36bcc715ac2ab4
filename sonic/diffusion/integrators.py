"""ODE integrators over a denoiser, in the k-diffusion shape.

Every sampler is `sample_xxx(denoiser, x, sigmas, *, callback=None)`; `denoiser(x, sigma, step=i)`
returns the denoised estimate of `x` at noise level `sigma` (float32), `step` being the index of
`sigma` in `sigmas`. Swapping samplers never touches the model. The integrators keep no state
outside the call (no scheduler object), so nothing is shared between threads or ranks.

`sigmas` is float32 (n+1,), decreasing, ending at 0 (`sonic.diffusion.schedule.make_schedule`:
the Karras table of SVD-xt).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..config import SAMPLERS
from ..errors import ParameterError


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, `(x - denoised) / sigma` (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def sample_euler(denoiser: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, *,
                 callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """Euler steps sigma_i -> sigma_{i+1} (Algorithm 2 of Karras et al. 2022 with s_churn = 0).

    The arithmetic is diffusers' `EulerDiscreteScheduler.step` in float32, which Sonic's official
    sampler runs: `x + (x - x0) / sigma * (sigma_next - sigma)`.
    """
    x = x.float()
    for i in range(sigmas.shape[0] - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma, step=i)
        x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})
    return x


def sample_dpmpp_2m(denoiser: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, *,
                    callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), one model call per step.

    In the log-SNR time t = -ln(sigma), with h = t_next - t:
        x_next = (sigma_next / sigma) * x - expm1(-h) * D
    where D is the denoised estimate for the first and the last step (sigma_next = 0), and
    otherwise the second-order multistep correction with r = h_prev / h:
        D = (1 + 1/(2r)) * denoised - 1/(2r) * denoised_prev.
    """
    x = x.float()
    previous = None  # denoised estimate of the step before
    for i in range(sigmas.shape[0] - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma, step=i)
        if sigma_next == 0:
            x = denoised  # the limit of the update for sigma_next -> 0
        else:
            t, t_next = -torch.log(sigma), -torch.log(sigma_next)
            h = t_next - t
            estimate = denoised
            if previous is not None:
                r = (t - (-torch.log(sigmas[i - 1]))) / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        previous = denoised
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})
    return x


def integrator(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function for a `--sampler` name."""
    table = {"euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m}
    if name not in table:
        raise ParameterError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return table[name]
