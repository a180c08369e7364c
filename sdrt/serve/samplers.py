"""Sampler names as AUTOMATIC1111 spells them, mapped to sdrt's scheduler names.

A1111 (1.9+) sends a sampler (`sampler_name`) and, separately, a noise schedule (`scheduler`:
"Automatic", "Karras", ...); older clients put the schedule in the name ("DPM++ 2M Karras"). Only
the pairs sdrt runs are listed; anything else is refused with the list, never silently swapped.
"""

from __future__ import annotations

from sdrt.serve.limits import RequestRejected

#: A1111 sampler name -> (sdrt scheduler name, aliases A1111 lists for it)
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "Euler a": ("euler_a", ["k_euler_a", "k_euler_ancestral"]),
    "Euler": ("euler", ["k_euler"]),
    "LMS": ("lms", ["k_lms"]),
    "DPM++ 2M": ("dpmpp_2m", ["k_dpmpp_2m"]),
    "DPM++ 2M Karras": ("dpmpp_2m_karras", ["k_dpmpp_2m_ka"]),
    "DPM++ 2M SDE": ("dpmpp_sde", ["k_dpmpp_2m_sde"]),
    "DDIM": ("ddim", []),
    "PLMS": ("pndm", []),
    "UniPC": ("unipc", []),
    "LCM": ("lcm", ["k_lcm"]),
}

#: A1111 `scheduler` values accepted with each sampler; "Karras" turns DPM++ 2M into its Karras form
SCHEDULE_NAMES = ("automatic", "")
KARRAS = {"dpmpp_2m": "dpmpp_2m_karras"}

#: sdrt scheduler (or diffusers class) name -> A1111 sampler name, for infotexts
A1111_NAME = {sdrt_name: name for name, (sdrt_name, _) in SAMPLERS.items()}
CLASS_TO_A1111 = {
    "DDIMScheduler": "DDIM", "PNDMScheduler": "PLMS", "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a", "LMSDiscreteScheduler": "LMS",
    "UniPCMultistepScheduler": "UniPC", "LCMScheduler": "LCM", "DPMSolverMultistepScheduler": "DPM++ 2M",
}


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


def a1111_name(sdrt_name: str | None, class_name: str) -> str:
    """The A1111 spelling of what ran: the requested name, else the model's scheduler class."""
    if sdrt_name in A1111_NAME:
        return A1111_NAME[sdrt_name]
    return CLASS_TO_A1111.get(class_name, class_name)


def listing() -> list[dict]:
    """GET /sdapi/v1/samplers."""
    return [{"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()]
