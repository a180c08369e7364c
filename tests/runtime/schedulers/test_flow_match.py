"""The flow-matching ports (SD3, SD3.5, Flux) against diffusers 0.42's classes, step by step.

The same tolerance as the other ports: 1e-5 relative (max |ours - ref| / max |ref|) on timesteps,
sigmas, every prev_sample and scale_noise, over the config grid below (SD3's and Flux's own configs,
dynamic shifting with mu, custom sigmas as FluxPipeline passes them, custom timesteps, shift_terminal,
invert_sigmas, the Karras / exponential / beta forms, stochastic sampling with supplied noise), 1000
steps, and the img2img path (schedule cut by strength, set_begin_index, scale_noise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler as RefEuler
from diffusers.schedulers.scheduling_flow_match_heun_discrete import FlowMatchHeunDiscreteScheduler as RefHeun

from sdrt.errors import SdrtError
from sdrt.runtime import schedulers as ours
from sdrt.runtime.schedulers._flow_match import beta_ppf

from ._harness import Report, _supplied_noise, pseudo_model, rel_err

RTOL = 1e-5
SHAPE = (1, 16, 8, 8)

SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
       "num_train_timesteps": 1000, "shift": 3.0}  # stabilityai/stable-diffusion-3(.5)-medium
FLUX = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}  # black-forest-labs/FLUX.1-dev

MU = 0.9  # Flux at 512x512: calculate_shift(1024) ~ 0.63; 1024x1024 -> 1.15
EULER_GRID = [  # (config, set_timesteps kwargs beyond num_inference_steps, "flux_sigmas": pass Flux's sigmas)
    ({}, {}), (SD3, {}), ({"shift": 1.7}, {}),
    (FLUX, {"mu": MU}), (FLUX, {"mu": MU, "flux_sigmas": True}), (FLUX, {"mu": 0.3, "flux_sigmas": True}),
    ({**FLUX, "time_shift_type": "linear"}, {"mu": MU}),
    ({**SD3, "shift_terminal": 0.1}, {}), ({**FLUX, "shift_terminal": 0.02}, {"mu": MU, "flux_sigmas": True}),
    ({**SD3, "invert_sigmas": True}, {}),
    ({**SD3, "use_karras_sigmas": True}, {}), ({**SD3, "use_exponential_sigmas": True}, {}),
    ({**SD3, "use_beta_sigmas": True}, {}), ({**FLUX, "use_karras_sigmas": True}, {"mu": MU}),
    ({**SD3, "stochastic_sampling": True}, {}), ({**FLUX, "stochastic_sampling": True}, {"mu": MU}),
    (SD3, {"flux_sigmas": True}), (SD3, {"custom_timesteps": True}),
]
STEPS = [1, 2, 7, 28, 50]


def _set(sched, steps: int, kwargs: dict, numpy_side: bool) -> None:
    kw = {k: v for k, v in kwargs.items() if k not in ("flux_sigmas", "custom_timesteps")}
    if kwargs.get("flux_sigmas"):
        kw["sigmas"] = list(np.linspace(1.0, 1 / steps, steps))  # FluxPipeline's default
    if kwargs.get("custom_timesteps"):
        kw["timesteps"] = list(np.linspace(1000.0, 1000.0 / steps, steps))
    if numpy_side or "sigmas" in kw or "timesteps" in kw:
        sched.set_timesteps(steps, **kw)
    else:
        sched.set_timesteps(steps, **kw)


def run_flow(ref_cls, our_cls, config: dict, steps: int, kwargs: dict | None = None, *, strength: float | None = None,
             step_kwargs: dict | None = None, seed: int = 0) -> Report:
    """Both schedulers from one start over a whole trajectory (from noise, or img2img from scale_noise)."""
    kwargs = kwargs or {}
    rng = np.random.default_rng(seed)
    fixed = rng.standard_normal(SHAPE).astype(np.float32)
    start = rng.standard_normal(SHAPE).astype(np.float32)
    ref, mine = ref_cls.from_config(config), our_cls.from_config(config)
    _set(ref, steps, kwargs, False)
    _set(mine, steps, kwargs, True)
    report = Report()
    report.note("timesteps", rel_err(mine.timesteps, ref.timesteps))
    report.note("sigmas", rel_err(mine.sigmas, ref.sigmas))
    ref_ts, our_ts = ref.timesteps, mine.timesteps
    sample_ref, sample_ours = torch.from_numpy(start.copy()), start.copy()
    if strength is not None:
        t_start = max(steps - min(int(steps * strength), steps), 0) * ref.order
        ref_ts, our_ts = ref_ts[t_start:], our_ts[t_start:]
        ref.set_begin_index(t_start)
        mine.set_begin_index(t_start)
        if len(ref_ts) == 0:
            return report
        noise0 = rng.standard_normal(SHAPE).astype(np.float32)
        sample_ref = ref.scale_noise(torch.from_numpy(start), ref_ts[:1], torch.from_numpy(noise0))
        sample_ours = mine.scale_noise(start, our_ts[:1], noise0)
        report.note("scale_noise", rel_err(sample_ours, sample_ref))
    with _supplied_noise(ref_cls) as box:
        for t_ref, t_ours in zip(ref_ts, our_ts):
            noise = rng.standard_normal(SHAPE).astype(np.float32)
            box["noise"], box["draws"] = noise, 0
            assert np.asarray(mine.scale_model_input(sample_ours, t_ours)) is sample_ours
            out_ref = torch.from_numpy(pseudo_model(sample_ref.numpy(), float(t_ref), fixed))
            out_ours = pseudo_model(sample_ours, float(t_ours), fixed)
            res_ref = ref.step(out_ref, t_ref, sample_ref, **(step_kwargs or {}))
            res_ours = mine.step(out_ours, t_ours, sample_ours, noise=noise, **(step_kwargs or {}))
            assert box["draws"] <= 1
            report.note("prev_sample", rel_err(res_ours.prev_sample, res_ref.prev_sample))
            sample_ref, sample_ours = res_ref.prev_sample, res_ours.prev_sample
            assert sample_ours.dtype == np.float32
            report.steps_run += 1
    return report


def _cases():
    for config, kwargs in EULER_GRID:
        label = ",".join(f"{k}={v}" for k, v in {**config, **kwargs}.items() if not k.startswith("_")) or "defaults"
        for n in STEPS:
            if n == 1 and config.get("shift_terminal"):
                continue  # one step ends at sigma 1: diffusers divides by zero (ours refuses, below)
            yield pytest.param(config, kwargs, n, id=f"{label}-{n}")


@pytest.mark.parametrize("config,kwargs,steps", list(_cases()))
def test_euler_trajectory_matches_diffusers(config, kwargs, steps):
    report = run_flow(RefEuler, ours.FlowMatchEulerDiscreteScheduler, config, steps, kwargs)
    assert report.steps_run == steps
    report.assert_within(RTOL)


@pytest.mark.parametrize("config,kwargs", [(SD3, {}), (FLUX, {"mu": MU}), ({**SD3, "use_beta_sigmas": True}, {})])
def test_euler_1000_steps(config, kwargs):
    report = run_flow(RefEuler, ours.FlowMatchEulerDiscreteScheduler, config, 1000, kwargs)
    assert report.steps_run == 1000
    report.assert_within(RTOL)


@pytest.mark.parametrize("config,kwargs", [(SD3, {}), (FLUX, {"mu": MU, "flux_sigmas": True})])
@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_euler_img2img_path(config, kwargs, strength):
    report = run_flow(RefEuler, ours.FlowMatchEulerDiscreteScheduler, config, 20, kwargs, strength=strength)
    assert "scale_noise" in report.errors
    report.assert_within(RTOL)


HEUN_STEP_KWARGS = [{}, {"s_churn": 1.0, "s_tmin": 0.2, "s_tmax": 0.9}]


@pytest.mark.parametrize("config", [{}, SD3, {"shift": 1.7, "num_train_timesteps": 500}], ids=["defaults", "sd3", "500"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("step_kwargs", HEUN_STEP_KWARGS, ids=["plain", "churn"])
def test_heun_trajectory_matches_diffusers(config, steps, step_kwargs):
    report = run_flow(RefHeun, ours.FlowMatchHeunDiscreteScheduler, config, steps, step_kwargs=step_kwargs)
    assert report.steps_run == 2 * steps - 1
    report.assert_within(RTOL)


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_heun_img2img_path(strength):
    report = run_flow(RefHeun, ours.FlowMatchHeunDiscreteScheduler, SD3, 20, strength=strength)
    assert "scale_noise" in report.errors
    report.assert_within(RTOL)


def test_heun_1000_steps():
    report = run_flow(RefHeun, ours.FlowMatchHeunDiscreteScheduler, SD3, 1000)
    report.assert_within(RTOL)


def test_scale_noise_before_the_loop_and_after_a_step():
    """Inpainting re-noises the known region after each step: the index then follows the step."""
    ref, mine = RefEuler.from_config(SD3), ours.FlowMatchEulerDiscreteScheduler.from_config(SD3)
    for s in (ref, mine):
        s.set_timesteps(10)
    x = np.random.default_rng(1).standard_normal((2, 16, 4, 4)).astype(np.float32)
    n = np.random.default_rng(2).standard_normal((2, 16, 4, 4)).astype(np.float32)
    ts = [0, 4]
    assert rel_err(mine.scale_noise(x, mine.timesteps[ts], n),
                   ref.scale_noise(torch.from_numpy(x), ref.timesteps[ts], torch.from_numpy(n))) <= RTOL
    for s in (ref, mine):
        s.set_begin_index(0)
    mine.step(x * 0.1, mine.timesteps[0], x)
    ref.step(torch.from_numpy(x * 0.1), ref.timesteps[0], torch.from_numpy(x))
    assert rel_err(mine.scale_noise(x, mine.timesteps[1:2], n),
                   ref.scale_noise(torch.from_numpy(x), ref.timesteps[1:2], torch.from_numpy(n))) <= RTOL


@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096, 9000])
def test_calculate_shift_is_the_pipelines(seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as flux_shift
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift as sd3_shift

    assert ours.calculate_shift(seq_len) == pytest.approx(flux_shift(seq_len), rel=1e-12)
    assert ours.calculate_shift(seq_len, 256, 4096, 0.5, 1.15) == pytest.approx(sd3_shift(seq_len), rel=1e-12)
    assert ours.mu_for(FLUX, seq_len) == pytest.approx(flux_shift(seq_len, 256, 4096, 0.5, 1.15), rel=1e-12)


def test_beta_ppf_equals_scipy():
    from scipy import stats

    q = np.concatenate([np.linspace(0, 1, 101), [1e-9, 1e-4, 0.3333, 1 - 1e-6]])
    for a, b in ((0.6, 0.6), (0.5, 2.0), (2.0, 3.0)):
        np.testing.assert_allclose(beta_ppf(q, a, b), stats.beta.ppf(q, a, b), rtol=1e-10, atol=1e-12)


def test_stochastic_noise_from_generator_is_seeded():
    runs = []
    for _ in range(2):
        s = ours.FlowMatchEulerDiscreteScheduler.from_config({**SD3, "stochastic_sampling": True})
        s.set_timesteps(3)
        x = np.ones(SHAPE, dtype=np.float32)
        rng = np.random.default_rng(7)
        for t in s.timesteps:
            x = s.step(0.1 * x, t, x, generator=rng).prev_sample
        runs.append(x)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.isfinite(runs[0]).all() and not np.allclose(runs[0], 1.0)


@pytest.mark.parametrize("make,call,words", [
    (lambda: ours.FlowMatchEulerDiscreteScheduler.from_config(FLUX), lambda s: s.set_timesteps(4), "needs mu"),
    (lambda: ours.FlowMatchEulerDiscreteScheduler.from_config(SD3), lambda s: s.set_timesteps(4, sigmas=[1, 0.5]),
     "2 sigmas/timesteps for 4"),
    (lambda: ours.FlowMatchEulerDiscreteScheduler.from_config(SD3),
     lambda s: s.set_timesteps(sigmas=[1, 0.5], timesteps=[1000]), "2 sigmas but 1 timesteps"),
    (lambda: ours.FlowMatchEulerDiscreteScheduler.from_config({"use_karras_sigmas": True, "use_beta_sigmas": True}),
     None, "keep at most one"),
    (lambda: ours.FlowMatchEulerDiscreteScheduler.from_config({"time_shift_type": "cubic"}), None, "time_shift_type"),
    (lambda: ours.FlowMatchHeunDiscreteScheduler.from_config(SD3), lambda s: s.set_timesteps(0), "positive integer"),
    (lambda: ours.FlowMatchEulerDiscreteScheduler.from_config({**SD3, "shift_terminal": 0.1}),
     lambda s: s.set_timesteps(1), "use 2 or more steps"),
])
def test_bad_input_is_one_line(make, call, words):
    with pytest.raises(SdrtError) as info:
        sched = make()
        call(sched)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [ours.FlowMatchEulerDiscreteScheduler, ours.FlowMatchHeunDiscreteScheduler])
def test_integer_index_as_timestep_is_refused(cls):
    sched = cls.from_config(SD3)
    sched.set_timesteps(4)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(SdrtError, match="integer index"):
        sched.step(x, 0, x)


def test_registry_names_for_flow_models():
    assert type(ours.get_scheduler("Euler", SD3)) is ours.FlowMatchEulerDiscreteScheduler
    heun = ours.get_scheduler("heun", SD3)
    assert type(heun) is ours.FlowMatchHeunDiscreteScheduler and heun.config["shift"] == 3.0
    karras = ours.get_scheduler("euler_karras", FLUX)
    assert karras.config["use_karras_sigmas"] and karras.config["use_dynamic_shifting"]
    assert ours.registry_name(karras) == "euler_karras" and ours.registry_name(heun) == "heun"
    assert type(ours.get_scheduler(SD3)) is ours.FlowMatchEulerDiscreteScheduler
    assert type(ours.get_scheduler("FlowMatchHeunDiscreteScheduler", SD3)) is ours.FlowMatchHeunDiscreteScheduler
    # the UNet names stay the UNet ones
    assert type(ours.get_scheduler("euler", {"_class_name": "PNDMScheduler"})) is ours.EulerDiscreteScheduler


@pytest.mark.parametrize("name,base,words", [
    ("dpmpp_2m", SD3, "not one for flow-matching models"),
    ("DDIMScheduler", SD3, "does not fit"),
    ("FlowMatchEulerDiscreteScheduler", {"_class_name": "PNDMScheduler"}, "does not fit"),
])
def test_sampler_of_the_other_kind_is_refused(name, base, words):
    with pytest.raises(SdrtError, match=words):
        ours.get_scheduler(name, base)


@pytest.mark.parametrize("name", list(ours.FLOW_SCHEDULERS))
def test_every_flow_name_equals_diffusers_from_config(name):
    cls, overrides = ours.FLOW_SCHEDULERS[name]
    ref_cls = RefHeun if cls is ours.FlowMatchHeunDiscreteScheduler else RefEuler
    ref = ref_cls.from_config(RefEuler.from_config(SD3).config, **overrides)
    mine = ours.get_scheduler(name, SD3)
    assert mine.config == {k: ref.config[k] for k in mine.config}
    ref.set_timesteps(9)
    mine.set_timesteps(9)
    assert rel_err(mine.sigmas, ref.sigmas) <= RTOL
