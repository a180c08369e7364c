"""DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095): DPM++ 2M / 3M and the SDE variant, in numpy.

Notation of the paper: VP noise schedule alpha_t, sigma_t; half log-SNR lambda_t = log(alpha_t / sigma_t);
step size h = lambda_t - lambda_s; x0_s the data prediction at s. The scheduler keeps diffusers'
variance-exploding `sigmas` (sigma_k = sigma_t / alpha_t) as its table, so lambda = -log(sigma_k).

Scalar coefficients are float64 (diffusers' are float32, and some of them, like (1 - e^-2h - 2h)/(2h)^2,
cancel catastrophically there for small h); the tensors stay float32, as in a torch pipeline.
The schedule, history and forward process it shares with UniPC are in `_multistep`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdrt.runtime.schedulers._base import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerOutput,
    check_noise_shape,
    draw_noise,
)

# The multistep helpers live in _multistep; re-exported here, where they were first defined.
from sdrt.runtime.schedulers._multistep import (  # noqa: F401
    BOOL,
    TO_EPS,
    TO_X0,
    VPMultistepScheduler,
    alias,
    check_steps_left,
    half_log_snr,
    karras_schedule,
    multistep_timesteps,
    vp_add_noise,
    vp_alpha_sigma,
)

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


class DPMSolverMultistepScheduler(VPMultistepScheduler):
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

    def _setup_extra(self) -> None:
        acp = self.alphas_cumprod
        self.lambda_t = np.log(np.sqrt(acp)) - np.log(np.sqrt(1 - acp))

    def _spaced_schedule(self, n: int) -> np.ndarray:
        """lambda_min_clipped trims the low-noise end, where lambda of the cosine schedule blows up."""
        clipped = int(np.searchsorted(self.lambda_t[::-1], self.config["lambda_min_clipped"]))
        return multistep_timesteps(self.config, n, self.config["num_train_timesteps"] - clipped)

    def _karras_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Training-range Karras sigmas; diffusers leaves the squaredcos timesteps unrounded (truncated)."""
        sigmas, t = karras_schedule(self.train_sigmas, n)
        timesteps = (t if self.config["beta_schedule"] == "squaredcos_cap_v2" else t.round()).astype(np.int64)
        return sigmas, timesteps, self._train_sigma_min()

    def _data_prediction(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        return self._x0_prediction(model_output, sample, *vp_alpha_sigma(self.sigmas[self._step_index]))

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
        self._start_multistep(model_output, timestep, sample)
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
