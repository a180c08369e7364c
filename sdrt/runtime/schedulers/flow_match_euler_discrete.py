"""Flow-matching Euler (SD3, SD3.5, Flux): x_next = x + (sigma_next - sigma) v, or the stochastic form."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError

from ._base import SchedulerOutput, as_scalar_timestep, draw_noise
from ._flow_match import (
    FlowMatchScheduler,
    check_one_sigma_form,
    check_steps_or_schedule,
    convert_sigmas,
    shifted,
    stretch_to_terminal,
    time_shift,
)


class FlowMatchEulerDiscreteScheduler(FlowMatchScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler in numpy (per-token timesteps aside: no image pipeline uses them)."""

    defaults = {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    }
    supported = {
        "use_dynamic_shifting": (False, True),
        "invert_sigmas": (False, True),
        "use_karras_sigmas": (False, True),
        "use_exponential_sigmas": (False, True),
        "use_beta_sigmas": (False, True),
        "time_shift_type": ("exponential", "linear"),
        "stochastic_sampling": (False, True),
    }

    def _setup(self) -> None:
        check_one_sigma_form(type(self).__name__, self.config)
        self._shift = self.config["shift"]
        super()._setup()

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    def set_timesteps(self, num_inference_steps: int | None = None, *, sigmas: Sequence[float] | None = None,
                      mu: float | None = None, timesteps: Sequence[float] | None = None) -> None:
        """The schedule: a line from sigma_max to sigma_min (or the caller's sigmas/timesteps), shifted by
        `shift` or by `mu` (use_dynamic_shifting), stretched to `shift_terminal`, optionally in Karras,
        exponential or beta form; then a final sigma 0 (1 with invert_sigmas)."""
        name = type(self).__name__
        cfg = self.config
        if cfg["use_dynamic_shifting"] and mu is None:
            raise SdrtError(f"{name}: use_dynamic_shifting needs mu; pass mu (calculate_shift of the image's "
                            "token count)")
        n = check_steps_or_schedule(name, num_inference_steps, sigmas, timesteps)
        T = cfg["num_train_timesteps"]
        given_timesteps = None if timesteps is None else np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if given_timesteps is None:
                base = np.linspace(self.sigma_max * T, self.sigma_min * T, n)
            else:
                base = given_timesteps
            schedule = base / T
        else:
            schedule = np.array(sigmas).astype(np.float32)
        if cfg["use_dynamic_shifting"]:
            schedule = time_shift(cfg["time_shift_type"], mu, schedule)
        else:
            schedule = shifted(schedule, self.shift)
        if cfg["shift_terminal"]:
            schedule = stretch_to_terminal(schedule, cfg["shift_terminal"])
        schedule = np.asarray(convert_sigmas(cfg, schedule, n)).astype(np.float32)
        steps = given_timesteps if given_timesteps is not None else schedule * np.float32(T)
        if cfg["invert_sigmas"]:
            schedule = (1.0 - schedule).astype(np.float32)
            steps = schedule * np.float32(T)
            last = np.ones(1, dtype=np.float32)
        else:
            last = np.zeros(1, dtype=np.float32)
        self.timesteps = steps.astype(np.float32)
        self.sigmas = np.concatenate([schedule, last]).astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray, *,
             generator: np.random.Generator | None = None, noise: np.ndarray | None = None) -> SchedulerOutput:
        """Euler along the velocity; with stochastic_sampling, re-noise the x0 estimate to sigma_next instead."""
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool):
            raise SdrtError(f"{type(self).__name__}.step: timestep {timestep} is an integer index; pass one of "
                            "scheduler.timesteps")
        as_scalar_timestep(timestep)
        index = self._start_step(model_output, timestep, sample, noise)
        sample = np.asarray(sample, dtype=np.float32)
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        if self.config["stochastic_sampling"]:
            x0 = sample - sigma * model_output
            prev_sample = (1.0 - sigma_next) * x0 + sigma_next * draw_noise(sample.shape, generator, noise)
        else:
            prev_sample = sample + (sigma_next - sigma) * model_output
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False))
