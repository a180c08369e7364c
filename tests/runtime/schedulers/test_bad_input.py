"""The bad inputs of issue 3: each a one-line SdrtError that names the fix."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime import schedulers as ours
from sdrt.runtime.schedulers import SCHEDULERS, get_scheduler

PART_A = ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
          "LMSDiscreteScheduler", "LCMScheduler"]
SAMPLE = np.zeros((1, 4, 8, 8), dtype=np.float32)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_unknown_scheduler_name_lists_known_ones():
    with pytest.raises(SdrtError) as err:
        get_scheduler("dpm_fancy", {})
    message = _one_line(err)
    assert "dpm_fancy" in message and all(name in message for name in SCHEDULERS)


def test_unknown_class_name_in_config():
    with pytest.raises(SdrtError) as err:
        get_scheduler({"_class_name": "DDPMScheduler"}, {})
    assert "DDPMScheduler" in _one_line(err)


@pytest.mark.parametrize("name", PART_A)
@pytest.mark.parametrize("n", [0, -3, 1001])
def test_num_inference_steps_out_of_range(name, n):
    with pytest.raises(SdrtError) as err:
        getattr(ours, name)().set_timesteps(n)
    assert f"num_inference_steps {n}" in _one_line(err) and "1..1000" in str(err.value)


@pytest.mark.parametrize("name", PART_A)
def test_step_before_set_timesteps(name):
    sched = getattr(ours, name)()
    with pytest.raises(SdrtError) as err:
        sched.step(SAMPLE, 999, SAMPLE)
    assert "set_timesteps" in _one_line(err)


@pytest.mark.parametrize("name", PART_A)
def test_timestep_not_in_schedule(name):
    sched = getattr(ours, name)(skip_prk_steps=True) if name == "PNDMScheduler" else getattr(ours, name)()
    sched.set_timesteps(10)
    with pytest.raises(SdrtError) as err:
        sched.step(SAMPLE, 3.5, SAMPLE)
    assert "3.5 is not in the schedule" in _one_line(err)


@pytest.mark.parametrize("name", PART_A)
def test_model_output_shape_differs(name):
    sched = getattr(ours, name)(skip_prk_steps=True) if name == "PNDMScheduler" else getattr(ours, name)()
    sched.set_timesteps(10)
    t = sched.timesteps[0]
    with pytest.raises(SdrtError) as err:
        sched.step(np.zeros((1, 4, 8, 9), dtype=np.float32), t, SAMPLE)
    message = _one_line(err)
    assert "(1, 4, 8, 9)" in message and "(1, 4, 8, 8)" in message


def test_prk_warm_up_needs_four_steps():
    with pytest.raises(SdrtError) as err:
        ours.PNDMScheduler().set_timesteps(3)
    assert "skip_prk_steps" in _one_line(err)


def test_steps_offset_past_training_range():
    with pytest.raises(SdrtError) as err:
        ours.DDIMScheduler(steps_offset=1).set_timesteps(1000)
    assert "steps_offset" in _one_line(err)


def test_lcm_more_steps_than_its_schedule():
    with pytest.raises(SdrtError) as err:
        ours.LCMScheduler().set_timesteps(60)
    assert "original_inference_steps" in _one_line(err)


def test_supplied_noise_shape_differs():
    sched = ours.EulerAncestralDiscreteScheduler()
    sched.set_timesteps(4)
    with pytest.raises(SdrtError) as err:
        sched.step(SAMPLE, sched.timesteps[0], SAMPLE, noise=np.zeros((1, 4, 4, 4), dtype=np.float32))
    assert "noise shape" in _one_line(err)
