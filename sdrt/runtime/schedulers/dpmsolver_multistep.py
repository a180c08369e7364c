"""DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095): DPM++ 2M / 3M and the SDE variant, in numpy.

Notation of the paper: VP noise schedule alpha_t, sigma_t; half log-SNR lambda_t = log(alpha_t / sigma_t);
step size h = lambda_t - lambda_s; x0_s the data prediction at s. The scheduler keeps diffusers'
variance-exploding `sigmas` (sigma_k = sigma_t / alpha_t) as its table, so lambda = -log(sigma_k).

Scalar coefficients are float64 (diffusers' are float32, and some of them, like (1 - e^-2h - 2h)/(2h)^2,
cancel catastrophically there for small h); the tensors stay float32, as in a torch pipeline.
Also home of the multistep helpers UniPC shares (timestep spacing, model-output conversion).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.schedulers._base import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerMixin,
    SchedulerOutput,
    broadcast_to,
    check_noise_shape,
    check_num_inference_steps,
    draw_noise,
    karras_sigmas,
    make_alphas_cumprod,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    threshold_sample,
)

BOOL = (False, True)

# -- shared multistep helpers (UniPC imports these) ---------------------------------------------


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


# -- DPM-Solver++ coefficients ----------------------------------------------------------------------
# x_t = X * x_s + C0 * D0 + C1 * D1 + C2 * D2 + N * z, with D0 = x0_s and D1, D2 the divided differences
# of past x0 predictions (DPM-Solver++(2M), its 3M and SDE extensions). h is a numpy float64: h = inf on
# the step onto sigma = 0 and h = 0 on a zero-length step give inf/nan in the terms that step does not use.


def _ode_coefficients(h, alpha_t, sigma_t, sigma_s0, solver_type):
    phi = np.expm1(-h)  # e^-h - 1
    c1 = {"midpoint": -0.5 * alpha_t * phi, "heun": alpha_t * (phi / h + 1)}[solver_type]
    c2 = -alpha_t * ((phi + h) / h**2 - 0.5)
    return sigma_t / sigma_s0, -alpha_t * phi, c1, c2, 0.0


def _sde_coefficients(h, alpha_t, sigma_t, sigma_s0, solver_type):
    psi = -np.expm1(-2 * h)  # 1 - e^-2h
    c1 = {"midpoint": 0.5 * alpha_t * psi, "heun": alpha_t * (psi / (-2 * h) + 1)}[solver_type]
    c2 = alpha_t * ((psi - 2 * h) / (2 * h) ** 2 - 0.5)
    return sigma_t / sigma_s0 * np.exp(-h), alpha_t * psi, c1, c2, sigma_t * np.sqrt(psi)


_COEFFICIENTS = {"dpmsolver++": _ode_coefficients, "sde-dpmsolver++": _sde_coefficients}


class DPMSolverMultistepScheduler(SchedulerMixin):
    """DPM++ 2M (solver_order 2), 3M (3), DDIM-equivalent first order (1); `sde-dpmsolver++` adds noise."""

    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
        "solver_order": (1, 2, 3),
        "algorithm_type": tuple(_COEFFICIENTS),
        "solver_type": ("midpoint", "heun"),
        "final_sigmas_type": ("zero", "sigma_min"),
        "variance_type": (None,),
        "thresholding": BOOL,
        "lower_order_final": BOOL,
        "euler_at_final": BOOL,
        "use_karras_sigmas": BOOL,
        "rescale_betas_zero_snr": BOOL,
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        "use_lu_lambdas": (False,),
        "use_flow_sigmas": (False,),
        "use_dynamic_shifting": (False,),
    }

    def __init__(self, **config: Any):
        config = alias(config, "solver_type", {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"})
        super().__init__(**config)

    def _setup(self) -> None:
        self.betas, acp = make_alphas_cumprod(self.config)
        if self.config["rescale_betas_zero_snr"]:
            acp[-1] = 2.0**-24  # zero SNR exactly would make the first sigma infinite
        self.alphas_cumprod = acp
        self.train_sigmas = sigmas_from_alphas_cumprod(acp)
        self.lambda_t = np.log(np.sqrt(acp)) - np.log(np.sqrt(1 - acp))
        self.init_noise_sigma = 1.0
        self.sigmas = self.train_sigmas
        self.timesteps = np.arange(self.config["num_train_timesteps"])[::-1].astype(np.int64)
        self._reset_history()

    def _reset_history(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config["solver_order"]
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Build the inference schedule; `device` is accepted for diffusers' call signature and ignored."""
        cfg = self.config
        n = check_num_inference_steps(type(self).__name__, num_inference_steps, cfg["num_train_timesteps"])
        # lambda_min_clipped trims the low-noise end, where lambda of the cosine schedule blows up
        clipped = int(np.searchsorted(self.lambda_t[::-1], cfg["lambda_min_clipped"]))
        if cfg["use_karras_sigmas"]:  # karras sigmas replace the spacing; their timesteps may repeat harmlessly
            sigmas, t = karras_schedule(self.train_sigmas, n)
            timesteps = (t if cfg["beta_schedule"] == "squaredcos_cap_v2" else t.round()).astype(np.int64)
        else:
            timesteps = multistep_timesteps(cfg, n, cfg["num_train_timesteps"] - clipped)
            sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)
        acp0 = self.alphas_cumprod[0]
        last = {"zero": 0.0, "sigma_min": ((1 - acp0) / acp0) ** 0.5}[cfg["final_sigmas_type"]]
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self._reset_history()
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """The multistep solvers feed the UNet the sample as is."""
        return sample

    def _data_prediction(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        alpha, sigma = vp_alpha_sigma(self.sigmas[self._step_index])
        x0 = TO_X0[self.config["prediction_type"]](model_output, sample, alpha, sigma)
        if self.config["thresholding"]:
            x0 = threshold_sample(x0, self.config["dynamic_thresholding_ratio"], self.config["sample_max_value"])
        return x0

    def _step_order(self) -> int:
        """The order this step can afford: warm-up from 1, and lower order near the end for short schedules."""
        cfg, i, n = self.config, self._step_index, len(self.timesteps)
        short = cfg["lower_order_final"] and n < 15
        first_order_end = i == n - 1 and (cfg["euler_at_final"] or short or cfg["final_sigmas_type"] == "zero")
        # a zero-length step (karras sigmas ending on sigma_min, then final_sigmas_type sigma_min) is the
        # identity, which only the first-order formula computes: the others divide by h = 0 (NaN in diffusers)
        zero_length = self.sigmas[i + 1] == self.sigmas[i]
        if cfg["solver_order"] == 1 or self.lower_order_nums < 1 or first_order_end or zero_length:
            return 1
        if cfg["solver_order"] == 2 or self.lower_order_nums < 2 or (i == n - 2 and short):
            return 2
        return 3

    def _update(self, order: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """One DPM-Solver++ update from sigmas[i] to sigmas[i+1] with the last `order` x0 predictions."""
        i, sig = self._step_index, self.sigmas
        alpha_t, sigma_t = vp_alpha_sigma(sig[i + 1])
        sigma_s0 = vp_alpha_sigma(sig[i])[1]
        lam = [half_log_snr(sig[i + 1 - k]) for k in range(order + 1)]  # lambda_t, lambda_s0, lambda_s1, ...
        h = np.float64(lam[0] - lam[1])
        m = self.model_outputs[::-1][:order]  # x0 at s0, s1, s2
        solver_type = "heun" if order == 3 else self.config["solver_type"]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            coefficients = _COEFFICIENTS[self.config["algorithm_type"]](h, alpha_t, sigma_t, sigma_s0, solver_type)
        c_x, c0, c1, c2, c_noise = map(float, coefficients)  # python floats keep the tensors float32
        x_t = c_x * x + c0 * m[0]
        if order == 2:
            r0 = float((lam[1] - lam[2]) / h)
            x_t = x_t + c1 * ((1 / r0) * (m[0] - m[1]))
        if order == 3:
            r0, r1 = float((lam[1] - lam[2]) / h), float((lam[2] - lam[3]) / h)
            d1_0, d1_1 = (1 / r0) * (m[0] - m[1]), (1 / r1) * (m[1] - m[2])
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (1 / (r0 + r1)) * (d1_0 - d1_1)
            x_t = x_t + c1 * d1 + c2 * d2
        if noise is not None:
            x_t = x_t + c_noise * noise
        return x_t

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """Advance one step; the SDE variant draws its noise from `generator`, or takes `noise` as given."""
        self._check_step(model_output, timestep, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        check_steps_left(self)
        sample = np.asarray(sample, dtype=np.float32)
        order = self._step_order()
        x0 = self._data_prediction(np.asarray(model_output, dtype=np.float32), sample)
        self.model_outputs = self.model_outputs[1:] + [x0]
        z = None
        if self.config["algorithm_type"].startswith("sde-"):
            check_noise_shape(type(self).__name__, noise, sample)
            z = draw_noise(sample.shape, generator, noise)
        prev_sample = self._update(order, sample, z).astype(np.float32, copy=False)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config["solver_order"])
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """alpha_t x0 + sigma_t noise at the given schedule timesteps (the VP forward process)."""
        return vp_add_noise(self, original_samples, noise, timesteps)


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
