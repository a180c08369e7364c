"""ControlNet in `sdrt serve`: sd-webui-controlnet's API, ControlNets by name from --controlnet-dir.

A1111 clients send ControlNet units in `alwayson_scripts.controlnet.args` (webuiapi's `ControlNetUnit`:
`image`/`input_image` base64, `module`, `model`, `weight`, `guidance_start`, `guidance_end`,
`control_mode`, `resize_mode`, `processor_res`, `threshold_a/b`, `enabled`). A unit's `model` is the
name of an exported ControlNet folder directly in the server's --controlnet-dir (A1111's " [hash]"
suffix is ignored); anything else, a path included, is 400 and no answer shows a server path.
`module` runs a preprocessor (sdrt.runtime.preprocessors). "ControlNet is more important" is guess
mode (all units must agree: diffusers' guess mode is per call); "My prompt is more important"
(sd-webui-controlnet's own soft weighting) is refused. A request carries its units; their folders,
weights, windows and mode are part of its batch key (requests with different ControlNet sets never
share a UNet batch), and the worker switches the pipeline to them before the batch.

IP-Adapters are units too, as in sd-webui-controlnet: an exported IP-Adapter folder in --controlnet-dir is
listed by name beside the ControlNets; a unit naming it (module `ip-adapter_clip_sd15` / `..._sdxl`, or
`none`) gives the call's `ip_adapter_image` (its image, not resized: the IP-Adapter's CLIP preprocessing
is the pipeline's) and its scale (`weight`); one per request, of the model's cross-attention width. Its
folder and weight are part of the batch key; the worker switches the pipeline's IP-Adapter before the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

from sdrt.errors import SdrtError
from sdrt.manifest import CONTROLNET_KIND, IP_ADAPTER_KIND, MANIFEST_NAME
from sdrt.serve.limits import RequestRejected

#: sd-webui-controlnet's control modes (index or name) -> guess mode
CONTROL_MODES = {0: False, "Balanced": False, 2: True, "ControlNet is more important": True}
PROMPT_MODE = (1, "My prompt is more important")
RESIZE_MODES = {0: "just", "Just Resize": "just", 1: "crop", "Crop and Resize": "crop", "Resize and Fill": "fill",
                2: "fill", "Inner Fit (Scale to Fit)": "crop", "Outer Fit (Shrink to Fit)": "fill"}
#: sd-webui-controlnet's modules of an IP-Adapter unit (the image encoder's preprocessing); "none" is taken too
IP_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-auto")
#: the sd-webui-controlnet API version this server answers like
API_VERSION = 2


@dataclass(frozen=True)
class Unit:
    """One enabled ControlNet unit of a request: the folder, how strong, when, and its control image."""

    folder: str
    name: str
    weight: float
    start: float
    end: float
    guess_mode: bool
    module: str
    image: Any  # the control image (PIL), preprocessed and resized to the output size

    @property
    def key(self) -> tuple:
        return (self.folder, self.weight, self.start, self.end, self.guess_mode)


@dataclass(frozen=True)
class IPUnit:
    """A request's IP-Adapter unit: the folder, its scale and the image prompt (PIL RGB, as sent)."""

    folder: str
    name: str
    weight: float
    module: str
    image: Any

    @cached_property
    def key(self) -> tuple:
        """The folder, the scale and the image's content: the pipeline takes one image prompt per call."""
        import hashlib

        return (self.folder, self.weight, self.image.size, hashlib.sha256(self.image.tobytes()).hexdigest())


