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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sdrt.errors import SdrtError
from sdrt.manifest import CONTROLNET_KIND, MANIFEST_NAME
from sdrt.serve.limits import RequestRejected

#: sd-webui-controlnet's control modes (index or name) -> guess mode
CONTROL_MODES = {0: False, "Balanced": False, 2: True, "ControlNet is more important": True}
PROMPT_MODE = (1, "My prompt is more important")
RESIZE_MODES = {0: "just", "Just Resize": "just", 1: "crop", "Crop and Resize": "crop", "Resize and Fill": "fill",
                2: "fill", "Inner Fit (Scale to Fit)": "crop", "Outer Fit (Shrink to Fit)": "fill"}
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


class ControlNetCatalog:
    """The ControlNets this server may run: exported ControlNet folders directly in `folder` (None: none)."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).resolve() if folder is not None else None
        if self.folder is not None and not self.folder.is_dir():
            raise SdrtError(f"--controlnet-dir {folder} is not a folder: pass the folder holding exported "
                            f"ControlNet folders (sdrt export --model CONTROLNET_DIR --out DIR/NAME)")

    def names(self) -> list[str]:
        if self.folder is None:
            return []
        import json

        found = []
        for entry in sorted(self.folder.iterdir()):
            try:
                data = json.loads((entry / MANIFEST_NAME).read_text())
            except (OSError, ValueError):
                continue
            if not entry.name.startswith(".") and data.get("pipeline", {}).get("kind") == CONTROLNET_KIND:
                found.append(entry.name)
        return found

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


def parse_units(args: list[dict[str, Any]], catalog: ControlNetCatalog, limits: Any, *, width: int,
                height: int) -> tuple[Unit, ...]:
    """The request's enabled units, checked (400 naming the unit and field) and their images preprocessed."""
    from sdrt.runtime import preprocessors

    units = []
    for index, unit in enumerate(args):
        if not unit.get("enabled", True):
            continue
        folder, name = catalog.resolve(unit.get("model"))
        mode = unit.get("control_mode", 0)
        if mode in PROMPT_MODE:
            raise RequestRejected(f"ControlNet unit {index}: control_mode {mode!r} is not supported: use Balanced or "
                                  f"'ControlNet is more important'")
        if mode not in CONTROL_MODES:
            raise RequestRejected(f"ControlNet unit {index}: unknown control_mode {mode!r}")
        resize = unit.get("resize_mode", 1)
        if resize not in RESIZE_MODES:
            raise RequestRejected(f"ControlNet unit {index}: unknown resize_mode {resize!r}")
        picture = unit.get("image") or unit.get("input_image")
        if isinstance(picture, dict):  # newer clients: {"image": ..., "mask": ...}
            picture = picture.get("image")
        if not picture:
            raise RequestRejected(f"ControlNet unit {index} has no image: send the control image as base64")
        image = limits.decode_image(picture, f"ControlNet unit {index} image").convert("RGB")
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
    return tuple(units)


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


def describe(units: tuple[Unit, ...]) -> list[dict[str, Any]]:
    """The units as the infotext records them (names, never paths)."""
    return [{"module": u.module, "model": u.name, "weight": u.weight, "guidance_start": u.start,
             "guidance_end": u.end, "guess_mode": u.guess_mode} for u in units]
