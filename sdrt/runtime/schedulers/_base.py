"""What every numpy scheduler port shares: beta schedules, config handling, validation, sigma maths.

The ports must give diffusers' numbers, so the tables here are built the way diffusers builds them
(float32 betas, a float64-accumulated cumulative product rounded to float32, as torch does on CPU)
and the step maths runs in float32 like a torch pipeline. numpy only: the runtime never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sdrt.errors import SdrtError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


# --------------------------------------------------------------------------------------------
# Beta schedules
# --------------------------------------------------------------------------------------------


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The `squaredcos_cap_v2` schedule: betas that discretise the cosine alpha-bar of iDDPM."""
    t1 = np.arange(num_train_timesteps) / num_train_timesteps
    t2 = (np.arange(num_train_timesteps) + 1) / num_train_timesteps
    bars1 = np.array([_cosine_alpha_bar(t) for t in t1])
    bars2 = np.array([_cosine_alpha_bar(t) for t in t2])
    return np.minimum(1 - bars2 / bars1, max_beta).astype(np.float32)


_BETA_BUILDERS = {
    "linear": lambda s, e, n: np.linspace(s, e, n, dtype=np.float64).astype(np.float32),
    "scaled_linear": lambda s, e, n: np.linspace(s**0.5, e**0.5, n, dtype=np.float64).astype(np.float32) ** 2,
    "squaredcos_cap_v2": lambda s, e, n: betas_for_alpha_bar(n),
}


def make_betas(config: dict[str, Any]) -> np.ndarray:
    """float32 betas from `trained_betas`, or from `beta_schedule` over `beta_start`..`beta_end`."""
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float32)
    build = _BETA_BUILDERS[config["beta_schedule"]]
    return build(config["beta_start"], config["beta_end"], config["num_train_timesteps"])


