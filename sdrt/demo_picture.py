"""The demo's picture: the prompt on top, then each side's image (scaled up, pixels kept sharp)
under its label, and a line of numbers below. Pillow only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sdrt.atomic import replacing

#: displayed width of each image (small models make 32 px images: nearest-neighbour upscaling)
TILE = 256
PAD, LINE = 12, 18
BACKGROUND, INK = (250, 250, 250), (20, 20, 20)


def _font(size: int = 14):  # noqa: ANN202 - a PIL font object
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def compose(path: str | os.PathLike, title: str, panels: Sequence[tuple[str, np.ndarray]],
            footer: str = "", *, tile: int = TILE, columns: int | None = None) -> Path:
    """Write a PNG: `title`, then the (label, float [H, W, 3] image in [0, 1]) panels in rows of
    `columns` (default: one row), each image `tile` pixels wide under its label, then `footer`."""
    from PIL import Image, ImageDraw

    font = _font()
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    cell_h = LINE + tile + PAD
    width = PAD + columns * (tile + PAD)
    height = PAD + LINE + PAD + rows * cell_h + (LINE + PAD if footer else 0)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=INK, font=font)
    top = PAD + LINE + PAD
    for i, (label, image) in enumerate(panels):
        x, y = PAD + (i % columns) * (tile + PAD), top + (i // columns) * cell_h
        draw.text((x, y), label, fill=INK, font=font)
        pixels = (np.clip(np.asarray(image, np.float32), 0, 1) * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(pixels).resize((tile, tile * pixels.shape[0] // pixels.shape[1]),
                                                    Image.NEAREST), (x, y + LINE))
    if footer:
        draw.text((PAD, top + rows * cell_h), footer, fill=INK, font=font)
    with replacing(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
