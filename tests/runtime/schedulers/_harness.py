"""Drive a diffusers scheduler and our numpy port side by side over a whole trajectory.

Both get the same config, the same deterministic pseudo-model output (a fixed function of the
sample and t) and, for stochastic samplers, the same noise: ours through `step(noise=...)`, diffusers'
through its module's `randn_tensor`, patched for the run. Every quantity the pipeline sees is
compared: timesteps, sigmas, init_noise_sigma, scale_model_input, every prev_sample, add_noise.

Relative error here = max |ours - ref| / max |ref| over the tensor (elementwise relative error is
meaningless near zero).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SHAPE = (1, 4, 8, 8)


def rel_err(ours: Any, ref: Any) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    finite = np.isfinite(ref)
    same_nonfinite = np.array_equal(ours[~finite], ref[~finite], equal_nan=True)
    if not (same_nonfinite and np.isfinite(ours[finite]).all()):
        return float("inf")  # a NaN or inf on one side only is a mismatch, never a pass
    ours, ref = ours[finite], ref[finite]
    scale = max(np.abs(ref).max(initial=0.0), 1e-12)
    return float(np.abs(ours - ref).max(initial=0.0) / scale)


def pseudo_model(sample: np.ndarray, t: float, fixed: np.ndarray) -> np.ndarray:
    """A stand-in UNet: depends on the sample and on t, so trajectory errors propagate like the real loop."""
    return (np.float32(0.1) * sample + np.float32(np.cos(t / 50.0)) * fixed).astype(np.float32)


@dataclass
class Report:
    """The worst relative error of each compared quantity over the run."""

    errors: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0

    def note(self, key: str, err: float) -> None:
        previous = self.errors.get(key, 0.0)
        if math.isnan(previous) or math.isnan(err):
            self.errors[key] = math.nan  # a NaN sticks: it must fail the bound, never hide
        else:
            self.errors[key] = max(previous, err)

    def assert_within(self, rtol: float) -> None:
        bad = {k: v for k, v in self.errors.items() if not v <= rtol}
        assert not bad, f"relative errors above {rtol:g}: {bad}"


@contextlib.contextmanager
def _supplied_noise(ref_cls: type):
    """Make diffusers' `randn_tensor` (in the scheduler's module) return the noise we hand it."""
    module = sys.modules[ref_cls.__module__]
    box: dict[str, Any] = {"noise": None, "draws": 0}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        assert box["noise"] is not None, "diffusers drew noise that the harness did not supply"
        box["draws"] += 1
        return torch.from_numpy(box["noise"].copy()).to(dtype or torch.float32)

    if hasattr(module, "randn_tensor"):
        original = module.randn_tensor
        module.randn_tensor = fake_randn
        try:
            yield box
        finally:
            module.randn_tensor = original
    else:
        yield box


def run_trajectory(
    ref_cls: type,
    our_cls: type,
    config: dict[str, Any],
    steps: int,
    *,
    strength: float | None = None,
    ref_step_kwargs: dict[str, Any] | None = None,
    our_step_kwargs: dict[str, Any] | None = None,
    shape: tuple[int, ...] = SHAPE,
    seed: int = 0,
) -> Report:
    """Run both schedulers from the same start over `steps` inference steps and report the worst errors.

    With `strength`, the img2img path runs instead: the schedule is cut as the diffusers img2img
    pipeline cuts it, `set_begin_index` is called and the start is `add_noise` of an init sample.
    """
    rng = np.random.default_rng(seed)
    fixed = rng.standard_normal(shape).astype(np.float32)
    start = rng.standard_normal(shape).astype(np.float32)
    ref = ref_cls.from_config(config)
    ours = our_cls.from_config(config)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    report = Report()

    report.note("timesteps", rel_err(ours.timesteps, ref.timesteps))
    if hasattr(ref, "sigmas") and ref.sigmas is not None and hasattr(ours, "sigmas"):
        report.note("sigmas", rel_err(ours.sigmas, ref.sigmas))
    report.note("init_noise_sigma", rel_err(np.float64(ours.init_noise_sigma), float(ref.init_noise_sigma)))
    _compare_add_noise(ref_cls, our_cls, config, steps, rng, shape, report)

    ref_ts, our_ts = ref.timesteps, np.asarray(ours.timesteps)
    if strength is None:
        sample_ref = torch.from_numpy(start * float(ref.init_noise_sigma))
        sample_ours = start * np.float32(ours.init_noise_sigma)
    else:
        init_steps = min(int(steps * strength), steps)
        t_start = max(steps - init_steps, 0)
        order = ref.order
        assert ours.order == order, f"order {ours.order} != diffusers {order}"
        ref_ts, our_ts = ref_ts[t_start * order :], our_ts[t_start * order :]
        if hasattr(ref, "set_begin_index"):
            ref.set_begin_index(t_start * order)
            ours.set_begin_index(t_start * order)
        if len(ref_ts) == 0:
            return report
        noise0 = rng.standard_normal(shape).astype(np.float32)
        sample_ref = ref.add_noise(torch.from_numpy(start), torch.from_numpy(noise0), ref_ts[:1].repeat(shape[0]))
        sample_ours = ours.add_noise(start, noise0, np.repeat(our_ts[:1], shape[0]))
        report.note("add_noise_img2img", rel_err(sample_ours, sample_ref))

    report.note("timesteps_used", rel_err(our_ts, ref_ts))
    with _supplied_noise(ref_cls) as box:
        for t_ref, t_ours in zip(ref_ts, our_ts):
            noise = rng.standard_normal(shape).astype(np.float32)
            box["noise"], box["draws"] = noise, 0
            in_ref = ref.scale_model_input(sample_ref, t_ref)
            in_ours = ours.scale_model_input(sample_ours, t_ours)
            report.note("scale_model_input", rel_err(in_ours, in_ref))
            out_ref = torch.from_numpy(pseudo_model(in_ref.numpy(), float(t_ref), fixed))
            out_ours = pseudo_model(np.asarray(in_ours), float(t_ours), fixed)
            res_ref = ref.step(out_ref, t_ref, sample_ref, **(ref_step_kwargs or {}))
            res_ours = ours.step(out_ours, t_ours, sample_ours, noise=noise, **(our_step_kwargs or {}))
            assert box["draws"] <= 1, "diffusers drew noise twice in one step"
            report.note("prev_sample", rel_err(res_ours.prev_sample, res_ref.prev_sample))
            for key in ("pred_original_sample", "denoised"):
                if getattr(res_ref, key, None) is not None and getattr(res_ours, key, None) is not None:
                    report.note(key, rel_err(getattr(res_ours, key), getattr(res_ref, key)))
            sample_ref, sample_ours = res_ref.prev_sample, res_ours.prev_sample
            assert sample_ours.dtype == np.float32, f"prev_sample dtype {sample_ours.dtype}, want float32"
            report.steps_run += 1
    return report


def _compare_add_noise(ref_cls, our_cls, config, steps, rng, shape, report: Report) -> None:
    """add_noise on fresh schedulers at the first and a middle schedule timestep (batch of 2)."""
    ref = ref_cls.from_config(config)
    ours = our_cls.from_config(config)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    batch = (2,) + tuple(shape[1:])
    x0 = rng.standard_normal(batch).astype(np.float32)
    noise = rng.standard_normal(batch).astype(np.float32)
    index = [0, len(ref.timesteps) // 2]
    noisy_ref = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ref.timesteps[index])
    noisy_ours = ours.add_noise(x0, noise, np.asarray(ours.timesteps)[index])
    report.note("add_noise", rel_err(noisy_ours, noisy_ref))
