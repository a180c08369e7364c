"""Euler ancestral (k-diffusion's sample_euler_ancestral): Euler down to sigma_down, then fresh noise of sigma_up."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import BETA_SCHEDULES, TIMESTEP_SPACINGS, SchedulerOutput, check_noise_shape, draw_noise
from ._kdiffusion import KDiffusionScheduler, denoised_from_output


class EulerAncestralDiscreteScheduler(KDiffusionScheduler):
    """diffusers' EulerAncestralDiscreteScheduler in numpy; draws noise every step (`noise=` supplies it)."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction"),  # diffusers has no `sample` here either
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """sigma_up = sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2), sigma_down = sqrt(s_to^2 - sigma_up^2)."""
        sigma = self._begin_step(model_output, timestep, sample)
        check_noise_shape(type(self).__name__, noise, sample)
        sample = sample.astype(np.float32, copy=False)
        x0 = denoised_from_output(self.config["prediction_type"], model_output, sample, sigma)
        sigma_to = self.sigmas[self._step_index + 1]
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - x0) / sigma
        prev_sample = sample + derivative * (sigma_down - sigma)
        prev_sample = prev_sample + draw_noise(sample.shape, generator, noise) * sigma_up
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False), pred_original_sample=x0)
