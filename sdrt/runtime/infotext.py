"""AUTOMATIC1111's infotext: the "parameters" text its PNGs carry and its API answers with, for one image.

`sdrt generate` writes it into PNGs, `sdrt serve` returns it in `info.infotexts`, `sdrt batch` writes
it too: one module, so the three agree.
"""

from __future__ import annotations

from typing import Any


def a1111_parameters(parameters: dict[str, Any], index: int = 0) -> str:
    """The "parameters" text of AUTOMATIC1111's PNGs, for one image of the call."""
    fields = [("Steps", parameters["steps"]), ("Sampler", parameters.get("sampler") or parameters["scheduler"]),
              ("CFG scale", parameters["guidance_scale"]), ("Seed", image_seed(parameters, index)),
              ("Size", f"{parameters['width']}x{parameters['height']}")]
    if parameters.get("schedule_type"):  # A1111 1.9+: the schedule beside the sampler (flow Euler's Karras, ...)
        fields.insert(2, ("Schedule type", parameters["schedule_type"]))
    if parameters.get("model_hash"):
        fields.append(("Model hash", parameters["model_hash"]))
    fields.append(("Model", parameters["model"]))
    if "strength" in parameters:
        fields.append(("Denoising strength", parameters["strength"]))
    fields += [("Batch index", index), ("Backend", parameters["backend"])]
    if parameters.get("vae_tiling", {}).get("tiled"):
        fields.append(("VAE tiling", f"{parameters['vae_tiling']['tile_size']} px"))
    if parameters.get("precision"):
        fields.append(("Precision", parameters.get("runtime_precision") or parameters["precision"].get("unet")))
    units = list(parameters.get("controlnets", []))
    if parameters.get("ip_adapter"):  # sd-webui-controlnet records an IP-Adapter as one more unit
        ip = parameters["ip_adapter"]
        units.append({"module": ip["module"], "model": ip["model"], "weight": ip["scale"], "guidance_start": 0.0,
                      "guidance_end": 1.0})
    for i, unit in enumerate(units):  # sd-webui-controlnet's unit lines
        fields.append((f"ControlNet {i}", '"' + controlnet_unit(unit) + '"'))
    loras = parameters.get("loras", [])
    if loras:  # A1111 keeps the tags in the prompt and lists the files' short hashes
        fields.append(("Lora hashes", '"' + ", ".join(f"{lora['name']}: {lora['hash']}" for lora in loras) + '"'))
    prompts = parameters["prompt"]
    per_prompt = parameters["num_images_per_prompt"]
    k = index // per_prompt
    tags = "".join(f" <lora:{lora['name']}:{lora['scale']:g}>" for lora in loras)
    lines = [prompts[k] + tags]
    if parameters["negative_prompt"][k]:
        lines.append(f"Negative prompt: {parameters['negative_prompt'][k]}")
    lines.append(", ".join(f"{name}: {value}" for name, value in fields))
    return "\n".join(lines)


def controlnet_unit(unit: dict[str, Any]) -> str:
    """One ControlNet unit as sd-webui-controlnet writes it into the infotext ("Module: canny, Model: ...")."""
    mode = "ControlNet is more important" if unit.get("guess_mode") else "Balanced"
    fields = [("Module", unit.get("module", "none")), ("Model", unit["model"]), ("Weight", unit["weight"]),
              ("Guidance Start", unit["guidance_start"]), ("Guidance End", unit["guidance_end"]),
              ("Control Mode", mode)]
    for key, label in (("processor_res", "Processor Res"), ("threshold_a", "Threshold A"),
                       ("threshold_b", "Threshold B")):
        if unit.get(key) is not None:
            fields.append((label, unit[key]))
    return ", ".join(f"{name}: {value}" for name, value in fields)


def image_seed(parameters: dict[str, Any], index: int) -> Any:
    """The seed that regenerates image `index` alone."""
    seeds = parameters.get("seeds")
    return seeds[index] if seeds else parameters["seed"]
