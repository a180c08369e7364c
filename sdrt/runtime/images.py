"""Image I/O for the pipeline: load inputs, turn them into the arrays the VAE expects, and back.

The conversions follow diffusers' `VaeImageProcessor` exactly (uint8 / 255, then 2x - 1; masks in
grayscale, binarized at 0.5; outputs x * 0.5 + 0.5 clipped, then x * 255 rounded), so the same
inputs give the same numbers as a diffusers pipeline. Every input goes through PIL first.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sdrt.atomic import replacing
from sdrt.errors import SdrtError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


def _array_to_pil(array: np.ndarray, label: str) -> Image.Image:
    """HxW or HxWxC arrays: uint8 as is, uint16 scaled, floats taken as [0, 1] (rounded like diffusers' output)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise SdrtError(f"{label} array has shape {a.shape}: pass HxW, HxWx3 or HxWx4 (values in [0, 1] or uint8)")
    if a.dtype == np.uint16:  # 16-bit pixels: scale, never clip to white
        a = a.astype(np.float32) / 65535.0
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise SdrtError(f"{label} array of {a.dtype} has values outside 0..255: pass uint8, uint16 or "
                            f"floats in [0, 1]")
        a = a.astype(np.uint8)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grayscale (PNG "I;16", "I") scaled to 8 bits, float ("F") taken as
    [0, 1]; a plain `convert("RGB")` would clip them to white. Other modes (palette, RGBA, CMYK...)
    are left to PIL's own conversion, which maps them correctly."""
    if image.mode.startswith("I;16") or image.mode == "I":
        a = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(a / 65535.0 * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8), "L")
    return image


def _open(path: Path, label: str) -> Image.Image:
    """Read a file; a decompression bomb (more pixels than PIL's MAX_IMAGE_PIXELS) is refused in one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                return opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SdrtError(f"{label} {path} is too large to open safely ({e}; the limit is PIL's "
                        f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): pass a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SdrtError(f"{label} {path} is not a readable image ({e}): pass a PNG or JPEG file") from None


def load_image(image: ImageInput, label: str = "image") -> Image.Image:
    """A PIL image from a path, a PIL image or an array; one-line errors for missing or unreadable files."""
    if isinstance(image, Image.Image):
        return to_8bit(image)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, label)
    if not isinstance(image, (str, os.PathLike)):
        raise SdrtError(f"{label} must be a file path, a PIL image or a numpy array, not {type(image).__name__}")
    path = Path(image)
    if path.is_dir():
        raise SdrtError(f"{label} {path} is a folder, not an image file: pass the path of a PNG or JPEG file")
    if not path.is_file():
        raise SdrtError(f"{label} {path} does not exist: check the path")
    return to_8bit(_open(path, label))


def load_images(images: ImageInput | Sequence[ImageInput], label: str) -> list[Image.Image]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise SdrtError(f"{label} is an empty list: pass at least one image")
    return [load_image(i, label) for i in items]


def check_size(images: list[Image.Image], height: int, width: int, label: str) -> None:
    """The pipeline never resizes silently: a mismatch is an error that says how to fix it."""
    for img in images:
        if img.size != (width, height):
            raise SdrtError(f"{label} is {img.width}x{img.height} but the output is {width}x{height}: "
                            f"resize the {label} to {width}x{height}, or pass --width {img.width} "
                            f"--height {img.height}")


def images_to_array(images: list[Image.Image]) -> np.ndarray:
    """RGB images -> float32 [N, 3, H, W] in [-1, 1] (the VAE encoder's input)."""
    arrays = [np.array(img.convert("RGB")).astype(np.float32) / 255.0 for img in images]
    return (2.0 * np.stack(arrays).transpose(0, 3, 1, 2) - 1.0).astype(np.float32)


def masks_to_array(masks: list[Image.Image]) -> np.ndarray:
    """Masks -> float32 [N, 1, H, W] of 0 (keep) and 1 (repaint), grayscale binarized at 0.5."""
    arrays = np.stack([np.array(m.convert("L")).astype(np.float32) / 255.0 for m in masks])[:, None]
    return (arrays >= 0.5).astype(np.float32)


def postprocess(decoded: np.ndarray) -> np.ndarray:
    """VAE decoder output [N, 3, H, W] in [-1, 1] -> float32 [N, H, W, 3] in [0, 1]."""
    return np.clip(decoded.astype(np.float32) * 0.5 + 0.5, 0, 1).transpose(0, 2, 3, 1).copy()


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(img) for img in (images * 255).round().astype(np.uint8)]


def save_png(image: Image.Image, path: str | os.PathLike, text: dict[str, Any] | None = None, *,
             fsync: bool = False) -> Path:
    """Write a PNG with text chunks (e.g. A1111's "parameters") that image viewers and SD tools show;
    `fsync`: on disk before it appears under its name (a batch that resumes trusts what it finds)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    path = Path(path)
    with replacing(path, fsync=fsync) as tmp:  # whole or not at all: a full disk or Ctrl-C leaves no truncated PNG
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    with Image.open(path) as img:
        img.load()
        return dict(getattr(img, "text", {}))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))