def cumprod32(values: np.ndarray) -> np.ndarray:
    """Cumulative product accumulated in float64 and rounded to float32 (what torch.cumprod does on CPU)."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR (Lin et al. 2023, Algorithm 1)."""
    alphas_bar_sqrt = np.sqrt(cumprod32(1.0 - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(np.float32)


def make_alphas_cumprod(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(betas, alphas_cumprod) for a config, zero-terminal-SNR rescaling applied when asked."""
    betas = make_betas(config)
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    return betas, cumprod32(1.0 - betas)


def make_alphas_cumprod_finite(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """make_alphas_cumprod for the sigma-based schedulers: with zero-SNR rescaling the last alpha-bar is 2**-24.

    Zero SNR exactly would make the first (variance-exploding) sigma infinite.
    """
    betas, alphas_cumprod = make_alphas_cumprod(config)
    if config.get("rescale_betas_zero_snr"):
        alphas_cumprod[-1] = 2.0**-24
    return betas, alphas_cumprod


# --------------------------------------------------------------------------------------------
# Timestep spacing and sigmas
# --------------------------------------------------------------------------------------------


def spaced_timesteps(spacing: str, num_train_timesteps: int, n: int, steps_offset: int = 0) -> np.ndarray:
    """Descending float64 timesteps by `timestep_spacing` (Table 2 of Lin et al. 2023); unrounded for linspace."""
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, n, dtype=np.float64)[::-1].copy()
    if spacing == "leading":
        ratio = num_train_timesteps // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
    ratio = num_train_timesteps / n  # trailing
    return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.float64) - 1


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by linear interpolation in log-sigma."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma.reshape(1, -1) - log_sigmas.reshape(-1, 1)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma.reshape(-1)) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def sigmas_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The variance-exploding sigma of each training step: sqrt((1 - alpha_bar) / alpha_bar)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def broadcast_to(values: np.ndarray, ndim: int) -> np.ndarray:
    """A per-batch vector shaped [B, 1, 1, ...] to multiply a [B, ...] tensor."""
    values = np.asarray(values).reshape(-1)
    return values.reshape(values.shape + (1,) * (ndim - 1))


def add_noise_alphas(alphas_cumprod: np.ndarray, original: np.ndarray, noise: np.ndarray, timesteps) -> np.ndarray:
    """q(x_t | x_0) for integer training timesteps: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise."""
    idx = np.asarray(timesteps).reshape(-1).astype(np.int64)
    bad = idx[(idx < 0) | (idx >= len(alphas_cumprod))]
    if bad.size:
        raise SdrtError(f"add_noise timestep {bad[0]} is outside 0..{len(alphas_cumprod) - 1}; pass training timesteps")
    acp = alphas_cumprod.astype(original.dtype)[idx]
    sqrt_a = broadcast_to(acp**0.5, original.ndim)
    sqrt_1ma = broadcast_to((1 - acp) ** 0.5, original.ndim)
    return sqrt_a * original + sqrt_1ma * noise


# --------------------------------------------------------------------------------------------
# Validation helpers (the bad-input rules every port applies)
# --------------------------------------------------------------------------------------------


def check_num_inference_steps(name: str, n: Any, num_train_timesteps: int) -> int:
    """1 <= n <= training steps, else a one-line error."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise SdrtError(f"{name}: num_inference_steps must be an integer, got {n!r}")
    if n < 1 or n > num_train_timesteps:
        raise SdrtError(
            f"{name}: num_inference_steps {n} is out of range; use 1..{num_train_timesteps} (the training steps)"
        )
    return int(n)


def check_timesteps_in_range(name: str, timesteps: np.ndarray, num_train_timesteps: int) -> None:
    """A schedule that indexes alpha-bar must stay inside the training steps (steps_offset can push it out)."""
    if timesteps.size and (timesteps.max() >= num_train_timesteps or timesteps.min() < 0):
        raise SdrtError(
            f"{name}: timestep {int(timesteps.max())} is outside 0..{num_train_timesteps - 1}; "
            "use fewer inference steps or steps_offset 0"
        )


def check_same_shape(name: str, model_output: np.ndarray, sample: np.ndarray) -> None:
    if np.shape(model_output) != np.shape(sample):
        raise SdrtError(
            f"{name}.step: model output shape {tuple(np.shape(model_output))} != sample shape "
            f"{tuple(np.shape(sample))}; pass the UNet output for this sample"
        )


def check_noise_shape(name: str, noise: np.ndarray | None, sample: np.ndarray) -> None:
    if noise is not None and np.shape(noise) != np.shape(sample):
        raise SdrtError(
            f"{name}.step: noise shape {tuple(np.shape(noise))} != sample shape {tuple(np.shape(sample))}; "
            "pass noise shaped like the sample"
        )


def as_scalar_timestep(timestep: Any) -> float:
    """A timestep given as a python number, numpy scalar or one-element array, as a float."""
    arr = np.asarray(timestep)
    if arr.size != 1:
        raise SdrtError(f"timestep must be a single value, got shape {arr.shape}; pass one of scheduler.timesteps")
    return float(arr.reshape(()))


def draw_noise(shape: tuple, generator: np.random.Generator | None, noise: np.ndarray | None) -> np.ndarray:
    """The random draw of a stochastic sampler: the caller's `noise`, else standard normal from `generator`."""
    if noise is not None:
        return np.asarray(noise, dtype=np.float32)
    rng = generator if generator is not None else np.random.default_rng()
    return rng.standard_normal(shape, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Output and base class
# --------------------------------------------------------------------------------------------


@dataclass
class SchedulerOutput:
    """What `step` returns: the next sample, and the x0 estimate where diffusers reports one."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray | None = None


class SchedulerMixin:
    """Config handling, step-index bookkeeping and validation shared by the ports.

    Subclasses declare `defaults` (diffusers' __init__ signature for the same-named class, so a
    scheduler_config.json maps 1:1) and `supported` (key -> values this port implements; keys not
    listed take any value). `_setup()` builds the training schedule from `self.config`.
    """

    defaults: ClassVar[dict[str, Any]] = {}
    supported: ClassVar[dict[str, tuple]] = {}
    order: ClassVar[int] = 1

    def __init__(self, **config: Any):
        name = type(self).__name__
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise SdrtError(f"{name} has no config key {unknown[0]!r}; known keys: {', '.join(sorted(self.defaults))}")
        merged = {**self.defaults, **config}
        for key, allowed in self.supported.items():
            value = merged[key]
            if value is None and isinstance(self.defaults[key], bool):
                value = merged[key] = False  # diffusers treats a null flag as off
            if value not in allowed:
                raise SdrtError(
                    f"{name}: {key}={value!r} is not implemented; use one of {', '.join(map(repr, allowed))}"
                )
        self.config: dict[str, Any] = merged
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, **overrides: Any) -> "SchedulerMixin":
        """Build from a scheduler_config.json dict; keys this class does not take are ignored, as diffusers does."""
        merged = {**(config or {}), **overrides}
        return cls(**{k: v for k, v in merged.items() if k in cls.defaults})

    # -- step index (the sigma-based ports and LCM count steps like diffusers) -----------------

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """img2img starts mid-schedule: the pipeline says where, so add_noise and step agree on the index."""
        self._begin_index = begin_index

    def _require_timesteps(self, what: str) -> None:
        if self.num_inference_steps is None:
            raise SdrtError(f"{type(self).__name__}.{what} called before set_timesteps(); call set_timesteps(n) first")

    def index_for_timestep(self, timestep: Any, schedule: np.ndarray | None = None) -> int:
        """Position of `timestep` in the schedule (the second match when it repeats, as diffusers does)."""
        schedule = self.timesteps if schedule is None else schedule
        t = as_scalar_timestep(timestep)
        hits = np.nonzero(schedule == np.asarray(t, dtype=schedule.dtype))[0]
        if hits.size == 0:
            head = ", ".join(f"{x:g}" for x in schedule[:4])
            raise SdrtError(
                f"{type(self).__name__}: timestep {t:g} is not in the schedule ({head}, ...); "
                "pass one of scheduler.timesteps"
            )
        return int(hits[1] if hits.size > 1 else hits[0])

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _check_step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> None:
        """The rules every step applies: timesteps set, shapes equal, timestep from the schedule."""
        self._require_timesteps("step")
        check_same_shape(type(self).__name__, model_output, sample)
        self.index_for_timestep(timestep)

    def _start_step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray, noise: Any = None) -> int:
        """The prologue of `step`: `_check_step` (and the noise shape, when noise is given), then the step index."""
        self._check_step(model_output, timestep, sample)
        check_noise_shape(type(self).__name__, noise, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        return self._step_index

    def _add_noise_sigmas(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """x0 + sigma * noise at the given schedule timesteps (k-diffusion's forward process)."""
        self._require_timesteps("add_noise")
        timesteps = np.asarray(timesteps).reshape(-1)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        elif self._step_index is not None:
            indices = [self._step_index] * len(timesteps)
        else:
            indices = [self._begin_index] * len(timesteps)
        sigma = broadcast_to(self.sigmas.astype(original.dtype)[indices], original.ndim)
        return original + noise * sigma

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]


class AlphaBarScheduler(SchedulerMixin):
    """The DDPM-table samplers (DDIM, PNDM, LCM): alpha-bar indexed by integer timestep, final alpha-bar by
    `set_alpha_to_one`, the sample fed to the UNet as is, and the q(x_t | x_0) forward process."""

    def _setup(self) -> None:
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config)
        self.final_alpha_cumprod = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.timesteps = np.arange(self.config["num_train_timesteps"])[::-1].astype(np.int64)

    def _alpha_prod(self, t: int) -> np.float32:
        """alpha-bar at training timestep t; before the first (t < 0), the final alpha-bar."""
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _clip_x0(self, x0: np.ndarray) -> np.ndarray:
        """Dynamic thresholding when asked, else clipping to +-clip_sample_range when clip_sample is on."""
        if self.config["thresholding"]:
            return threshold_sample(x0, self.config["dynamic_thresholding_ratio"], self.config["sample_max_value"])
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            return np.clip(x0, -limit, limit)
        return x0

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """These samplers feed the UNet the sample as is."""
        return sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise at integer training timesteps."""
        return add_noise_alphas(self.alphas_cumprod, original, noise, timesteps)


# --------------------------------------------------------------------------------------------
# x0 / epsilon from a model output (DDPM parameterisation: x_t = sqrt(a) x0 + sqrt(1 - a) eps)
# --------------------------------------------------------------------------------------------


def x0_and_eps(prediction_type: str, model_output: np.ndarray, sample: np.ndarray, alpha_prod_t) -> tuple:
    """(x0, eps) from what the UNet predicts: eps, x0 itself, or v = sqrt(a) eps - sqrt(1 - a) x0."""
    a = np.float32(alpha_prod_t) ** 0.5
    b = (np.float32(1) - np.float32(alpha_prod_t)) ** 0.5
    if prediction_type == "epsilon":
        return (sample - b * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (sample - a * model_output) / b
    return a * sample - b * model_output, a * model_output + b * sample  # v_prediction


def threshold_sample(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Imagen, Saharia et al. 2022): clip x0 per sample at a percentile of |x0|."""
    flat = sample.reshape(sample.shape[0], -1)
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(sample.dtype)
    s = np.clip(s, 1, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(sample.shape).astype(sample.dtype)
