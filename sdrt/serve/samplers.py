"""Sampler names as AUTOMATIC1111 spells them, mapped to sdrt's scheduler names.

A1111 (1.9+) sends a sampler (`sampler_name`) and, separately, a noise schedule (`scheduler`:
"Automatic", "Karras", ...); older clients put the schedule in the name ("DPM++ 2M Karras"). Only
the pairs sdrt runs are listed; anything else is refused with the list, never silently swapped.
"""

from __future__ import annotations

from sdrt.runtime.schedulers import A1111_NAMES
from sdrt.serve.limits import RequestRejected

#: aliases A1111 lists for its samplers (GET /sdapi/v1/samplers), by A1111 name
ALIASES: dict[str, list[str]] = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"], "LMS": ["k_lms"],
    "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M Karras": ["k_dpmpp_2m_ka"], "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "LCM": ["k_lcm"],
}
#: A1111 sampler name -> (sdrt scheduler name, aliases): the runtime's own table, turned around
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    a1111: (sdrt_name, ALIASES.get(a1111, [])) for sdrt_name, a1111 in A1111_NAMES.items()}

#: A1111 `scheduler` values accepted with each sampler; "Karras" turns DPM++ 2M into its Karras form
SCHEDULE_NAMES = ("automatic", "")
KARRAS = {"dpmpp_2m": "dpmpp_2m_karras"}


def resolve(sampler_name: str | None, schedule: str | None = None) -> str | None:
    """An A1111 sampler (and schedule) -> sdrt scheduler name; None or "" -> the model's own."""
    if not sampler_name:
        return None
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


def listing() -> list[dict]:
    """GET /sdapi/v1/samplers."""
    return [{"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()]
