"""Variation seeds (AUTOMATIC1111's subseed, subseed_strength, seed_resize_from_h/w)."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.seeds import PerImageGenerator
from sdrt.runtime.variation import Variation, initial_noise, slerp

CALL = dict(num_inference_steps=2, guidance_scale=5.0, height=64, width=64, output_type="np")


def test_slerp_ends_and_norm() -> None:
    rng = np.random.default_rng(0)
    low, high = (rng.standard_normal((4, 8, 8)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(slerp(1.0, low, high), high, atol=1e-5)
    np.testing.assert_allclose(slerp(0.0, low, high), low, atol=1e-6)
    mid = slerp(0.5, low, high)  # spherical: the column norms stay near the ends', a straight line's shrink
    assert np.linalg.norm(mid, axis=1).mean() > np.linalg.norm((low + high) / 2, axis=1).mean() * 1.2


def test_strength_zero_draws_exactly_as_before() -> None:
    base = PerImageGenerator([5, 6]).standard_normal((2, 4, 8, 8), dtype=np.float32)
    same = initial_noise(PerImageGenerator([5, 6]), (2, 4, 8, 8), None, [5, 6], 8)
    assert np.array_equal(base, same)


def test_resize_pastes_the_small_noise_in_the_middle() -> None:
    v = Variation([], 0.0, (32, 48))
    noise = initial_noise(PerImageGenerator([9]), (1, 4, 8, 8), v, [9], 8)
    small = np.random.default_rng(9).standard_normal((4, 4, 6), dtype=np.float32)
    np.testing.assert_array_equal(noise[0, :, 2:6, 1:7], small)
    wide = initial_noise(PerImageGenerator([9]), (1, 4, 4, 4), Variation([], 0.0, (64, 64)), [9], 8)
    big = np.random.default_rng(9).standard_normal((4, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(wide[0], big[:, 2:6, 2:6])  # larger: its middle


def test_strength_zero_is_the_base_image_bit_for_bit(pipelines) -> None:
    pipe = pipelines("tiny")
    base = pipe("a boat", seed=4, **CALL)
    same = pipe("a boat", seed=4, subseed=99, subseed_strength=0.0, **CALL)
    assert np.array_equal(base.images, same.images) and "subseed" not in same.parameters


def test_variations_are_reproducible_and_reach_the_subseed(pipelines) -> None:
    pipe = pipelines("tiny")
    a = pipe("a boat", seed=4, subseed=99, subseed_strength=0.3, num_images_per_prompt=2, **CALL)
    b = pipe("a boat", seed=4, subseed=99, subseed_strength=0.3, num_images_per_prompt=2, **CALL)
    assert np.array_equal(a.images, b.images)
    assert a.parameters["subseeds"] == [99, 100] and a.parameters["subseed_strength"] == 0.3
    # image 1 alone, with its own seed and subseed, is image 1 of the batch
    alone = pipe("a boat", seed=5, subseed=100, subseed_strength=0.3, **CALL)
    assert np.array_equal(alone.images[0], a.images[1])
    base = pipe("a boat", seed=4, **CALL).images[0]
    assert not np.array_equal(a.images[0], base)
    full = pipe("a boat", seed=4, subseed=99, subseed_strength=1.0, scheduler="ddim", **CALL).images[0]
    other = pipe("a boat", seed=99, scheduler="ddim", **CALL).images[0]
    np.testing.assert_allclose(full, other, atol=2e-3)  # strength 1: the subseed's image (no ancestral draws)


def test_seed_resize_is_recorded(pipelines) -> None:
    out = pipelines("tiny")("a boat", seed=4, seed_resize_from_h=32, seed_resize_from_w=32, **CALL)
    assert out.parameters["seed_resize_from"] == [32, 32]


@pytest.mark.parametrize("kwargs, message", [
    ({"subseed_strength": 1.5}, "subseed_strength 1.5 is out of range"),
    ({"subseed_strength": "x"}, "subseed_strength 'x' is not a number"),
    ({"seed_resize_from_h": 1, "seed_resize_from_w": 64}, "smaller than one latent pixel"),
    ({"subseed_strength": 0.5, "subseed": "a"}, "seed 'a'"),
])
def test_bad_variation_arguments_are_one_line(pipelines, kwargs, message) -> None:
    with pytest.raises(SdrtError, match=message):
        pipelines("tiny")("a boat", seed=1, **kwargs, **CALL)


def test_variation_needs_seeds_not_a_generator(pipelines) -> None:
    with pytest.raises(SdrtError, match="pass seed= instead of generator="):
        pipelines("tiny")("a boat", generator=np.random.default_rng(0), subseed_strength=0.5, **CALL)
