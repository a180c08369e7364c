"""ControlNet preprocessors: a picture -> the control image a ControlNet was trained on.

The names are sd-webui-controlnet's modules (what A1111 clients send as a unit's `module`). Those
here need no model: ``none`` (the picture is already a control image), ``canny`` (OpenCV's Canny
edges, the `controlnet` extra: ``pip install 'sdrt[controlnet]'``), ``invert`` (white lines on black
from a black-on-white drawing), ``binary`` (a threshold) and ``tile_resample`` (a downscaled copy, for
tile ControlNets). The others users expect run a neural network of their own (MiDaS/ZoeDepth for
depth, OpenPose/DWPose for poses, HED/PiDiNet for soft edges, the lineart and normal-map models,
segmentation, M-LSD): `MODEL_PREPROCESSORS` names them, and asking for one is a one-line error that
says to make the control image elsewhere and pass it with ``none``. Their weights are downloads
sdrt does not make (nothing here reaches a model hub).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image

from sdrt.errors import SdrtError

#: sd-webui-controlnet's preprocessors that need a model of their own -> the model
MODEL_PREPROCESSORS: dict[str, str] = {
    "depth_midas": "MiDaS depth", "depth_zoe": "ZoeDepth", "depth_leres": "LeReS depth",
    "depth_anything": "Depth Anything", "openpose": "OpenPose body", "openpose_full": "OpenPose body, hands, face",
    "dw_openpose_full": "DWPose", "softedge_hed": "HED edges", "softedge_pidinet": "PiDiNet edges",
    "scribble_hed": "HED edges", "scribble_pidinet": "PiDiNet edges", "lineart_realistic": "lineart",
    "lineart_anime": "anime lineart", "lineart_coarse": "lineart", "normal_bae": "BAE normal maps",
    "seg_ofade20k": "OneFormer segmentation", "seg_ufade20k": "UniFormer segmentation", "mlsd": "M-LSD lines",
    "shuffle": "content shuffle (random warp; needs no weights, not implemented yet)",
}


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _resized(image: Image.Image, resolution: int | None) -> Image.Image:
    """Scaled so its short side is `resolution` px (the unit's processor_res), as the web UI does."""
    if not resolution or resolution <= 0:
        return image
    scale = resolution / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.LANCZOS)


def none(image: Image.Image, **_: Any) -> Image.Image:
    return image.convert("RGB")


def canny(image: Image.Image, low: float = 100, high: float = 200, resolution: int | None = None) -> Image.Image:
    """White Canny edges on black (OpenCV), thresholds `low` and `high` (the web UI's threshold_a/b)."""
    try:
        import cv2
    except ImportError as e:
        raise SdrtError(f"the canny preprocessor needs OpenCV ({e}): pip install 'sdrt[controlnet]' "
                        f"(opencv-python-headless)") from None
    if not 0 <= low <= high:
        raise SdrtError(f"canny thresholds {low:g}, {high:g}: pass 0 <= low <= high (e.g. 100 and 200)")
    edges = cv2.Canny(_rgb(_resized(image, resolution)), float(low), float(high))
    return Image.fromarray(edges).convert("RGB")


def invert(image: Image.Image, resolution: int | None = None, **_: Any) -> Image.Image:
    return Image.fromarray(255 - _rgb(_resized(image, resolution)))


def binary(image: Image.Image, low: float = 127, resolution: int | None = None, **_: Any) -> Image.Image:
    """White where the grey level is above `low` (threshold_a), black elsewhere."""
    grey = np.asarray(_resized(image, resolution).convert("L"))
    return Image.fromarray(np.where(grey > low, 255, 0).astype(np.uint8)).convert("RGB")


def tile_resample(image: Image.Image, low: float = 1.0, resolution: int | None = None, **_: Any) -> Image.Image:
    """Downscaled by `low` (threshold_a, >= 1): the blurred copy a tile ControlNet fills in."""
    factor = max(float(low), 1.0)
    picture = _resized(image, resolution).convert("RGB")
    small = (max(1, round(picture.width / factor)), max(1, round(picture.height / factor)))
    return picture.resize(small, Image.BICUBIC)


PREPROCESSORS: dict[str, Callable[..., Image.Image]] = {
    "none": none, "canny": canny, "invert": invert, "binary": binary, "tile_resample": tile_resample,
}
#: what clients may call "none" (sd-webui-controlnet's spellings)
ALIASES = {"None": "none", "": "none"}


def module_list() -> list[str]:
    """Every preprocessor name sdrt runs (what /controlnet/module_list answers)."""
    return list(PREPROCESSORS)


def get(name: str) -> Callable[..., Image.Image]:
    """The preprocessor of that name; one line for a model-based or unknown one."""
    key = ALIASES.get(name, name)
    if key in PREPROCESSORS:
        return PREPROCESSORS[key]
    if key in MODEL_PREPROCESSORS:
        raise SdrtError(f"the {key} preprocessor runs a {MODEL_PREPROCESSORS[key]} model that sdrt does not ship: "
                        f"make the control image with another tool and pass it with preprocessor none")
    raise SdrtError(f"unknown preprocessor {name!r}: choose one of {', '.join(PREPROCESSORS)}")


def run(name: str, image: Image.Image, *, low: float | None = None, high: float | None = None,
        resolution: int | None = None) -> Image.Image:
    """Apply a preprocessor (the web UI's threshold_a/b as `low`/`high`, processor_res as `resolution`)."""
    function = get(name)
    options: dict[str, Any] = {"resolution": resolution}
    if low is not None:
        options["low"] = low
    if high is not None and function is canny:
        options["high"] = high
    return function(image, **options)
