"""Sampler names as AUTOMATIC1111 spells them, mapped to sdrt's scheduler names.

A1111 (1.9+) sends a sampler (`sampler_name`) and, separately, a noise schedule (`scheduler`:
"Automatic", "Karras", ...); older clients put the schedule in the name ("DPM++ 2M Karras"). Only
the pairs sdrt runs are listed; anything else is refused with the list, never silently swapped.

Flow-matching models (SD3, SD3.5, Flux: their scheduler config is a FlowMatch* one) take other
samplers than the UNet families: "Euler" (FlowMatchEulerDiscreteScheduler; with the schedule types
"Karras", "Exponential" or "Beta") and "Heun" (FlowMatchHeunDiscreteScheduler), the names Forge shows
for them. `resolve(..., flow=True)` maps those; "Euler a" or "DPM++ 2M" on such a model is refused
before the request is queued.
"""

from __future__ import annotations

from typing import Any

from sdrt.runtime.schedulers import A1111_NAMES, FLOW_A1111_NAMES, is_flow_config
from sdrt.serve.limits import RequestRejected

#: aliases A1111 lists for its samplers (GET /sdapi/v1/samplers), by A1111 name
ALIASES: dict[str, list[str]] = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"], "LMS": ["k_lms"],
    "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M Karras": ["k_dpmpp_2m_ka"], "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "LCM": ["k_lcm"], "Heun": ["k_heun"],
}
#: A1111 sampler name -> (sdrt scheduler name, aliases): the runtime's own table, turned around
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    a1111: (sdrt_name, ALIASES.get(a1111, [])) for sdrt_name, a1111 in A1111_NAMES.items()}
#: flow-matching models: A1111 sampler name -> {schedule type (lower case) -> sdrt scheduler name}
FLOW_SAMPLERS: dict[str, dict[str, str]] = {}
for _name, (_sampler, _schedule) in FLOW_A1111_NAMES.items():
    FLOW_SAMPLERS.setdefault(_sampler, {})[_schedule.lower()] = _name

#: A1111 `scheduler` values accepted with each sampler; "Karras" turns DPM++ 2M into its Karras form
SCHEDULE_NAMES = ("automatic", "")
KARRAS = {"dpmpp_2m": "dpmpp_2m_karras"}


def flow_model(pipe: Any) -> bool:
    """Whether a loaded pipeline samples by flow matching (its folder's scheduler config says so)."""
    return is_flow_config(getattr(pipe, "scheduler_config", None))


def resolve(sampler_name: str | None, schedule: str | None = None, flow: bool = False) -> str | None:
    """An A1111 sampler (and schedule) -> sdrt scheduler name; None or "" -> the model's own.
    `flow`: the model is a flow-matching one (SD3, Flux), which takes only the flow samplers."""
    if not sampler_name:
        return None
    if flow:
        return _resolve_flow(sampler_name, schedule)
    by_alias = {alias.lower(): name for name, (_, aliases) in SAMPLERS.items() for alias in [name, *aliases]}
    name = by_alias.get(sampler_name.lower())
    if name is None:
        raise RequestRejected(f"sampler {sampler_name!r} is not available here: use one of "
                              f"{', '.join(SAMPLERS)} (GET /sdapi/v1/samplers)")
    sdrt_name = SAMPLERS[name][0]
    schedule = (schedule or "").lower()
    if schedule == "karras" and sdrt_name in KARRAS:
        return KARRAS[sdrt_name]
    if schedule not in SCHEDULE_NAMES and not (schedule == "karras" and sdrt_name.endswith("_karras")):
        raise RequestRejected(f"scheduler {schedule!r} is not available with sampler {name!r}: use "
                              f"'Automatic'" + (" or 'Karras'" if sdrt_name in KARRAS else ""))
    return sdrt_name


def _resolve_flow(sampler_name: str, schedule: str | None) -> str:
    by_alias = {alias.lower(): name for name in FLOW_SAMPLERS for alias in [name, *ALIASES.get(name, [])]}
    name = by_alias.get(sampler_name.lower())
    if name is None:
        raise RequestRejected(f"sampler {sampler_name!r} is not one a flow-matching model (SD3, Flux) takes: use "
                              f"{' or '.join(FLOW_SAMPLERS)} (GET /sdapi/v1/samplers)")
    schedules = FLOW_SAMPLERS[name]
    key = (schedule or "automatic").lower()
    if key not in schedules:
        raise RequestRejected(f"scheduler {schedule!r} is not available with sampler {name!r} on a flow-matching "
                              f"model: use {', '.join(repr(s.title()) for s in schedules)}")
    return schedules[key]


def listing(unet: bool = True, flow: bool = False) -> list[dict]:
    """GET /sdapi/v1/samplers: the samplers of the loaded models' kinds (UNet families, flow matching)."""
    names = {name: aliases for name, (_, aliases) in SAMPLERS.items()} if unet else {}
    if flow:
        names.update({name: ALIASES.get(name, []) for name in FLOW_SAMPLERS if name not in names})
    return [{"name": name, "aliases": aliases, "options": {}} for name, aliases in names.items()]


#: GET /sdapi/v1/schedulers: A1111's schedule types sdrt runs (Karras: DPM++ 2M and flow Euler; the others flow Euler)
SCHEDULE_TYPES = ("Automatic", "Karras", "Exponential", "Beta")


def schedule_listing(flow: bool) -> list[dict]:
    types = SCHEDULE_TYPES if flow else SCHEDULE_TYPES[:2]
    return [{"name": t.lower(), "label": t, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for t in types]
