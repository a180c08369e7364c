"""PNDM (Liu et al. 2022): Runge-Kutta warm-up (PRK) then 4th-order linear multistep (PLMS) on the DDIM transfer."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdrt.errors import SdrtError

from ._base import (
    BETA_SCHEDULES,
    TIMESTEP_SPACINGS,
    AlphaBarScheduler,
    SchedulerOutput,
    as_scalar_timestep,
    check_num_inference_steps,
    check_timesteps_in_range,
    spaced_timesteps,
)

# Adams-Bashforth weights for the PLMS step, by how many past outputs exist (newest first).
PLMS_WEIGHTS = {2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
PRK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # classic RK4 over the four PRK sub-steps


class PNDMScheduler(AlphaBarScheduler):
    """diffusers' PNDMScheduler in numpy (SD 1.x ships it with skip_prk_steps=True)."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction"),  # diffusers has no `sample` here either
        "timestep_spacing": TIMESTEP_SPACINGS,
    }
    pndm_order = 4

    def _setup(self) -> None:
        super()._setup()
        self._reset()

    def _reset(self) -> None:
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        T = self.config["num_train_timesteps"]
        n = check_num_inference_steps(type(self).__name__, num_inference_steps, T)
        if not self.config["skip_prk_steps"] and n < self.pndm_order:
            raise SdrtError(
                f"PNDMScheduler: num_inference_steps {n} is too few for the Runge-Kutta warm-up; "
                f"use at least {self.pndm_order} or skip_prk_steps=True"
            )
        spacing = self.config["timestep_spacing"]
        ascending = spaced_timesteps(spacing, T, n, self.config["steps_offset"])[::-1]
        ascending = (ascending.round() if spacing == "linspace" else ascending).astype(np.int64)
        if self.config["skip_prk_steps"]:
            # PLMS from the start; the second timestep repeats, as in the original implementation
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            half = T // n // 2
            prk = ascending[-self.pndm_order :].repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1]
            self.plms_timesteps = ascending[:-3][::-1]
        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        check_timesteps_in_range(type(self).__name__, self.timesteps, T)
        self.num_inference_steps = n
        self._reset()

    def scale_model_input(self, sample: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return sample

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One PRK sub-step while warming up, one PLMS step after."""
        self._check_step(model_output, timestep, sample)
        t = int(as_scalar_timestep(timestep))
        if self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            prev_sample = self._step_prk(model_output, t, sample)
        else:
            prev_sample = self._step_plms(model_output, t, sample)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False))

    def _step_prk(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        stage = self.counter % 4
        prev_t = t - (0 if self.counter % 2 else self.config["num_train_timesteps"] // self.num_inference_steps // 2)
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        if stage == 0:
            self.ets.append(model_output)
            self.cur_sample = sample
        if stage < 3:
            self.cur_model_output = self.cur_model_output + PRK_WEIGHTS[stage] * model_output
        else:
            model_output = self.cur_model_output + PRK_WEIGHTS[3] * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        return self._get_prev_sample(cur_sample, t, prev_t, model_output)

    def _step_plms(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        ratio = self.config["num_train_timesteps"] // self.num_inference_steps
        prev_t = t - ratio
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # the repeated timestep: a second-order correction of the first step
            prev_t, t = t, t + ratio

        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        else:
            weights = PLMS_WEIGHTS[len(self.ets)]
            model_output = sum(w * e for w, e in zip(weights, reversed(self.ets)))
        return self._get_prev_sample(sample, t, prev_t, model_output)

    def _get_prev_sample(self, sample: np.ndarray, t: int, prev_t: int, model_output: np.ndarray) -> np.ndarray:
        """PNDM eq. 11: the DDIM transfer phi(x_t, eps, t, t-delta) written for step sizes."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self._alpha_prod(prev_t)
        beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        sample_coeff = (alpha_prod_prev / alpha_prod_t) ** 0.5
        denom = alpha_prod_t * beta_prod_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_prev) ** 0.5
        return sample_coeff * sample - (alpha_prod_prev - alpha_prod_t) * model_output / denom
