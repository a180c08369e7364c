"""What the VP multistep solvers (DPM-Solver++, UniPC) share: schedule, history reset, forward process.

Both keep diffusers' variance-exploding `sigmas` (sigma_k = sigma_t / alpha_t) as their table and step
over integer timesteps spaced by `multistep_timesteps`, or over Karras et al.'s sigmas. The solvers'
own maths (coefficients, predictor/corrector, order choice) stays in their modules.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.schedulers._base import (
    SchedulerMixin,
    broadcast_to,
    check_num_inference_steps,
    karras_sigmas,
    make_alphas_cumprod_finite,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    threshold_sample,
)

BOOL = (False, True)


def multistep_timesteps(config: dict[str, Any], n: int, last_timestep: int | None = None) -> np.ndarray:
    """Integer timesteps of the multistep solvers: n+1 points with the last (t=0) dropped, per spacing.

    A spacing that repeats a timestep (n close to the training steps) would make a zero-length step,
    h = 0, on which the multistep formulas divide by zero (diffusers returns NaN): refused.
    """
    train = config["num_train_timesteps"]
    last = train if last_timestep is None else last_timestep
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        timesteps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ratio = last // (n + 1)
        timesteps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + config["steps_offset"]
    else:  # trailing
        timesteps = np.arange(last, 0, -train / n).round().astype(np.int64) - 1
    if np.any(timesteps[1:] == timesteps[:-1]):
        raise SdrtError(
            f"timestep_spacing {spacing!r} repeats timesteps at {n} steps; use fewer steps or timestep_spacing 'trailing'"
        )
    return timesteps


def karras_schedule(train_sigmas: np.ndarray, n: int, sigma_min=None, sigma_max=None) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas, fractional timesteps) of Karras et al.'s rho=7 schedule between the training extremes."""
    lo = float(train_sigmas[0]) if sigma_min is None else float(sigma_min)
    hi = float(train_sigmas[-1]) if sigma_max is None else float(sigma_max)
    sigmas = karras_sigmas(lo, hi, n)
    return sigmas, sigma_to_t(sigmas, np.log(train_sigmas))


def vp_alpha_sigma(sigma: float) -> tuple[float, float]:
    """VP (alpha_t, sigma_t) of a variance-exploding sigma: alpha = 1/sqrt(1+sigma^2), sigma_t = sigma * alpha."""
    alpha = 1.0 / math.sqrt(float(sigma) ** 2 + 1.0)
    return alpha, float(sigma) * alpha


