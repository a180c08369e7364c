"""numpy ports of diffusers' schedulers, and the registry the pipeline picks them from.

numpy only: `import sdrt.runtime.schedulers` never imports torch (a test checks it with torch blocked).
"""

from __future__ import annotations

from typing import Any

from sdrt.errors import SdrtError

from ._base import SchedulerMixin, SchedulerOutput
from .ddim import DDIMScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from .euler_discrete import EulerDiscreteScheduler
from ._flow_match import calculate_shift, mu_for
from .flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from .flow_match_heun_discrete import FlowMatchHeunDiscreteScheduler
from .lcm import LCMScheduler
from .lms_discrete import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc_multistep import UniPCMultistepScheduler

CLASSES: dict[str, type[SchedulerMixin]] = {
    cls.__name__: cls
    for cls in (
        DDIMScheduler,
        PNDMScheduler,
        EulerDiscreteScheduler,
        EulerAncestralDiscreteScheduler,
        DPMSolverMultistepScheduler,
        LMSDiscreteScheduler,
        UniPCMultistepScheduler,
        LCMScheduler,
    )
}

# Common names (A1111 / diffusers docs) -> class + config overrides applied on top of the model's config.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # PLMS, as SD pipelines run it
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_sde": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "lms": (LMSDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}


#: registry name -> AUTOMATIC1111's sampler name (what its PNG infotexts say)
A1111_NAMES: dict[str, str] = {
    "ddim": "DDIM", "pndm": "PLMS", "euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_sde": "DPM++ 2M SDE", "lms": "LMS", "unipc": "UniPC",
    "lcm": "LCM",
}

#: the flow-matching samplers (SD3, SD3.5, Flux): models trained on a velocity take only these. The
#: names are the ones A1111/Forge users pick for such models ("Euler", "Heun"; the schedule type
#: "Karras", "Exponential" or "Beta" is A1111's separate `scheduler` field, spelled into the name here)
FLOW_CLASSES: dict[str, type[SchedulerMixin]] = {
    cls.__name__: cls for cls in (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)}
FLOW_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler": (FlowMatchEulerDiscreteScheduler, {}),
    "heun": (FlowMatchHeunDiscreteScheduler, {}),
    "euler_karras": (FlowMatchEulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "euler_exponential": (FlowMatchEulerDiscreteScheduler, {"use_exponential_sigmas": True}),
    "euler_beta": (FlowMatchEulerDiscreteScheduler, {"use_beta_sigmas": True}),
}
#: flow registry name -> (A1111's sampler name, its schedule type)
FLOW_A1111_NAMES: dict[str, tuple[str, str]] = {
    "euler": ("Euler", "Automatic"), "heun": ("Heun", "Automatic"), "euler_karras": ("Euler", "Karras"),
    "euler_exponential": ("Euler", "Exponential"), "euler_beta": ("Euler", "Beta"),
}


def is_flow_config(config: dict[str, Any] | None) -> bool:
    """Whether a scheduler config is a flow-matching one (the model predicts a velocity)."""
    return bool(config) and config.get("_class_name") in FLOW_CLASSES


def registry_name(scheduler: SchedulerMixin) -> str | None:
    """The registry name whose class and overrides this scheduler's config has (the most specific one),
    or None when none fits (e.g. a PNDM with PRK steps): metadata then gives the class name."""
    table = FLOW_SCHEDULERS if type(scheduler) in FLOW_CLASSES.values() else SCHEDULERS
    fits = [(len(overrides), name) for name, (cls, overrides) in table.items()
            if type(scheduler) is cls and all(scheduler.config.get(k) == v for k, v in overrides.items())]
    return max(fits)[1] if fits else None


def _class_for(config: dict[str, Any]) -> type[SchedulerMixin]:
    name = config.get("_class_name")
    if name not in CLASSES and name not in FLOW_CLASSES:
        raise SdrtError(
            f"scheduler config _class_name {name!r} is not supported; use one of "
            f"{', '.join([*CLASSES, *FLOW_CLASSES])} or a name: {', '.join(SCHEDULERS)}"
        )
    return CLASSES.get(name) or FLOW_CLASSES[name]


def _normalized(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_").replace("++", "pp")


def get_scheduler(name_or_config: str | dict[str, Any], base_config: dict[str, Any] | None = None) -> SchedulerMixin:
    """A scheduler from a common name, a class name or a scheduler_config.json dict.

    A name or class name is built on `base_config` (the model's scheduler_config.json: its betas,
    prediction_type, steps_offset...), with the name's overrides on top; a dict stands on its own.
    """
    if isinstance(name_or_config, dict):
        return _class_for(name_or_config).from_config(name_or_config)
    # Only the keys the model's config states carry over; the new class's defaults fill the rest.
    # That is diffusers' `Cls.from_config(pipe.scheduler.config)` too: it drops `_use_default_values`.
    base = dict(base_config or {})
    key = str(name_or_config).strip()
    flow = is_flow_config(base)
    if key in CLASSES or key in FLOW_CLASSES:
        cls = CLASSES.get(key) or FLOW_CLASSES[key]
        if (key in FLOW_CLASSES) != flow and base:
            raise SdrtError(f"scheduler {key} does not fit this model's {base.get('_class_name')}: use a "
                            f"{'flow-matching' if flow else 'noise-prediction'} one: "
                            f"{', '.join(FLOW_CLASSES if flow else CLASSES)}")
        return cls.from_config(base)
    normalized = _normalized(key)
    if flow:
        if normalized not in FLOW_SCHEDULERS:
            raise SdrtError(f"scheduler {key!r} is not one for flow-matching models (SD3, Flux); use one of "
                            f"{', '.join(FLOW_SCHEDULERS)} (or a class name: {', '.join(FLOW_CLASSES)})")
        cls, overrides = FLOW_SCHEDULERS[normalized]
        return cls.from_config({**base, **overrides})
    if normalized not in SCHEDULERS:
        raise SdrtError(f"unknown scheduler {key!r}; use one of {', '.join(SCHEDULERS)} (or a class name)")
    cls, overrides = SCHEDULERS[normalized]
    return cls.from_config({**base, **overrides})


__all__ = [
    "CLASSES",
    "SCHEDULERS",
    "A1111_NAMES",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FLOW_A1111_NAMES",
    "FLOW_CLASSES",
    "FLOW_SCHEDULERS",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerMixin",
    "SchedulerOutput",
    "UniPCMultistepScheduler",
    "calculate_shift",
    "get_scheduler",
    "is_flow_config",
    "mu_for",
    "registry_name",
]
