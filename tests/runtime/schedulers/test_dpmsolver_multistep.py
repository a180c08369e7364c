"""DPMSolverMultistepScheduler (DPM++ 2M/3M/SDE) against diffusers' own class, whole trajectories.

Tolerance: 1e-5 relative (max-abs error over max-abs value). Measured worst is ~3e-6, on 1000-step
runs: both sides round every step to float32 and the rounding differs (numpy's exp/log/sqrt are
correctly rounded, torch's are not always), so the gap grows slowly with the number of steps.
"""

import subprocess
import sys

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler as Ref

from sdrt.errors import SdrtError
from sdrt.runtime.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler as Ours
from tests.runtime.schedulers._harness import SHAPE, run_trajectory

RTOL = 1e-5
STEPS = [1, 2, 7, 25, 50]
SD15 = {  # runwayml/stable-diffusion-v1-5 scheduler_config.json (a PNDM config, as shipped)
    "_class_name": "PNDMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "clip_sample": False,
}
SD21 = {  # stabilityai/stable-diffusion-2-1 scheduler_config.json (a DDIM config, v-prediction)
    **SD15,
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
}
SDE = {"algorithm_type": "sde-dpmsolver++"}
KARRAS = {"use_karras_sigmas": True}


def finite(cls):
    """cls whose every prev_sample must be finite: the harness's max() would let a NaN error through."""

    def step(self, *args, **kwargs):
        out = cls.step(self, *args, **kwargs)
        assert bool(np.isfinite(np.asarray(out.prev_sample)).all()), f"{cls.__module__} stepped to a non-finite sample"
        return out

    # same __module__: the harness patches diffusers' noise draw in the module the class names
    return type(cls.__name__, (cls,), {"step": step, "__module__": cls.__module__})


RefFinite, OursFinite = finite(Ref), finite(Ours)


class RefEulerAtFinal(RefFinite):
    """diffusers told euler_at_final (the first-order last step), whatever the config says."""

    @classmethod
    def from_config(cls, config, **kwargs):
        return super().from_config({**config, "euler_at_final": True}, **kwargs)


RefEulerAtFinal.__module__ = Ref.__module__


def check(config, steps, **kwargs):
    report = run_trajectory(RefFinite, OursFinite, config, steps, **kwargs)
    report.assert_within(RTOL)
    return report


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("variant", [{}, KARRAS, SDE, {**SDE, **KARRAS}], ids=["2m", "2m_karras", "sde", "sde_karras"])
@pytest.mark.parametrize("base", [SD15, SD21], ids=["sd15", "sd21"])
def test_sd_configs_every_step_count(base, variant, steps):
    report = check({**base, **variant}, steps)
    assert report.steps_run == steps


@pytest.mark.parametrize(
    "extra,rtol",
    [
        ({"timestep_spacing": "trailing", "solver_order": 3}, RTOL),
        ({"timestep_spacing": "trailing", **SDE}, RTOL),
        ({**KARRAS, **SDE}, RTOL),
        # 3rd-order SDE: diffusers' float32 coefficient (1 - e^-2h - 2h)/(2h)^2 cancels catastrophically at
        # h ~ 0.007; computing ours in float32 instead of float64 moves the result by 4e-4 (measured), so
        # this is the size of diffusers' own rounding error here, not a disagreement in the maths
        ({"timestep_spacing": "trailing", "solver_order": 3, **SDE}, 1e-3),
    ],
    ids=["trailing_3m", "trailing_sde", "sde_karras", "trailing_sde_3m"],
)
def test_1000_steps(extra, rtol):
    run_trajectory(RefFinite, OursFinite, {**SD15, **extra}, 1000).assert_within(rtol)


@pytest.mark.parametrize("steps", [2, 7, 25])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_solver_grid(algorithm, order, solver_type, steps):
    check({**SD15, "algorithm_type": algorithm, "solver_order": order, "solver_type": solver_type}, steps)


GRID = [
    {"lower_order_final": False},
    {"lower_order_final": False, "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"euler_at_final": True},
    {"euler_at_final": True, **SDE, "final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min", **KARRAS, "solver_order": 3},  # < 15 steps; >= 15: test below
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction", **SDE, "solver_order": 3},
    {"timestep_spacing": "linspace", "steps_offset": 0},
    {"timestep_spacing": "trailing", "steps_offset": 0},
    {"timestep_spacing": "leading", "steps_offset": 0},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "linspace"},
    {"trained_betas": list(np.linspace(0.0002, 0.03, 1000))},
    {"num_train_timesteps": 500, "timestep_spacing": "trailing"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction", **SDE},
    {"thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9},
    {"solver_type": "bh2"},  # diffusers maps UniPC's solver types onto DPM++ midpoint
]


@pytest.mark.parametrize("steps", [1, 7, 25, 50])
@pytest.mark.parametrize("extra", GRID[:5] + GRID[6:], ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items())[:60])
def test_config_grid(extra, steps):
    check({**SD15, **extra}, steps)


@pytest.mark.parametrize("steps", [1, 7, 14])
@pytest.mark.parametrize("extra", GRID[5:6], ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items())[:60])
def test_config_grid_short(extra, steps):
    check({**SD15, **extra}, steps)


