"""The `shapes` data set: one coloured shape on a plain background, with its caption.

Everything is drawn by numpy from a seeded generator, so the training set, the held-out set and
the test prompts are reproducible bit for bit. Captions follow one template::

    "a {colour} {shape} on a {background} background"     e.g. "a red circle on a blue background"

with 5 colours x 3 shapes x 4 other background colours = 60 captions. Shapes are anti-aliased
(4x supersampling), of random size and position, and their colours jitter a little.

`detect` is the inverse, for the quality tests: it finds the background (the border's colour),
the largest blob that differs from it, the blob's nearest palette colour, and its shape from how
much of its bounding box it fills (square ~1, circle ~pi/4, triangle ~1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: name -> RGB; far apart so the nearest-colour test is unambiguous
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
IMAGE_SIZE = 32
SUPERSAMPLE = 4
#: fill ratio (blob area / bounding-box area) thresholds between triangle | circle | square
FILL_TRIANGLE_CIRCLE, FILL_CIRCLE_SQUARE = 0.64, 0.89


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def all_scenes() -> list[Scene]:
    """The 60 (colour, shape, background) combinations, in a fixed order."""
    return [Scene(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]


def random_scene(rng: np.random.Generator) -> Scene:
    scenes = all_scenes()
    return scenes[int(rng.integers(len(scenes)))]


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Coverage in [0, 1] of a shape of half-size r centred at (cx, cy), by supersampling."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    y, x = np.meshgrid(coords, coords, indexing="ij")
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    elif shape == "triangle":  # apex up, base 2r wide, 2r tall
        top, bottom = cy - r, cy + r
        half_width = (y - top) / (2 * r) * r
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_width)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _jittered(colour: str, rng: np.random.Generator, amount: int = 12) -> np.ndarray:
    base = np.array(PALETTE[colour], dtype=np.float32)
    return np.clip(base + rng.uniform(-amount, amount, size=3), 0, 255)


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image, uint8 [size, size, 3]: the scene's shape at a random size and place."""
    return render_with_coverage(scene, rng, size)[0]


def render_with_coverage(scene: Scene, rng: np.random.Generator,
                         size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`render`'s image (the same draws) and the shape's coverage in [0, 1], [size, size] (its mask)."""
    r = float(rng.uniform(0.2, 0.32)) * size
    cx = float(rng.uniform(r + 1, size - r - 1))
    cy = float(rng.uniform(r + 1, size - r - 1))
    coverage = _mask(scene.shape, cx, cy, r, size)
    cover = coverage[..., None]
    image = _jittered(scene.background, rng) * (1 - cover) + _jittered(scene.colour, rng) * cover
    return np.round(image).astype(np.uint8), coverage.astype(np.float32)


def make_dataset(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Scene]]:
    """n images (uint8 [n, size, size, 3]) and their scenes, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([render(s, rng, size) for s in scenes]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, scenes


# -- the detector ----------------------------------------------------------------------------
PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float32)


def nearest_colours(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour of each RGB value ([..., 3] -> [...])."""
    distances = ((np.asarray(pixels, np.float32)[..., None, :] - PALETTE_RGB) ** 2).sum(-1)
    return distances.argmin(-1)


def nearest_colour(rgb: np.ndarray) -> str:
    return COLOURS[int(nearest_colours(rgb))]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (a small flood fill: no scipy needed)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for sy in range(h):
        for sx in range(w):
            if not mask[sy, sx] or labels[sy, sx]:
                continue
            current += 1
            stack, count = [(sy, sx)], 0
            labels[sy, sx] = current
            while stack:
                y, x = stack.pop()
                count += 1
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
            if count > best_size:
                best, best_size = current, count
    return labels == best if best else np.zeros_like(mask)


@dataclass(frozen=True)
class Detection:
    colour: str | None
    shape: str | None
    background: str
    fill: float  # blob area / bounding-box area
    area: int

    def matches(self, scene: Scene) -> bool:
        return (self.colour, self.shape, self.background) == (scene.colour, scene.shape, scene.background)


def detect(image: np.ndarray, min_area: int = 12) -> Detection:
    """Background colour, and colour + shape of the largest blob, of an RGB image (uint8 or [0, 1] float)."""
    pixels = _pixels(image)
    background = _background(pixels)
    labels = nearest_colours(pixels)
    blob = _largest_component(labels != COLOURS.index(background))
    return _describe(blob, labels, background, min_area)


def blob_mask(image: np.ndarray) -> np.ndarray:
    """The largest blob `detect` finds (boolean [H, W]): what a control mask is compared with (IoU)."""
    pixels = _pixels(image)
    return _largest_component(nearest_colours(pixels) != COLOURS.index(_background(pixels)))


def _pixels(image: np.ndarray) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32)
    return pixels * 255.0 if pixels.max() <= 1.0 + 1e-6 else pixels


def _background(pixels: np.ndarray) -> str:
    """The palette colour nearest to the border's median."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return nearest_colour(np.median(border, axis=0))


def _describe(blob: np.ndarray, labels: np.ndarray, background: str, min_area: int) -> Detection:
    area = int(blob.sum())
    if area < min_area:
        return Detection(None, None, background, 0.0, area)
    ys, xs = np.nonzero(blob)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = area / float(box)
    values, counts = np.unique(labels[blob], return_counts=True)
    colour = COLOURS[int(values[int(np.argmax(counts))])]
    shape = "triangle" if fill < FILL_TRIANGLE_CIRCLE else "circle" if fill < FILL_CIRCLE_SQUARE else "square"
    return Detection(colour, shape, background, fill, area)
