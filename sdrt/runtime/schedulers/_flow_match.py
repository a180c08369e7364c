"""What the flow-matching samplers (SD3, SD3.5, Flux) share: the sigma schedule and its shifts.

Rectified flow runs x_sigma = (1 - sigma) x0 + sigma noise from sigma = 1 (noise) to 0 (image); the
model predicts the velocity noise - x0, so an Euler step is x + (sigma_next - sigma) v. The schedule
is a line in sigma, shifted towards noise (`shift`, or the resolution-dependent `mu`, see
`calculate_shift`), built the way diffusers builds it (float64 maths where it uses numpy, float32
where it uses torch) so the numbers agree to rounding. numpy only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError

from ._base import SchedulerMixin, broadcast_to, karras_sigmas


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The pipelines' `mu`: the shift grows linearly with the image's token count (SD3, Flux)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def mu_for(config: dict[str, Any], image_seq_len: int) -> float:
    """`calculate_shift` from a scheduler config's own bounds (what SD3's and Flux's pipelines pass)."""
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                           config.get("max_shift", 1.15))


def shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """SD3's static shift: sigma' = shift sigma / (1 + (shift - 1) sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(kind: str, mu: float, sigmas: np.ndarray) -> np.ndarray:
    """The resolution-dependent shift (Flux): exponential e^mu / (e^mu + 1/t - 1), or linear in mu."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
    return mu / (mu + (1 / sigmas - 1) ** 1.0)


def stretch_to_terminal(sigmas: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Stretch the schedule so that its last sigma is `shift_terminal` (LTX-Video's rule)."""
    one_minus = 1 - sigmas
    if one_minus[-1] == 0:  # one step: its sigma is 1 (diffusers divides by zero here)
        raise SdrtError(f"shift_terminal {shift_terminal} needs a schedule that ends below sigma 1; "
                        "use 2 or more steps")
    scale = one_minus[-1] / (1 - shift_terminal)
    return 1 - (one_minus / scale)


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Sigmas evenly spaced in log sigma."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


# -- beta sigmas (Lee et al. 2024): the inverse CDF of Beta(0.6, 0.6), in numpy --------------------
def _beta_cf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Continued fraction of the incomplete beta function (modified Lentz), vectorised."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 1e-16):
            break
    return h


def beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """The regularised incomplete beta function I_x(a, b) (float64)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    inner = (x > 0) & (x < 1)
    safe = np.where(inner, x, 0.5)
    front = np.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                   + a * np.log(safe) + b * np.log1p(-safe))
    direct = safe < (a + 1) / (a + b + 2)
    value = np.where(direct, front * _beta_cf(safe, a, b) / a,
                     1.0 - front * _beta_cf(1.0 - safe, b, a) / b)
    return np.where(inner, value, np.where(x >= 1, 1.0, 0.0))


def beta_ppf(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """The inverse of `beta_cdf` by bisection to float64 resolution (what scipy.stats.beta.ppf gives)."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = beta_cdf(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, 0.5 * (lo + hi)))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Sigmas at the Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n), scaled into [sigma_min, sigma_max]."""
    ppf = beta_ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])


def convert_sigmas(config: dict[str, Any], sigmas: np.ndarray, n: int) -> np.ndarray:
    """The Karras, exponential or beta form of a schedule, between its own first and last sigma."""
    sigma_min, sigma_max = float(sigmas[-1]), float(sigmas[0])
    if config.get("use_karras_sigmas"):
        return karras_sigmas(sigma_min, sigma_max, n)
    if config.get("use_exponential_sigmas"):
        return exponential_sigmas(sigma_min, sigma_max, n)
    if config.get("use_beta_sigmas"):
        return beta_sigmas(sigma_min, sigma_max, n)
    return sigmas


def check_one_sigma_form(name: str, config: dict[str, Any]) -> None:
    chosen = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if config.get(k)]
    if len(chosen) > 1:
        raise SdrtError(f"{name}: {' and '.join(chosen)} are both set; keep at most one of them")


def check_steps_or_schedule(name: str, n: int | None, sigmas: Sequence[float] | None,
                            timesteps: Sequence[float] | None) -> int:
    """The number of steps from `num_inference_steps` or the length of a custom schedule (diffusers' rules)."""
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise SdrtError(f"{name}: {len(sigmas)} sigmas but {len(timesteps)} timesteps; pass lists of one length")
    custom = sigmas if sigmas is not None else timesteps
    if n is None:
        if custom is None:
            raise SdrtError(f"{name}.set_timesteps: pass num_inference_steps, sigmas or timesteps")
        n = len(custom)
    elif custom is not None and len(custom) != n:
        raise SdrtError(f"{name}: {len(custom)} sigmas/timesteps for {n} inference steps; pass one per step "
                        "(or leave num_inference_steps out)")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise SdrtError(f"{name}: num_inference_steps must be a positive integer, got {n!r}")
    return int(n)


class FlowMatchScheduler(SchedulerMixin):
    """The training schedule both flow-matching ports start from, and what the runtime's loop asks of
    any scheduler: the model input is the sample as is, and the initial noise has unit scale."""

    init_noise_sigma = 1.0

    def _setup(self) -> None:
        T = self.config["num_train_timesteps"]
        timesteps = np.linspace(1, T, T, dtype=np.float32)[::-1].copy()
        sigmas = timesteps / np.float32(T)
        if not self.config.get("use_dynamic_shifting"):
            sigmas = shifted(sigmas, self.config["shift"]).astype(np.float32)
        self.timesteps = sigmas * np.float32(T)
        self.sigmas = sigmas
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """Flow-matching transformers take the sample as is."""
        return sample

    def _sigma_at(self, timesteps: Any, like: np.ndarray) -> np.ndarray:
        """The sigma of each timestep of a noising call, by the img2img index rule (as add_noise does)."""
        self._require_timesteps("scale_noise")
        timesteps = np.asarray(timesteps, dtype=np.float32).reshape(-1)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        elif self._step_index is not None:
            indices = [self._step_index] * len(timesteps)
        else:
            indices = [self._begin_index] * len(timesteps)
        return broadcast_to(self.sigmas.astype(like.dtype)[indices], like.ndim)

    def scale_noise(self, sample: np.ndarray, timestep: Any, noise: np.ndarray) -> np.ndarray:
        """The flow-matching forward process: sigma noise + (1 - sigma) sample (img2img's start)."""
        sigma = self._sigma_at(timestep, sample)
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """`scale_noise` under the name (and argument order) the other ports use."""
        return self.scale_noise(original, timesteps, noise)
