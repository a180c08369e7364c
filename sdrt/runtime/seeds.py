"""Per-image seeds: every image of a batch can be regenerated alone from the seed its PNG records.

A call's `seed` is an int or a sequence of ints (one per image). An int seed s for N images gives
image i the seed s + i (AUTOMATIC1111's convention); -1 (or None) picks a random seed. Each image
owns a numpy generator seeded with its seed, and every random draw of the call -- the VAE sample of
its start image, its initial noise, the sampler's ancestral / SDE draws -- takes image i's rows from
image i's generator only. So image i of a batch gets exactly the random numbers of a one-image call
with seed s + i, whatever the batch size, the scheduler or the mode.

`PerImageGenerator` offers the one method the pipeline, the VAE sampling and the schedulers call,
`standard_normal(size, dtype=)`, for sizes whose first axis is the number of images.
"""

from __future__ import annotations

import secrets
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError

#: seeds live in [0, 2**64): numpy's SeedSequence takes any non-negative int, but a PNG, a JSON
#: number and AUTOMATIC1111's UI all carry 64 bits at most
SEED_LIMIT = 2 ** 64
#: what AUTOMATIC1111 users type for "pick one for me"
RANDOM_SEED = -1


def random_seed() -> int:
    """A fresh seed, 32 bits like AUTOMATIC1111's (short enough to type back in)."""
    return secrets.randbits(32)


def _check(label: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SdrtError(f"{label} {value!r} is not a whole number: pass an int in [0, 2**64), or -1 for a random one")
    value = int(value)
    if value == RANDOM_SEED:
        return random_seed()
    if not 0 <= value < SEED_LIMIT:
        raise SdrtError(f"{label} {value} is outside [0, 2**64): pass a seed in that range, or -1 for a random one")
    return value


def image_seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
    """One seed per image: s, s+1, ... for an int s; the list itself (length n) for a sequence; -1/None random."""
    if seed is None:
        seed = RANDOM_SEED
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        first = _check("seed", seed)
        if first + n - 1 >= SEED_LIMIT:
            raise SdrtError(f"seed {first} with {n} images runs past 2**64 - 1 (image i uses seed + i): "
                            f"pass a smaller seed")
        return [first + i for i in range(n)]
    if isinstance(seed, (str, bytes)) or not hasattr(seed, "__len__"):
        raise SdrtError(f"seed {seed!r} must be an int or a list of ints (one per image)")
    seeds = [_check(f"seed[{i}]", s) for i, s in enumerate(seed)]
    if len(seeds) != n:
        raise SdrtError(f"{len(seeds)} seeds for {n} images: pass one seed (image i gets seed + i) "
                        f"or exactly one per image")
    return seeds


class PerImageGenerator:
    """A batch of numpy generators, one per image, drawn row by row."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = list(seeds)
        self.generators = [np.random.default_rng(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def standard_normal(self, size: Sequence[int], dtype: Any = np.float64) -> np.ndarray:
        size = tuple(int(s) for s in size)
        if not size or size[0] != len(self.generators):
            raise SdrtError(f"internal: a per-image draw of shape {size} for {len(self.generators)} images")
        out = np.empty(size, dtype=dtype)
        for row, generator in zip(out, self.generators):
            row[...] = generator.standard_normal(size[1:], dtype=dtype)
        return out