@pytest.mark.parametrize("variant", [{}, SDE], ids=["2m", "sde"])
@pytest.mark.parametrize("steps", [15, 25, 50])
def test_karras_ending_on_sigma_min_takes_a_zero_length_last_step(variant, steps):
    """Karras sigmas end on sigma_min, so final_sigmas_type sigma_min appends a step of length 0.

    diffusers takes it with the multistep formula and divides by h = 0 (NaN) unless it is told
    euler_at_final, which makes it the first-order step, i.e. the identity. Ours always does that.
    """
    config = {**SD15, **KARRAS, **variant, "final_sigmas_type": "sigma_min", "solver_order": 3}
    with pytest.raises(AssertionError, match="non-finite"):  # the diffusers failure this works around
        run_trajectory(RefFinite, OursFinite, config, steps)
    report = run_trajectory(RefEulerAtFinal, OursFinite, config, steps)
    report.assert_within(RTOL)


def test_repeated_first_timesteps_run_out_with_a_clear_error():
    """squaredcos + karras truncates the top timesteps to 998, 998, 998: diffusers (and we) start at the
    second match and run past the end; we say so instead of an IndexError."""
    s = Ours.from_config({**SD15, "beta_schedule": "squaredcos_cap_v2", **KARRAS})
    s.set_timesteps(7)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(SdrtError, match="used up"):
        for t in s.timesteps:
            x = s.step(x, t, x).prev_sample


@pytest.mark.parametrize("variant", [{}, SDE, {**SDE, **KARRAS, "solver_order": 3}], ids=["2m", "sde", "sde_karras_3m"])
@pytest.mark.parametrize("steps", [7, 25])
def test_img2img_begin_index(variant, steps):
    check({**SD21, **variant}, steps, strength=0.6)


def test_thresholding_changes_the_numbers():
    """The grid's thresholding rows mean something only if thresholding actually clips here."""
    a, b = Ours.from_config({**SD15, "prediction_type": "sample"}), Ours.from_config(
        {**SD15, "prediction_type": "sample", "thresholding": True}
    )
    a.set_timesteps(7)
    b.set_timesteps(7)
    x = np.full(SHAPE, 3.0, np.float32)
    assert not np.allclose(a.step(x, a.timesteps[0], x).prev_sample, b.step(x, b.timesteps[0], x).prev_sample)


# -- stochastic draws -------------------------------------------------------------------------------------


def _sde_step(**step_kwargs):
    s = Ours.from_config({**SD15, **SDE})
    s.set_timesteps(10)
    x = np.ones(SHAPE, np.float32)
    return s.step(0.5 * x, s.timesteps[0], x, **step_kwargs).prev_sample


def test_sde_noise_comes_from_the_generator_or_the_caller():
    a = _sde_step(generator=np.random.default_rng(7))
    b = _sde_step(generator=np.random.default_rng(7))
    c = _sde_step(generator=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    given = np.random.default_rng(7).standard_normal(SHAPE, dtype=np.float32)
    np.testing.assert_array_equal(_sde_step(noise=given), a)


def test_ode_ignores_noise():
    s = Ours.from_config(SD15)
    s.set_timesteps(10)
    x = np.ones(SHAPE, np.float32)
    out = s.step(0.5 * x, s.timesteps[0], x, noise=np.full(SHAPE, 100.0, np.float32)).prev_sample
    assert np.abs(out).max() < 10


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("algorithm_type", "dpmsolver"),
        ("algorithm_type", "sde-dpmsolver"),
        ("algorithm_type", "deis"),
        ("solver_order", 4),
        ("solver_type", "rk4"),
        ("use_lu_lambdas", True),
        ("use_exponential_sigmas", True),
        ("use_flow_sigmas", True),
        ("variance_type", "learned_range"),
        ("prediction_type", "flow_prediction"),
        ("final_sigmas_type", "sigma_max"),
        ("timestep_spacing", "karras"),
        ("beta_schedule", "cosine"),
    ],
)
def test_unimplemented_value_is_a_one_line_error(key, value):
    with pytest.raises(SdrtError, match=f"{key}={value!r}") as err:
        Ours.from_config({**SD15, key: value})
    assert "\n" not in str(err.value)


def test_unknown_key_from_other_schedulers_is_ignored_like_diffusers():
    s = Ours.from_config({**SD15, "clip_sample": True, "skip_prk_steps": True, "interpolation_type": "linear"})
    assert s.config["steps_offset"] == 1


@pytest.mark.parametrize("n", [0, -3, 1001, 2.5])
def test_bad_step_counts(n):
    with pytest.raises(SdrtError, match="num_inference_steps"):
        Ours.from_config(SD15).set_timesteps(n)


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_spacing_that_repeats_timesteps(spacing):
    """At 1000 steps these spacings repeat a timestep: a zero-length step, NaN in diffusers."""
    with pytest.raises(SdrtError, match=f"{spacing}' repeats timesteps"):
        Ours.from_config({**SD15, "timestep_spacing": spacing}).set_timesteps(1000)
    Ours.from_config({**SD15, "timestep_spacing": spacing}).set_timesteps(999)


def test_step_before_set_timesteps():
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(SdrtError, match="set_timesteps"):
        Ours.from_config(SD15).step(x, 981, x)


def test_timestep_not_in_schedule_and_shape_mismatch():
    s = Ours.from_config(SD15)
    s.set_timesteps(10)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(SdrtError, match="not in the schedule"):
        s.step(x, 5, x)
    with pytest.raises(SdrtError, match="shape"):
        s.step(np.zeros((1, 4, 8, 9), np.float32), s.timesteps[0], x)
    sde = Ours.from_config({**SD15, **SDE})
    sde.set_timesteps(10)
    with pytest.raises(SdrtError, match="noise shape"):
        sde.step(x, sde.timesteps[0], x, noise=np.zeros((2, 4, 8, 8), np.float32))


def test_module_does_not_import_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sdrt.runtime.schedulers.dpmsolver_multistep as m, sdrt.runtime.schedulers.unipc_multistep\n"
        "s = m.DPMSolverMultistepScheduler(); s.set_timesteps(3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
