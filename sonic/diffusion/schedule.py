"""Karras/EDM sigma schedule and Euler v-prediction step of the SVD-xt scheduler (SPEC 6.1).

Reproduces diffusers' `EulerDiscreteScheduler` as configured by SVD-xt (Karras sigmas,
continuous timesteps `t = 0.25*ln(sigma)`, v-prediction, final sigma 0, `s_churn = 0`) bit for
bit in float32, including the img2img truncation by `i2i_noise_strength`. The arithmetic order
of every helper is the reference's: changing it (e.g. multiplying by a reciprocal instead of
dividing) changes the last bit of a quarter of the values.

Sigmas are noise standard deviations in latent units; "steps" are denoising steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import torch

from ..errors import ParameterError

DEFAULT_SIGMA_MIN = 0.002  # EDM / SVD-xt values, used when the config omits them
DEFAULT_SIGMA_MAX = 700.0
DEFAULT_RHO = 7.0  # diffusers hard-codes rho = 7 for Karras sigmas


@dataclass(frozen=True)
class KarrasSchedule:
    """The Karras sigma ramp `(smax^(1/rho) + j/(n-1)*(smin^(1/rho) - smax^(1/rho)))^rho`."""

    sigma_min: float = DEFAULT_SIGMA_MIN
    sigma_max: float = DEFAULT_SIGMA_MAX
    rho: float = DEFAULT_RHO

    @classmethod
    def from_config(cls, config: Mapping | None) -> "KarrasSchedule":
        """From a diffusers scheduler config dict (e.g. SVD-xt `scheduler_config.json`); missing keys -> defaults."""
        if config is None:
            return cls()
        if isinstance(config, KarrasSchedule):
            return config
        if not isinstance(config, Mapping):
            raise ParameterError(f"the scheduler config must be a dict, got {type(config).__name__}")
        if config.get("use_karras_sigmas") is False:
            raise ParameterError("the scheduler config has use_karras_sigmas=false; Sonic needs the SVD-xt Karras schedule")
        if config.get("prediction_type", "v_prediction") != "v_prediction":
            raise ParameterError(f"the scheduler config has prediction_type={config['prediction_type']!r}; "
                                 "Sonic's UNet predicts v ('v_prediction')")

        def value(key: str, default: float) -> float:
            raw = config.get(key)
            return default if raw is None else float(raw)

        schedule = cls(value("sigma_min", DEFAULT_SIGMA_MIN), value("sigma_max", DEFAULT_SIGMA_MAX),
                       value("rho", DEFAULT_RHO))
        if not 0 < schedule.sigma_min < schedule.sigma_max or schedule.rho <= 0:
            raise ParameterError(f"bad scheduler config: need 0 < sigma_min < sigma_max and rho > 0, got {schedule}")
        return schedule

    def sigmas(self, steps: int) -> torch.Tensor:
        """Full table for `steps` steps: float32 (steps+1,), decreasing, last value 0."""
        # float64 numpy maths exactly as diffusers, one cast to float32 at the end
        ramp = np.linspace(0, 1, steps)  # steps == 1 -> [0]: the single sigma is sigma_max
        min_inv_rho = self.sigma_min ** (1 / self.rho)
        max_inv_rho = self.sigma_max ** (1 / self.rho)
        sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** self.rho
        return torch.cat([torch.from_numpy(sigmas.astype(np.float32)), torch.zeros(1, dtype=torch.float32)])


class Schedule(NamedTuple):
    """The part of the schedule that is actually run (unpacks as `(sigmas, timesteps)`).

    sigmas: float32 (n+1,), sigma of every run step plus the final 0; step i goes sigmas[i] -> sigmas[i+1].
    timesteps: float32 (n,), the UNet timestep `0.25*ln(sigma)` of every run step.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def sigma_start(self) -> torch.Tensor:
        """0-d float32: the noise level of the initial latents."""
        return self.sigmas[0]


def run_steps(steps: int, strength: float) -> int:
    """Steps actually run, `min(int(steps*strength), steps)`; `ParameterError` when that is 0."""
    from ..config import SonicConfig  # the one place that owns the rule and its message

    if not isinstance(steps, int) or isinstance(steps, bool):
        raise ParameterError(f"inference_steps must be an integer, got {steps!r}")
    return SonicConfig(inference_steps=steps, i2i_noise_strength=strength).validate().run_steps


def make_schedule(config: Mapping | KarrasSchedule | None, steps: int, strength: float = 1.0) -> Schedule:
    """Sigmas/timesteps of the steps that run: the first `steps - run_steps` entries are skipped (SPEC 6.1)."""
    kept = run_steps(steps, strength)
    sigmas = KarrasSchedule.from_config(config).sigmas(steps)
    timesteps = 0.25 * torch.log(sigmas[:-1])  # float32 from the float32 sigmas, as the reference
    start = steps - kept
    return Schedule(sigmas[start:].clone(), timesteps[start:].clone())


def _sigma_like(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a 0-d float32 tensor on x's device (Python floats would be rounded differently)."""
    return torch.as_tensor(sigma, dtype=torch.float32, device=x.device)


def scale_model_input(x: torch.Tensor, sigma) -> torch.Tensor:
    """UNet input `x / sqrt(sigma^2 + 1)` (a division, computed in float32, returned in x's dtype)."""
    s = _sigma_like(sigma, x)
    return (x.float() / ((s**2 + 1) ** 0.5)).to(x.dtype)


def v_to_denoised(v: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
    """Denoised estimate x0 from a v-prediction, float32: `v*(-sigma/sqrt(sigma^2+1)) + x/(sigma^2+1)`."""
    s = _sigma_like(sigma, x)
    return v.float() * (-s / (s**2 + 1) ** 0.5) + (x.float() / (s**2 + 1))


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One Euler step sigma -> sigma_next (float32 maths, returned in x's dtype)."""
    s = _sigma_like(sigma, x)
    x32 = x.float()
    x0 = v_to_denoised(v, x32, s)
    derivative = (x32 - x0) / s
    dt = _sigma_like(sigma_next, x) - s
    return (x32 + derivative * dt).to(x.dtype)


def add_noise(ref_latent: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """Initial latents `ref + noise*sigma`, float32; a (1,C,h,w) ref broadcasts over the frames of (1,N,C,h,w) noise."""
    if ref_latent.dim() == noise.dim() - 1:
        ref_latent = ref_latent.unsqueeze(1)
    return ref_latent.float() + noise.float() * _sigma_like(sigma, noise)
