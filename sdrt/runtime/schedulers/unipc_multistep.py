"""UniPC (Zhao et al. 2023, arXiv:2302.04867): the unified predictor-corrector multistep solver, in numpy.

Each step first corrects the current sample with UniC (using the model output just computed at it),
then predicts the next one with UniP; both are the paper's B(h) updates (Algorithm 2 / 3):

    x_t = sigma_t/sigma_s x_s - alpha_t h*phi_1(h) m_s - alpha_t B(h) sum_k rho_k D_k     (data prediction)

with D_k = (m_{s_k} - m_s) / r_k, r_k = (lambda_{s_k} - lambda_s) / h and rho solving R rho = b
(R the Vandermonde matrix of r_k, b_k = h phi_{k+1}(h) k! / B(h)). bh1: B(h) = h; bh2: B(h) = e^h - 1.
Scalars (h, r_k, the solve for rho) are float64, the tensors float32, as in the DPM-Solver++ port.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.schedulers._base import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerOutput
from sdrt.runtime.schedulers._multistep import (
    BOOL,
    TO_EPS,
    VPMultistepScheduler,
    alias,
    half_log_snr,
    karras_schedule,
    vp_alpha_sigma,
)

_B_OF_H = {"bh1": lambda hh: hh, "bh2": math.expm1}


class UniPCMultistepScheduler(VPMultistepScheduler):
    """UniPC-p with the B(h) variants bh1 / bh2, on data (`predict_x0`) or noise prediction."""

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
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    }
    supported = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
        "solver_type": tuple(_B_OF_H),
        "final_sigmas_type": ("zero", "sigma_min"),
        "solver_p": (None,),
        "thresholding": BOOL,
        "predict_x0": BOOL,
        "lower_order_final": BOOL,
        "use_karras_sigmas": BOOL,
        "rescale_betas_zero_snr": BOOL,
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        "use_flow_sigmas": (False,),
        "use_dynamic_shifting": (False,),
        "shift_terminal": (None,),
    }

    def __init__(self, **config: Any):
        config = alias(config, "solver_type", {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"})
        order = config.get("solver_order", 2)
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
            raise SdrtError(f"UniPCMultistepScheduler: solver_order={order!r} is invalid; use an integer >= 1 (2 is usual)")
        skip = config.get("disable_corrector", [])
        if not isinstance(skip, (list, tuple)) or not all(isinstance(k, (int, np.integer)) for k in skip):
            raise SdrtError(f"UniPCMultistepScheduler: disable_corrector={skip!r} is invalid; use a list of step indices")
        super().__init__(**config)

    def _setup_extra(self) -> None:
        self.predict_x0 = bool(self.config["predict_x0"])
        self.disable_corrector = list(self.config["disable_corrector"])

    def _reset_history(self) -> None:
        super()._reset_history()
        self.last_sample: np.ndarray | None = None
        self.this_order = 1

    def _karras_schedule(self, n: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Karras sigmas between the config's sigma_min/sigma_max (training extremes when unset), ending there."""
        sigmas, t = karras_schedule(self.train_sigmas, n, self.config["sigma_min"], self.config["sigma_max"])
        return sigmas, t.round().astype(np.int64), sigmas[-1]

    def _convert(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The quantity UniPC integrates: the data prediction x0, or the noise prediction when predict_x0 is off."""
        alpha, sigma = vp_alpha_sigma(self.sigmas[self._step_index])
        if not self.predict_x0:
            return TO_EPS[self.config["prediction_type"]](model_output, sample, alpha, sigma)
        return self._x0_prediction(model_output, sample, alpha, sigma)

    def _bh_update(self, x: np.ndarray, j: int, order: int, model_t: np.ndarray | None = None) -> np.ndarray:
        """B(h) update from sigmas[j] to sigmas[j+1] over the last `order` stored outputs.

        UniP (model_t None) uses the order-1 differences D_k; UniC also uses model_t, the output at the target.
        """
        sig, outs = self.sigmas, self.model_outputs
        alpha_t, sigma_t = vp_alpha_sigma(sig[j + 1])
        alpha_s0, sigma_s0 = vp_alpha_sigma(sig[j])
        lam_s0 = half_log_snr(sig[j])
        h = half_log_snr(sig[j + 1]) - lam_s0
        m0 = outs[-1]
        rks = [(half_log_snr(sig[j - k]) - lam_s0) / h for k in range(1, order)] + [1.0]
        d1s = [(outs[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)]

        hh = -h if self.predict_x0 else h
        h_phi_1 = math.expm1(hh)  # h phi_1(h) = e^h - 1
        b_h = _B_OF_H[self.config["solver_type"]](hh)
        h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
        for k in range(1, order + 1):  # b_k = h phi_{k+1}(h) k! / B(h), phi by its recurrence
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R = np.array([[r ** (k - 1) for r in rks] for k in range(1, order + 1)])
        b = np.array(b)

        if model_t is None:  # predictor: rho_p from the first order-1 equations (1/2 at order 2)
            rhos = {1: [], 2: [0.5]}.get(order) or np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            terms = list(zip(rhos, d1s))
        else:  # corrector: all `order` equations, the last unknown weighs D_t = model_t - m0
            rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
            terms = list(zip(rhos[:-1], d1s)) + [(rhos[-1], model_t - m0)]

        if self.predict_x0:
            x_t, scale = sigma_t / sigma_s0 * x - (alpha_t * h_phi_1) * m0, alpha_t * b_h
        else:
            x_t, scale = alpha_t / alpha_s0 * x - (sigma_t * h_phi_1) * m0, sigma_t * b_h
        if terms:
            x_t = x_t - scale * sum(rho * d for rho, d in terms)
        return x_t

    def _onto_clean(self, x: np.ndarray) -> np.ndarray:
        """The step onto sigma = 0 is the first-order one, which lands on the data prediction.

        diffusers evaluates it with h = inf and gets NaN for bh1, for predict_x0=False, and inf or a
        singular solve for order >= 2 without lower_order_final; its finite cases equal this limit.
        """
        if self.predict_x0:
            return self.model_outputs[-1]
        alpha_s0, sigma_s0 = vp_alpha_sigma(self.sigmas[self._step_index])
        return (x - sigma_s0 * self.model_outputs[-1]) / alpha_s0

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        *,
        generator: np.random.Generator | None = None,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """Correct the current sample (UniC), then predict the next (UniP). Deterministic: generator/noise unused."""
        i = self._start_multistep(model_output, timestep, sample)
        x = np.asarray(sample, dtype=np.float32)
        m = self._convert(np.asarray(model_output, dtype=np.float32), x)
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            x = self._bh_update(self.last_sample, i - 1, self.this_order, model_t=m)
        self.model_outputs = self.model_outputs[1:] + [m]

        order = self.config["solver_order"]
        if self.config["lower_order_final"]:
            order = min(order, len(self.timesteps) - i)
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: as many outputs as we have
        self.last_sample = x
        if self.sigmas[i + 1] == 0:
            prev_sample = self._onto_clean(x)
        elif self.sigmas[i + 1] == self.sigmas[i]:  # zero-length step (karras + sigma_min at the end): identity
            prev_sample = x
        else:
            prev_sample = self._bh_update(x, i, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config["solver_order"])
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample.astype(np.float32, copy=False))
