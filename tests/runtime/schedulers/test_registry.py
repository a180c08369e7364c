"""get_scheduler: names, class names and config dicts give what diffusers' from_config would give."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.runtime.schedulers import CLASSES, SCHEDULERS, get_scheduler

from ._reference import reference_class
from .test_parity import SD15, SD21


@pytest.mark.parametrize("base", [SD15, SD21], ids=["sd15", "sd21"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_name_equals_diffusers_from_loaded_config(name, base):
    """As `Cls.from_config(pipe.scheduler.config, **overrides)` in diffusers (defaults of the loaded class do not carry over)."""
    cls, overrides = SCHEDULERS[name]
    loaded = reference_class(base["_class_name"]).from_config(base).config
    ref = reference_class(cls.__name__).from_config(loaded, **overrides)
    mine = get_scheduler(name, base)
    assert type(mine) is cls
    assert mine.config == {k: ref.config[k] for k in mine.config}
    ref.set_timesteps(10)
    mine.set_timesteps(10)
    np.testing.assert_allclose(np.asarray(mine.timesteps, dtype=np.float64), ref.timesteps.numpy(), rtol=1e-6)
    assert abs(float(mine.init_noise_sigma) - float(ref.init_noise_sigma)) <= 1e-5 * float(ref.init_noise_sigma)


def test_names_cover_issue_3():
    assert set(SCHEDULERS) == {"ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde",
                               "lms", "unipc", "lcm"}
    assert SCHEDULERS["dpmpp_sde"][1]["algorithm_type"] == "sde-dpmsolver++"
    assert SCHEDULERS["dpmpp_2m_karras"][1]["use_karras_sigmas"] is True


@pytest.mark.parametrize("class_name", list(CLASSES))
def test_class_name_and_config_dict(class_name):
    by_name = get_scheduler(class_name, SD15)
    by_dict = get_scheduler({**SD15, "_class_name": class_name})
    assert type(by_name).__name__ == type(by_dict).__name__ == class_name
    assert by_name.config["beta_schedule"] == by_dict.config["beta_schedule"] == "scaled_linear"


def test_folder_config_alone():
    """The pipeline's default: the folder's own scheduler_config.json, with no name."""
    sched = get_scheduler(SD21, SD21)
    assert type(sched).__name__ == "DDIMScheduler" and sched.config["prediction_type"] == "v_prediction"


def test_name_spelling_variants():
    assert type(get_scheduler("Euler-A", SD15)).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(get_scheduler("DPM++ 2M Karras", SD15)).__name__ == "DPMSolverMultistepScheduler"
