"""LMS (k-diffusion's sample_lms): linear multistep over the last `order` derivatives of the ODE."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.polynomial import polynomial as P

from ._base import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerOutput
from ._kdiffusion import KDiffusionScheduler, denoised_from_output


class LMSDiscreteScheduler(KDiffusionScheduler):
    """diffusers' LMSDiscreteScheduler in numpy (no scipy: the coefficients are exact polynomial integrals)."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
        "use_karras_sigmas": (False, True),
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
    }

    def _reset_history(self) -> None:
        self.derivatives: list[np.ndarray] = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of past point `current_order`."""
        sigmas = self.sigmas.astype(np.float64)
        basis = np.array([1.0])
        for k in range(order):
            if k != current_order:
                denom = sigmas[t - current_order] - sigmas[t - k]
                basis = P.polymul(basis, np.array([-sigmas[t - k], 1.0]) / denom)
        antiderivative = P.polyint(basis)
        return float(P.polyval(sigmas[t + 1], antiderivative) - P.polyval(sigmas[t], antiderivative))

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        order: int = 4,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """x_{i+1} = x_i + sum_j c_j d_{i-j}, d = (x - D(x)) / sigma, over up to `order` past derivatives."""
        sigma = self._begin_step(model_output, timestep, sample)
        x0 = denoised_from_output(self.config["prediction_type"], model_output, sample, sigma)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(self._step_index + 1, order)
        coeffs = [self.get_lms_coefficient(order, self._step_index, j) for j in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False), pred_original_sample=x0)