class ControlNetCatalog:
    """The ControlNets and IP-Adapters this server may run: exported folders directly in `folder` (None: none)."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).resolve() if folder is not None else None
        if self.folder is not None and not self.folder.is_dir():
            raise SdrtError(f"--controlnet-dir {folder} is not a folder: pass the folder holding exported "
                            f"ControlNet folders (sdrt export --model CONTROLNET_DIR --out DIR/NAME)")

    def kinds(self) -> dict[str, str]:
        """{name: kind} of the exported ControlNet and IP-Adapter folders directly in the folder."""
        if self.folder is None:
            return {}
        import json

        found = {}
        for entry in sorted(self.folder.iterdir()):
            try:
                data = json.loads((entry / MANIFEST_NAME).read_text())
            except (OSError, ValueError):
                continue
            kind = data.get("pipeline", {}).get("kind")
            if not entry.name.startswith(".") and kind in (CONTROLNET_KIND, IP_ADAPTER_KIND):
                found[entry.name] = kind
        return found

    def names(self) -> list[str]:
        return list(self.kinds())

    def resolve(self, model: Any) -> tuple[str, str]:
        """(folder, name) of a unit's `model`; 400 for anything that is not one of `names()`."""
        name = str(model or "").split(" [", 1)[0].strip()
        if not name or name == "None":
            raise RequestRejected("a ControlNet unit has no model: name one of GET /controlnet/model_list")
        if self.folder is None:
            raise RequestRejected("this server has no ControlNets (it was started without --controlnet-dir)")
        if name not in self.names():  # never a path: only a listed name is looked up
            raise RequestRejected(f"ControlNet {name[:80]!r} is not on this server (GET /controlnet/model_list "
                                  f"lists them)")
        return str(self.folder / name), name


