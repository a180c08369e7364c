"""UniPCMultistepScheduler against diffusers' own class, whole trajectories.

Tolerance: 1e-5 relative (max-abs error over max-abs value); measured worst is a few 1e-6, on
1000-step runs, from float32 rounding that differs step by step between torch and numpy.

Where diffusers' last step onto sigma = 0 gives NaN, inf or a singular solve (bh1, predict_x0=False,
or order >= 2 there without lower_order_final), ours takes the first-order limit, the data
prediction; those configs are compared on every earlier step and on that limit.
"""

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler as Ref

from sdrt.errors import SdrtError
from sdrt.runtime.schedulers.unipc_multistep import UniPCMultistepScheduler as Ours
from tests.runtime.schedulers._harness import SHAPE, pseudo_model, rel_err, run_trajectory
from tests.runtime.schedulers.test_dpmsolver_multistep import SD15, SD21, finite

RTOL = 1e-5
STEPS = [1, 2, 7, 25, 50]
KARRAS = {"use_karras_sigmas": True}
RefFinite, OursFinite = finite(Ref), finite(Ours)


def check(config, steps, **kwargs):
    report = run_trajectory(RefFinite, OursFinite, config, steps, **kwargs)
    report.assert_within(RTOL)
    return report


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("variant", [{}, KARRAS, {"solver_order": 3}], ids=["bh2", "karras", "order3"])
@pytest.mark.parametrize("base", [SD15, SD21], ids=["sd15", "sd21"])
def test_sd_configs_every_step_count(base, variant, steps):
    assert check({**base, **variant}, steps).steps_run == steps


@pytest.mark.parametrize(
    "extra",
    [{"timestep_spacing": "trailing"}, {"timestep_spacing": "trailing", "solver_order": 3}, KARRAS],
    ids=["trailing", "trailing_order3", "karras"],
)
def test_1000_steps(extra):
    check({**SD15, **extra}, 1000)


@pytest.mark.parametrize("steps", [2, 7, 25])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("predict_x0", [True, False])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
def test_solver_grid_on_sigma_min(solver_type, predict_x0, order, steps):
    """Every solver combination, ending on sigma_min where diffusers' B(h) maths stays finite."""
    config = {**SD15, "solver_type": solver_type, "predict_x0": predict_x0, "solver_order": order}
    check({**config, "final_sigmas_type": "sigma_min"}, steps)


GRID = [
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"disable_corrector": [0, 1, 2]},
    {"disable_corrector": [5], "solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min", **KARRAS},
    {**KARRAS, "sigma_min": 0.1, "sigma_max": 10.0},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction", "solver_order": 3},
    {"timestep_spacing": "linspace", "steps_offset": 0},
    {"timestep_spacing": "trailing", "steps_offset": 0},
    {"timestep_spacing": "leading", "steps_offset": 0},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": list(np.linspace(0.0002, 0.03, 1000))},
    {"num_train_timesteps": 500, "timestep_spacing": "trailing"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9},
    {"solver_type": "midpoint"},  # diffusers maps DPM's solver types onto bh2
]


@pytest.mark.parametrize("steps", [1, 7, 25, 50])
@pytest.mark.parametrize("extra", GRID, ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items())[:60])
def test_config_grid(extra, steps):
    check({**SD15, **extra}, steps)


@pytest.mark.parametrize("variant", [{}, {"solver_order": 3}, KARRAS], ids=["bh2", "order3", "karras"])
@pytest.mark.parametrize("steps", [7, 25])
def test_img2img_begin_index(variant, steps):
    check({**SD21, **variant}, steps, strength=0.6)


# -- the last step onto sigma = 0, where diffusers' formula breaks -----------------------------------------


