"""Config handling of the part-A ports: diffusers' keys 1:1, foreign keys ignored, unimplemented values refused."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime import schedulers as ours

from ._reference import reference_class

PART_A = [
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "LCMScheduler",
]


@pytest.mark.parametrize("name", PART_A)
def test_defaults_are_diffusers_signature(name):
    """Same keys and defaults as diffusers' __init__, so a scheduler_config.json maps 1:1."""
    params = inspect.signature(reference_class(name).__init__).parameters
    theirs = {k: p.default for k, p in params.items() if k != "self"}
    assert getattr(ours, name).defaults == theirs


@pytest.mark.parametrize("name", PART_A)
def test_from_config_ignores_other_schedulers_keys(name):
    config = {
        "_class_name": "SomethingElse",
        "_diffusers_version": "0.6.0",
        "solver_order": 3,  # a DPM-Solver key
        "skip_prk_steps": True,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
    }
    sched = getattr(ours, name).from_config(config)
    assert sched.config["beta_schedule"] == "scaled_linear"
    assert "_class_name" not in sched.config and "solver_order" not in sched.config
    if "skip_prk_steps" in sched.defaults:
        assert sched.config["skip_prk_steps"] is True


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("DDIMScheduler", "beta_schedule", "sigmoid"),
        ("DDIMScheduler", "prediction_type", "flow"),
        ("PNDMScheduler", "prediction_type", "sample"),
        ("EulerDiscreteScheduler", "use_exponential_sigmas", True),
        ("EulerDiscreteScheduler", "use_beta_sigmas", True),
        ("EulerDiscreteScheduler", "timestep_type", "continuous"),
        ("EulerDiscreteScheduler", "interpolation_type", "cubic"),
        ("EulerDiscreteScheduler", "final_sigmas_type", "sigma_max"),
        ("EulerAncestralDiscreteScheduler", "timestep_spacing", "karras"),
        ("LMSDiscreteScheduler", "use_exponential_sigmas", True),
        ("LCMScheduler", "beta_schedule", "laplace"),
    ],
)
def test_unimplemented_value_is_refused_by_name(name, key, value):
    with pytest.raises(SdrtError) as err:
        getattr(ours, name).from_config({key: value})
    message = str(err.value)
    assert key in message and repr(value) in message and "\n" not in message


def test_null_flag_is_off_as_in_diffusers():
    sched = ours.EulerDiscreteScheduler.from_config({"use_karras_sigmas": None})
    assert sched.config["use_karras_sigmas"] is False


def test_unknown_keyword_to_constructor_is_refused():
    with pytest.raises(SdrtError, match="no config key 'solver_order'"):
        ours.DDIMScheduler(solver_order=2)


def test_generator_draws_are_reproducible_and_equal_supplied_noise():
    """Stochastic steps draw standard normals from the numpy Generator; `noise=` gives the same result."""
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    results = []
    for supply in (False, False, True):
        sched = ours.EulerAncestralDiscreteScheduler()
        sched.set_timesteps(5)
        rng, draw_rng = np.random.default_rng(7), np.random.default_rng(7)
        y = x
        for t in sched.timesteps:
            noise = draw_rng.standard_normal(x.shape, dtype=np.float32) if supply else None
            y = sched.step(0.5 * y, t, y, generator=rng, noise=noise).prev_sample
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.parametrize("name", PART_A)
def test_order_attribute_matches_diffusers(name):
    assert getattr(ours, name).order == reference_class(name).order
