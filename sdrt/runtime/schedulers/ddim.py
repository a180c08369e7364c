"""DDIM (Song et al. 2020): the deterministic (eta=0) or partly stochastic non-Markovian sampler."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    AlphaBarScheduler,
    SchedulerOutput,
    as_scalar_timestep,
    check_noise_shape,
    check_num_inference_steps,
    check_timesteps_in_range,
    draw_noise,
    spaced_timesteps,
    x0_and_eps,
)


class DDIMScheduler(AlphaBarScheduler):
    """diffusers' DDIMScheduler in numpy; `eta` is a step() argument, as in diffusers."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def set_timesteps(self, num_inference_steps: int) -> None:
        T = self.config["num_train_timesteps"]
        n = check_num_inference_steps(type(self).__name__, num_inference_steps, T)
        spacing = self.config["timestep_spacing"]
        timesteps = spaced_timesteps(spacing, T, n, self.config["steps_offset"])
        self.timesteps = (timesteps.round() if spacing == "linspace" else timesteps).astype(np.int64)
        check_timesteps_in_range(type(self).__name__, self.timesteps, T)
        self.num_inference_steps = n

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """x_{t-1} from x_t: eq. 12 of the DDIM paper, with sigma_t = eta * sqrt(variance)."""
        self._check_step(model_output, timestep, sample)
        check_noise_shape(type(self).__name__, noise, sample)
        t = int(as_scalar_timestep(timestep))
        prev_t = t - self.config["num_train_timesteps"] // self.num_inference_steps
        alpha_prod_t, alpha_prod_prev = self.alphas_cumprod[t], self._alpha_prod(prev_t)
        beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev

        x0, eps = x0_and_eps(self.config["prediction_type"], model_output, sample, alpha_prod_t)
        x0 = self._clip_x0(x0)
        if use_clipped_model_output:
            eps = (sample - alpha_prod_t**0.5 * x0) / beta_prod_t**0.5

        variance = beta_prod_prev / beta_prod_t * (1 - alpha_prod_t / alpha_prod_prev)
        std_dev_t = np.float32(eta) * variance**0.5
        direction = (1 - alpha_prod_prev - std_dev_t**2) ** 0.5 * eps
        prev_sample = alpha_prod_prev**0.5 * x0 + direction
        if eta > 0:
            prev_sample = prev_sample + std_dev_t * draw_noise(sample.shape, generator, noise)
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False), pred_original_sample=x0)