def _lockstep(config, steps):
    """Run both; return the worst error before the last step, and ours vs the limit on the last step."""
    ref, ours = Ref.from_config(config), Ours.from_config(config)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    rng = np.random.default_rng(0)
    fixed = rng.standard_normal(SHAPE).astype(np.float32)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    x_ref, worst = torch.from_numpy(x.copy()), 0.0
    for k, t in enumerate(ours.timesteps):
        out = pseudo_model(x, float(t), fixed)
        x_new = ours.step(out, t, x).prev_sample
        if k < steps - 1:
            x_ref = ref.step(torch.from_numpy(pseudo_model(x_ref.numpy(), float(t), fixed)), t, x_ref).prev_sample
            worst = max(worst, rel_err(x_new, x_ref))
            x = x_new
            continue
        try:  # diffusers' last step: NaN, inf or a singular solve, after it has corrected the sample
            ref.step(torch.from_numpy(pseudo_model(x_ref.numpy(), float(t), fixed)), t, x_ref)
        except RuntimeError:
            pass
        corrected = ref.last_sample.numpy()  # diffusers' UniC output at the last step
        sigma = float(ours.sigmas[-2])
        alpha, sigma_t = 1 / np.sqrt(1 + sigma**2), sigma / np.sqrt(1 + sigma**2)
        if config.get("predict_x0", True):  # x0 of the uncorrected sample, the integrated quantity
            limit = (x - sigma_t * out) / alpha
        else:  # noise prediction: x0 of the corrected sample
            limit = (corrected - sigma_t * out) / alpha
        return worst, rel_err(x_new, limit)


@pytest.mark.parametrize("steps", [2, 7, 25])
@pytest.mark.parametrize(
    "extra",
    [
        {"solver_type": "bh1"},
        {"solver_type": "bh1", "solver_order": 3},
        {"predict_x0": False},
        {"predict_x0": False, "solver_type": "bh1", "solver_order": 3},
        {"lower_order_final": False},
        {"lower_order_final": False, "solver_order": 3},
    ],
    ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()),
)
def test_last_step_onto_zero_is_the_data_prediction(extra, steps):
    config = {**SD15, **extra}
    before, last = _lockstep(config, steps)
    assert before <= RTOL
    assert last <= RTOL


def test_last_step_onto_zero_equals_diffusers_where_diffusers_is_finite():
    """bh2 + predict_x0 + lower_order_final: diffusers' own last step is the data prediction too."""
    check(SD15, 7)
    ref = Ref.from_config(SD15)
    ref.set_timesteps(7)
    assert float(ref.sigmas[-1]) == 0.0


def test_karras_ending_on_sigma_min_is_an_identity_last_step():
    """karras + sigma_min: the appended last sigma equals the one before, a step of length zero."""
    s = Ours.from_config({**SD15, **KARRAS, "final_sigmas_type": "sigma_min"})
    s.set_timesteps(10)
    assert s.sigmas[-1] == s.sigmas[-2]
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    for t in s.timesteps[:-1]:
        x = s.step(0.1 * x, t, x).prev_sample
    last_in = x
    out = s.step(0.1 * x, s.timesteps[-1], x).prev_sample
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, s.last_sample)  # the corrected sample, not moved further
    assert not np.array_equal(out, last_in)  # the corrector still ran


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("solver_type", "rk4"),
        ("use_exponential_sigmas", True),
        ("use_flow_sigmas", True),
        ("prediction_type", "flow_prediction"),
        ("final_sigmas_type", "sigma_max"),
        ("timestep_spacing", "karras"),
        ("beta_schedule", "cosine"),
        ("solver_p", "DDIMScheduler"),
    ],
)
def test_unimplemented_value_is_a_one_line_error(key, value):
    with pytest.raises(SdrtError, match=f"{key}={value!r}") as err:
        Ours.from_config({**SD15, key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key,value", [("solver_order", 0), ("solver_order", 2.0), ("disable_corrector", "0,1")])
def test_bad_values(key, value):
    with pytest.raises(SdrtError, match=key):
        Ours.from_config({**SD15, key: value})


def test_bad_input_at_run_time():
    s = Ours.from_config(SD15)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(SdrtError, match="set_timesteps"):
        s.step(x, 981, x)
    for n in (0, 1001):
        with pytest.raises(SdrtError, match="num_inference_steps"):
            s.set_timesteps(n)
    with pytest.raises(SdrtError, match="repeats timesteps"):
        s.set_timesteps(1000)
    s.set_timesteps(10)
    with pytest.raises(SdrtError, match="not in the schedule"):
        s.step(x, 5, x)
    with pytest.raises(SdrtError, match="shape"):
        s.step(np.zeros((1, 4, 8, 9), np.float32), s.timesteps[0], x)
    for t in s.timesteps:
        x = s.step(x, t, x).prev_sample
    with pytest.raises(SdrtError, match="used up"):
        s.step(x, s.timesteps[-1], x)
