"""LCM (Luo et al. 2023): consistency-model steps; each predicts x0 through the boundary condition, then re-noises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.errors import SdrtError

from ._base import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    AlphaBarScheduler,
    SchedulerOutput,
    as_scalar_timestep,
    check_num_inference_steps,
    draw_noise,
    x0_and_eps,
)

SIGMA_DATA = 0.5  # the consistency-model data std in c_skip / c_out


@dataclass
class LCMSchedulerOutput(SchedulerOutput):
    """`denoised` is the model's clean estimate; the pipeline decodes it after the last step."""

    denoised: np.ndarray | None = None


class LCMScheduler(AlphaBarScheduler):
    """diffusers' LCMScheduler in numpy; `timestep_spacing` and `steps_offset` are accepted and unused, as there."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def set_timesteps(
        self, num_inference_steps: int, *, original_inference_steps: int | None = None, strength: float = 1.0
    ) -> None:
        """n timesteps picked evenly from the `original_inference_steps`-long LCM distillation schedule.

        `strength` < 1 (img2img) shortens that schedule first, as diffusers' LCM img2img does.
        """
        name, T = type(self).__name__, self.config["num_train_timesteps"]
        n = check_num_inference_steps(name, num_inference_steps, T)
        original = original_inference_steps or self.config["original_inference_steps"]
        if original > T:
            raise SdrtError(f"{name}: original_inference_steps {original} exceeds the {T} training steps; lower it")
        k = T // original
        origin = np.arange(1, int(original * strength) + 1) * k - 1  # the distillation schedule, ascending
        if n > len(origin) or n > original:
            raise SdrtError(
                f"{name}: num_inference_steps {n} exceeds the {len(origin)} steps of the LCM schedule "
                f"(original_inference_steps {original} x strength {strength}); use at most {len(origin)}"
            )
        origin = origin[::-1]
        indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices].astype(np.int64)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def get_scalings_for_boundary_condition_discrete(self, timestep: int) -> tuple[np.float32, np.float32]:
        """c_skip, c_out so that f(x, t) = c_skip x + c_out x0 is the identity at t = 0 (consistency boundary)."""
        scaled = np.float32(timestep) * np.float32(self.config["timestep_scaling"])
        c_skip = np.float32(SIGMA_DATA**2) / (scaled**2 + np.float32(SIGMA_DATA**2))
        c_out = scaled / (scaled**2 + np.float32(SIGMA_DATA**2)) ** 0.5
        return c_skip, c_out

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> LCMSchedulerOutput:
        """denoised = c_out x0 + c_skip x; then x_prev = sqrt(a_prev) denoised + sqrt(1 - a_prev) noise, except last."""
        next_index = self._start_step(model_output, timestep, sample, noise) + 1
        t = int(as_scalar_timestep(timestep))
        prev_t = int(self.timesteps[next_index]) if next_index < len(self.timesteps) else t
        alpha_prod_t, alpha_prod_prev = self.alphas_cumprod[t], self._alpha_prod(prev_t)

        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
        x0, _ = x0_and_eps(self.config["prediction_type"], model_output, sample, alpha_prod_t)
        x0 = self._clip_x0(x0)
        denoised = c_out * x0 + c_skip * sample

        if self._step_index != self.num_inference_steps - 1:
            eps = draw_noise(sample.shape, generator, noise)
            prev_sample = alpha_prod_prev**0.5 * denoised + (1 - alpha_prod_prev) ** 0.5 * eps
        else:
            prev_sample = denoised
        self._step_index += 1
        return LCMSchedulerOutput(
            prev_sample=prev_sample.astype(np.float32, copy=False), denoised=denoised.astype(np.float32, copy=False)
        )
