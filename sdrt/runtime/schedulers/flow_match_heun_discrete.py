"""Flow-matching Heun (Karras et al. 2022, Algorithm 2 on the rectified-flow ODE): two model calls a step."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdrt.errors import SdrtError

from ._base import SchedulerOutput, as_scalar_timestep, draw_noise
from ._flow_match import FlowMatchScheduler, check_steps_or_schedule, shifted


class FlowMatchHeunDiscreteScheduler(FlowMatchScheduler):
    """diffusers' FlowMatchHeunDiscreteScheduler in numpy.

    Every sigma after the first appears twice in the schedule: the first call at a sigma takes an Euler
    step (first order), the second corrects it with the mean of both slopes."""

    defaults = {"num_train_timesteps": 1000, "shift": 1.0}
    order = 2

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = check_steps_or_schedule(type(self).__name__, num_inference_steps, None, None)
        T = self.config["num_train_timesteps"]
        base = np.linspace(self.sigma_max * T, self.sigma_min * T, n)
        sigmas = shifted(base / T, self.config["shift"]).astype(np.float32)
        timesteps = sigmas * np.float32(T)
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(np.float32)
        sigmas = np.concatenate([sigmas, np.zeros(1, dtype=np.float32)])
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]]).astype(np.float32)
        self.num_inference_steps = n
        self._prev_derivative = self._dt = self._first_sample = None
        self._step_index = None
        self._begin_index = None

    @property
    def state_in_first_order(self) -> bool:
        return self._dt is None

    def scale_noise(self, sample: np.ndarray, timestep: Any, noise: np.ndarray) -> np.ndarray:
        """sigma noise + (1 - sigma) sample at the current step (diffusers' Heun finds the step index here)."""
        self._require_timesteps("scale_noise")
        if self._step_index is None:
            self._init_step_index(np.asarray(timestep).reshape(-1)[0])
        sigma = self.sigmas[self._step_index]
        return sigma * noise + (1.0 - sigma) * sample

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray, *, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: np.random.Generator | None = None, noise: np.ndarray | None = None) -> SchedulerOutput:
        """First call: Euler to sigma_next, remembering the slope; second: Heun's average slope from the
        remembered sample. `s_churn` raises sigma first (noise from `noise`, else `generator`)."""
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool):
            raise SdrtError(f"{type(self).__name__}.step: timestep {timestep} is an integer index; pass one of "
                            "scheduler.timesteps")
        as_scalar_timestep(timestep)
        index = self._start_step(model_output, timestep, sample, noise)
        sample = np.asarray(sample, dtype=np.float32)
        first = self.state_in_first_order
        sigma, sigma_next = (self.sigmas[index], self.sigmas[index + 1]) if first else \
            (self.sigmas[index - 1], self.sigmas[index])
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * np.float32(gamma + 1)
        if gamma > 0:
            eps = draw_noise(model_output.shape, generator, noise) * np.float32(s_noise)
            sample = sample + eps * (sigma_hat**2 - sigma**2) ** 0.5
        if first:
            denoised = sample - model_output * sigma
            derivative = (sample - denoised) / sigma_hat
            dt = sigma_next - sigma_hat
            self._prev_derivative, self._dt, self._first_sample = derivative, dt, sample
        else:
            denoised = sample - model_output * sigma_next
            derivative = np.float32(0.5) * (self._prev_derivative + (sample - denoised) / sigma_next)
            dt, sample = self._dt, self._first_sample
            self._prev_derivative = self._dt = self._first_sample = None
        prev_sample = sample + derivative * dt
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False))
