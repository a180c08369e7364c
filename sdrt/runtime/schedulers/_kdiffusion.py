"""What the sigma-parameterised samplers (Euler, Euler a, LMS) share, k-diffusion style.

They run the variance-exploding ODE x = x0 + sigma * eps: the model input is scaled by
1/sqrt(sigma^2 + 1), the denoised estimate comes from the model output, and the sampler moves
sigma down the schedule. The schedule is built here once, the way diffusers builds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import (
    SchedulerMixin,
    check_num_inference_steps,
    karras_sigmas,
    make_alphas_cumprod_finite,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
)


def denoised_from_output(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, sigma) -> np.ndarray:
    """x0 estimate D(x; sigma) for each UNet parameterisation (Karras et al. 2022, Table 1)."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "sample":
        return model_output
    c = sigma**2 + 1  # v_prediction
    return model_output * (-sigma / c**0.5) + sample / c


class KDiffusionScheduler(SchedulerMixin):
    """Builds sigmas/timesteps from the config; subclasses add `step` (and their own keys)."""

    def _setup(self) -> None:
        self.betas, alphas_cumprod = make_alphas_cumprod_finite(self.config)
        self.alphas_cumprod = alphas_cumprod
        train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
        self.sigmas = np.concatenate([train_sigmas[::-1], [0.0]]).astype(np.float32)
        T = self.config["num_train_timesteps"]
        self.timesteps = np.linspace(0, T - 1, T)[::-1].astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        """The initial noise scale: x_T ~ N(0, sigma_max^2), or sigma_max^2 + 1 with leading spacing (diffusers)."""
        max_sigma = float(self.sigmas.max())
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int) -> None:
        T = self.config["num_train_timesteps"]
        n = check_num_inference_steps(type(self).__name__, num_inference_steps, T)
        timesteps = spaced_timesteps(self.config["timestep_spacing"], T, n, self.config["steps_offset"])
        timesteps = timesteps.astype(np.float32)
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_sigmas = np.log(train_sigmas.astype(np.float64))

        if self.config.get("interpolation_type", "linear") == "log_linear":
            sigmas = np.exp(np.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]), n + 1))
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if self.config.get("use_karras_sigmas"):
            sigma_min, sigma_max = self.config.get("sigma_min"), self.config.get("sigma_max")
            sigma_min = float(sigmas[-1]) if sigma_min is None else sigma_min
            sigma_max = float(sigmas[0]) if sigma_max is None else sigma_max
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)

        last = train_sigmas[0] if self.config.get("final_sigmas_type", "zero") == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None
        self._reset_history()

    def _reset_history(self) -> None:
        """Multistep samplers forget their past derivatives here."""

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        """The UNet sees unit-variance input: x / sqrt(sigma^2 + 1)."""
        self._require_timesteps("scale_model_input")
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return (sample / (sigma**2 + 1) ** 0.5).astype(np.float32, copy=False)

    def _begin_step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> np.float32:
        """Validate, find the step index, return sigma at this step."""
        return self.sigmas[self._start_step(model_output, timestep, sample)]

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        return self._add_noise_sigmas(original, noise, timesteps)
