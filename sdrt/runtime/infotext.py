"""AUTOMATIC1111's infotext: the "parameters" text its PNGs carry and its API answers with, for one image.

`sdrt generate` writes it into PNGs, `sdrt serve` returns it in `info.infotexts`, `sdrt batch` writes
it too: one module, so the three agree.
"""

from __future__ import annotations

from typing import Any


def a1111_parameters(parameters: dict[str, Any], index: int = 0) -> str:
    """The "parameters" text of AUTOMATIC1111's PNGs, for one image of the call."""
    fields = [("Steps", parameters["steps"]), ("Sampler", parameters.get("sampler") or parameters["scheduler"])]
    if "true_cfg_scale" in parameters:  # Flux, as Forge writes it: real CFG, then the embedded (distilled) guidance
        fields += [("CFG scale", parameters["true_cfg_scale"]), ("Distilled CFG Scale", parameters["guidance_scale"])]
    else:
        fields.append(("CFG scale", parameters["guidance_scale"]))
    fields += [("Seed", image_seed(parameters, index)), ("Size", f"{parameters['width']}x{parameters['height']}")]
    if parameters.get("schedule_type"):  # A1111 1.9+: the schedule beside the sampler (flow Euler's Karras, ...)
        fields.insert(2, ("Schedule type", parameters["schedule_type"]))
    if parameters.get("model_hash"):
        fields.append(("Model hash", parameters["model_hash"]))
    fields.append(("Model", parameters["model"]))
    if parameters.get("vae"):
        fields.append(("VAE", parameters["vae"]))
    if parameters.get("subseed_strength"):
        fields += [("Variation seed", parameters["subseeds"][index]),
                   ("Variation seed strength", parameters["subseed_strength"])]
    if parameters.get("seed_resize_from"):
        h, w = parameters["seed_resize_from"]
        fields.append(("Seed resize from", f"{w}x{h}"))
    if "strength" in parameters:
        fields.append(("Denoising strength", parameters["strength"]))
    if parameters.get("clip_skip"):
        fields.append(("Clip skip", parameters["clip_skip"] + 1))  # the web UI counts the last layer as 1
    fields += hires_fields(parameters.get("hires"))
    if parameters.get("textual_inversions"):
        fields.append(("TI hashes", quoted(", ".join(f"{t['name']}: {t['hash']}"
                                                       for t in parameters["textual_inversions"]))))
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
        fields.append(("Lora hashes", quoted(", ".join(f"{lora['name']}: {lora['hash']}" for lora in loras))))
    prompts = parameters["prompt"]
    per_prompt = parameters["num_images_per_prompt"]
    k = index // per_prompt
    tags = "".join(f" <lora:{lora['name']}:{lora['scale']:g}>" for lora in loras)
    lines = [prompts[k] + tags]
    if parameters["negative_prompt"][k]:
        lines.append(f"Negative prompt: {parameters['negative_prompt'][k]}")
    lines.append(", ".join(f"{name}: {value}" for name, value in fields))
    return "\n".join(lines)


def hires_fields(hires: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The web UI's hires fix lines, in its order."""
    if not hires:
        return []
    resize = hires.get("resize")
    fields: list[tuple[str, Any]] = [("Hires resize", f"{resize[0]}x{resize[1]}") if resize
                                     else ("Hires upscale", f"{hires['scale']:g}")]
    if hires.get("steps_given"):
        fields.append(("Hires steps", hires["steps"]))
    fields.append(("Hires upscaler", hires["upscaler"]))
    if hires.get("sampler_given"):
        fields.append(("Hires sampler", hires.get("sampler") or hires["scheduler"]))
    if hires.get("prompt") is not None:
        fields.append(("Hires prompt", quoted(hires["prompt"])))
    if hires.get("negative_prompt") is not None:
        fields.append(("Hires negative prompt", quoted(hires["negative_prompt"])))
    return fields


def quoted(text: str) -> str:
    """A value with commas or quotes, quoted the way the web UI's infotext does (JSON string)."""
    import json

    return json.dumps(text, ensure_ascii=False)


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


def parse_infotext(text: str) -> dict[str, Any]:
    """The web UI's reading of an infotext: "Prompt", "Negative prompt", then each "Key: value" of the last
    line (quoted values unquoted; "Size: 512x768" also as "Size-1" / "Size-2"), values as text."""
    import json
    import re

    lines = text.strip().split("\n")
    fields_line = lines[-1] if lines and re.search(r"(^|, )Steps: ", lines[-1]) else ""
    body = lines[:-1] if fields_line else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for match in re.finditer(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', fields_line):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
        size = re.fullmatch(r"(\d+)x(\d+)", value) if isinstance(value, str) else None
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.group(1), size.group(2)
    return out