def half_log_snr(sigma: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) = -log(sigma); +inf at sigma = 0 (the clean end of the schedule)."""
    return -math.log(sigma) if sigma > 0 else math.inf


# model output -> data prediction x0 (DPM-Solver++ integrates x0) and -> noise prediction eps
TO_X0: dict[str, Callable] = {
    "epsilon": lambda out, x, alpha, sigma: (x - sigma * out) / alpha,
    "v_prediction": lambda out, x, alpha, sigma: alpha * x - sigma * out,
    "sample": lambda out, x, alpha, sigma: out,
}
TO_EPS: dict[str, Callable] = {
    "epsilon": lambda out, x, alpha, sigma: out,
    "v_prediction": lambda out, x, alpha, sigma: alpha * out + sigma * x,
    "sample": lambda out, x, alpha, sigma: (x - alpha * out) / sigma,
}


def alias(config: dict[str, Any], key: str, aliases: dict[str, str]) -> dict[str, Any]:
    """diffusers silently maps a sibling solver's value (e.g. UniPC's bh2 for DPM) to its own; so do we."""
    if config.get(key) in aliases:
        return {**config, key: aliases[config[key]]}
    return config


def check_steps_left(sched: SchedulerMixin) -> None:
    """A step past the end of the schedule (more steps than set, or a repeated first timestep) is refused."""
    if sched.step_index >= len(sched.timesteps):
        raise SdrtError(
            f"{type(sched).__name__}.step: the {len(sched.timesteps)}-step schedule is used up (step index "
            f"{sched.step_index}); call set_timesteps again, or set_begin_index(0) if the first timesteps repeat"
        )


def vp_add_noise(sched: SchedulerMixin, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
    """add_noise of the VP multistep solvers: alpha_t x0 + sigma_t noise from the schedule's sigma at each timestep.

    Before set_timesteps the schedule is the training one (all timesteps), as in diffusers.
    """
    timesteps = np.asarray(timesteps).reshape(-1)
    if sched.begin_index is None:
        indices = [sched.index_for_timestep(t) for t in timesteps]
    else:  # img2img: before the first step at begin_index, inpainting: after it at step_index
        start = sched.begin_index if sched.step_index is None else sched.step_index
        indices = [start] * len(timesteps)
    sigma = broadcast_to(sched.sigmas.astype(original.dtype)[indices], original.ndim)
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t * original + (sigma * alpha_t) * noise


class VPMultistepScheduler(SchedulerMixin):
    """Training table, inference schedule and history of a VP multistep solver; subclasses add the step maths.

    Hooks: `_setup_extra` (solver tables from the config), `_spaced_schedule` (the non-Karras timesteps),
    `_karras_schedule` (the Karras sigmas/timesteps and the final sigma_min), `_reset_history` (extend it).
    """

    def _setup(self) -> None:
        self.betas, acp = make_alphas_cumprod_finite(self.config)
        self.alphas_cumprod = acp
        self.train_sigmas = sigmas_from_alphas_cumprod(acp)
        self._setup_extra()
        self.init_noise_sigma = 1.0
        self.sigmas = self.train_sigmas
        self.timesteps = np.arange(self.config["num_train_timesteps"])[::-1].astype(np.int64)
        self._reset_history()

    def _setup_extra(self) -> None:
        """Solver-specific state built from the config at construction."""

    def _reset_history(self) -> None:
        """Forget the stored model outputs (one slot per solver order) and the warm-up count."""
        self.model_outputs: list[np.ndarray | None] = [None] * self.config["solver_order"]
        self.lower_order_nums = 0

    def _train_sigma_min(self) -> float:
        """The smallest training sigma, sqrt((1 - alpha_bar_0) / alpha_bar_0)."""
        acp0 = self.alphas_cumprod[0]
        return ((1 - acp0) / acp0) ** 0.5

    def _spaced_schedule(self, n: int) -> np.ndarray:
        """Integer timesteps by `timestep_spacing` (the default: the whole training range)."""
        return multistep_timesteps(self.config, n)

    def _karras_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(sigmas, integer timesteps, final sigma for final_sigmas_type sigma_min) of the Karras schedule."""
        raise NotImplementedError

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Build the inference schedule; `device` is accepted for diffusers' call signature and ignored."""
        cfg = self.config
        n = check_num_inference_steps(type(self).__name__, num_inference_steps, cfg["num_train_timesteps"])
        if cfg["use_karras_sigmas"]:  # karras sigmas replace the spacing; their timesteps may repeat harmlessly
            sigmas, timesteps, sigma_min = self._karras_schedule(n)
        else:
            timesteps = self._spaced_schedule(n)
            sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)
            sigma_min = self._train_sigma_min()
        last = {"zero": 0.0, "sigma_min": sigma_min}[cfg["final_sigmas_type"]]
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self._reset_history()
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """The multistep solvers feed the UNet the sample as is."""
        return sample

    def _x0_prediction(self, model_output: np.ndarray, sample: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
        """The data prediction x0 from the model output, dynamically thresholded when the config asks."""
        x0 = TO_X0[self.config["prediction_type"]](model_output, sample, alpha, sigma)
        if self.config["thresholding"]:
            x0 = threshold_sample(x0, self.config["dynamic_thresholding_ratio"], self.config["sample_max_value"])
        return x0

    def _start_multistep(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> int:
        """`_start_step`, then refuse a step past the end of the schedule; returns the step index."""
        i = self._start_step(model_output, timestep, sample)
        check_steps_left(self)
        return i

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """alpha_t x0 + sigma_t noise at the given schedule timesteps (the VP forward process)."""
        return vp_add_noise(self, original_samples, noise, timesteps)