def scripts_units(alwayson_scripts: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The unit dicts of `alwayson_scripts.controlnet` (any case), None when absent."""
    for key, value in alwayson_scripts.items():
        if key.lower() == "controlnet":
            args = value.get("args") if isinstance(value, dict) else None
            if not isinstance(args, list) or not all(isinstance(a, dict) for a in args):
                raise RequestRejected("alwayson_scripts.controlnet.args must be a list of ControlNet units")
            return args
    return None


def _number(unit: dict[str, Any], key: str, default: float, index: int) -> float:
    value = unit.get(key, default)
    try:
        return float(default if value is None else value)
    except (TypeError, ValueError):
        raise RequestRejected(f"ControlNet unit {index}: {key} {value!r} is not a number") from None


def _resize(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """sd-webui-controlnet's resize modes: stretch, cover and centre-crop, or fit and pad with black."""
    if image.size == (width, height) or mode == "just":
        return image
    scale = (max if mode == "crop" else min)(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def _picture(unit: dict[str, Any], limits: Any, index: int) -> Image.Image:
    picture = unit.get("image") or unit.get("input_image")
    if isinstance(picture, dict):  # newer clients: {"image": ..., "mask": ...}
        picture = picture.get("image")
    if not picture:
        raise RequestRejected(f"ControlNet unit {index} has no image: send the control image as base64")
    return limits.decode_image(picture, f"ControlNet unit {index} image").convert("RGB")


def _ip_unit(unit: dict[str, Any], folder: str, name: str, limits: Any, index: int, pipe: Any) -> IPUnit:
    """An IP-Adapter unit, checked against the model (400 naming the unit, never a path)."""
    from sdrt.manifest import Manifest

    module = str(unit.get("module") or "none")
    if module != "none" and module not in IP_MODULES:
        raise RequestRejected(f"ControlNet unit {index}: module {module!r} does not go with the IP-Adapter {name}: use "
                              f"{' or '.join(IP_MODULES[:2])}")
    if pipe is not None:
        facts = pipe.manifest.pipeline
        if not pipe.manifest.family_spec.controlnet or pipe.manifest.family_spec.denoiser != "unet":
            raise RequestRejected(f"ControlNet unit {index}: this model takes no IP-Adapter (sdrt's IP-Adapters are "
                                  f"for SD 1.x/2.x and SDXL)")
        width = Manifest.load(folder).ip_adapter_layout().cross_attention_dim
        if int(facts["text_hidden_size"]) != width:
            raise RequestRejected(f"ControlNet unit {index}: the IP-Adapter {name} has cross-attention width {width}, "
                                  f"the model {facts['text_hidden_size']}: use an IP-Adapter made for this model")
    return IPUnit(folder, name, _number(unit, "weight", 1.0, index), module, _picture(unit, limits, index))


def parse_units(args: list[dict[str, Any]], catalog: ControlNetCatalog, limits: Any, *, width: int,
                height: int, pipe: Any = None) -> tuple[tuple[Unit, ...], IPUnit | None]:
    """The request's enabled ControlNet units (checked: 400 naming the unit and field; images preprocessed)
    and its IP-Adapter unit (None: none; checked against `pipe`'s model when given)."""
    from sdrt.runtime import preprocessors

    units, ip = [], None
    kinds = catalog.kinds()
    for index, unit in enumerate(args):
        if not unit.get("enabled", True):
            continue
        folder, name = catalog.resolve(unit.get("model"))
        if kinds.get(name) == IP_ADAPTER_KIND:
            if ip is not None:
                raise RequestRejected(f"ControlNet unit {index}: a second IP-Adapter unit: sdrt runs one IP-Adapter "
                                      f"per request")
            ip = _ip_unit(unit, folder, name, limits, index, pipe)
            continue
        mode = unit.get("control_mode", 0)
        if mode in PROMPT_MODE:
            raise RequestRejected(f"ControlNet unit {index}: control_mode {mode!r} is not supported: use Balanced or "
                                  f"'ControlNet is more important'")
        if mode not in CONTROL_MODES:
            raise RequestRejected(f"ControlNet unit {index}: unknown control_mode {mode!r}")
        resize = unit.get("resize_mode", 1)
        if resize not in RESIZE_MODES:
            raise RequestRejected(f"ControlNet unit {index}: unknown resize_mode {resize!r}")
        image = _picture(unit, limits, index)
        module = str(unit.get("module") or "none")
        low = _number(unit, "threshold_a", -1, index)
        high = _number(unit, "threshold_b", -1, index)
        resolution = int(_number(unit, "processor_res", -1, index))
        try:
            processed = preprocessors.run(module, image, low=low if low >= 0 else None,
                                          high=high if high >= 0 else None,
                                          resolution=resolution if resolution > 0 else None)
        except SdrtError as e:
            raise RequestRejected(f"ControlNet unit {index}: {e}") from None
        units.append(Unit(folder, name, _number(unit, "weight", 1.0, index), _number(unit, "guidance_start", 0.0, index),
                          _number(unit, "guidance_end", 1.0, index), CONTROL_MODES[mode], module,
                          _resize(processed, width, height, RESIZE_MODES[resize])))
    if len({u.guess_mode for u in units}) > 1:
        raise RequestRejected("ControlNet units disagree on control_mode: 'ControlNet is more important' applies "
                              "to every unit of a request here (diffusers' guess mode)")
    for u in units:
        if not 0.0 <= u.start < u.end <= 1.0:
            raise RequestRejected(f"ControlNet {u.name}: guidance_start {u.start:g} .. guidance_end {u.end:g} must "
                                  f"satisfy 0 <= start < end <= 1")
    return tuple(units), ip


def call_arguments(units: list[tuple[Unit, ...]], counts: list[int]) -> dict[str, Any]:
    """The pipeline call's ControlNet arguments for a batch of jobs with the same unit keys: each job's
    control image repeated for its images (the call's prompts are one per image)."""
    first = units[0]
    if not first:
        return {}
    images = [[job[k].image for job, n in zip(units, counts) for _ in range(n)] for k in range(len(first))]
    return {"control_image": images if len(first) > 1 else images[0],
            "controlnet_conditioning_scale": [u.weight for u in first],
            "control_guidance_start": [u.start for u in first], "control_guidance_end": [u.end for u in first],
            "guess_mode": first[0].guess_mode}


def describe(units: tuple[Unit, ...], ip: IPUnit | None = None) -> list[dict[str, Any]]:
    """The units as the infotext records them (names, never paths; the IP-Adapter's last)."""
    described = [{"module": u.module, "model": u.name, "weight": u.weight, "guidance_start": u.start,
                  "guidance_end": u.end, "guess_mode": u.guess_mode} for u in units]
    if ip is not None:
        described.append({"module": ip.module, "model": ip.name, "weight": ip.weight, "guidance_start": 0.0,
                          "guidance_end": 1.0})
    return described
