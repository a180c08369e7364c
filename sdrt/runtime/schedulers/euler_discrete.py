"""Euler (Karras et al. 2022, Algorithm 2): first-order steps along the probability-flow ODE, optional churn."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerOutput, check_noise_shape, draw_noise
from ._kdiffusion import KDiffusionScheduler, denoised_from_output


class EulerDiscreteScheduler(KDiffusionScheduler):
    """diffusers' EulerDiscreteScheduler in numpy."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
        "interpolation_type": ("linear", "log_linear"),
        "use_karras_sigmas": (False, True),
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        "timestep_type": ("discrete",),
        "final_sigmas_type": ("zero", "sigma_min"),
    }

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """x_{i+1} = x_i + (sigma_{i+1} - sigma_hat) * (x_i - D(x_i)) / sigma_hat; churn raises sigma first."""
        sigma = self._begin_step(model_output, timestep, sample)
        check_noise_shape(type(self).__name__, noise, sample)
        sample = sample.astype(np.float32, copy=False)
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * np.float32(gamma + 1)
        if gamma > 0:
            eps = draw_noise(sample.shape, generator, noise) * np.float32(s_noise)
            sample = sample + eps * (sigma_hat**2 - sigma**2) ** 0.5

        # diffusers uses sigma_hat for epsilon but sigma for v-prediction; kept for equal numbers
        denoise_sigma = sigma_hat if self.config["prediction_type"] == "epsilon" else sigma
        x0 = denoised_from_output(self.config["prediction_type"], model_output, sample, denoise_sigma)
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[self._step_index + 1] - sigma_hat
        prev_sample = sample + derivative * dt
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False), pred_original_sample=x0)
