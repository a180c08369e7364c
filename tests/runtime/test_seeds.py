"""Per-image seeds: image i of a batch with seed s is the one-image call with seed s + i, for every sampler."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.seeds import PerImageGenerator, image_seeds

SCHEDULERS = ["ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde", "lms", "unipc", "lcm"]
CALL = dict(num_inference_steps=3, height=32, width=32, output_type="np")


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_batch_image_equals_its_single_image_run(pipelines, scheduler):
    pipe = pipelines("tiny")
    batch = pipe("a cat", **CALL, scheduler=scheduler, seed=5, num_images_per_prompt=3)
    assert batch.seeds == [5, 6, 7] and batch.parameters["seeds"] == [5, 6, 7]
    for i in range(3):
        alone = pipe("a cat", **CALL, scheduler=scheduler, seed=5 + i).images[0]
        np.testing.assert_allclose(batch.images[i], alone, atol=2e-5, err_msg=f"image {i}")
    assert np.abs(batch.images[0] - batch.images[1]).max() > 0.01  # different seeds, different images


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_batch_image_equals_single_run_with_an_image(pipelines, mode):
    name = "tiny-inpaint" if mode == "inpaint" else "tiny"
    pipe = pipelines(name)
    rng = np.random.default_rng(1)
    extra = {"image": (rng.random((32, 32, 3)) * 255).astype(np.uint8), "strength": 0.7}
    if mode == "inpaint":
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:] = 255
        extra["mask_image"] = mask
    batch = pipe("a cat", **CALL, **extra, scheduler="euler_a", seed=[9, 4], num_images_per_prompt=2)
    for i, s in enumerate([9, 4]):
        alone = pipe("a cat", **CALL, **extra, scheduler="euler_a", seed=s).images[0]
        np.testing.assert_allclose(batch.images[i], alone, atol=2e-5)


def test_prompts_times_images_get_consecutive_seeds(pipelines):
    pipe = pipelines("tiny")
    out = pipe(["a cat", "a dog"], **CALL, scheduler="ddim", seed=100, num_images_per_prompt=2)
    assert out.seeds == [100, 101, 102, 103] and out.seed == 100
    alone = pipe("a dog", **CALL, scheduler="ddim", seed=103).images[0]
    np.testing.assert_allclose(out.images[3], alone, atol=2e-5)


def test_random_seed_is_reported_and_reproduces(pipelines):
    pipe = pipelines("tiny")
    first = pipe("a cat", **CALL, scheduler="euler_a", seed=-1)
    assert isinstance(first.seed, int) and 0 <= first.seed < 2 ** 32
    again = pipe("a cat", **CALL, scheduler="euler_a", seed=first.seed)
    np.testing.assert_array_equal(first.images, again.images)


@pytest.mark.parametrize("seed, message", [
    (-2, "outside [0, 2**64)"), (2 ** 64, "outside [0, 2**64)"), (2 ** 64 - 1, "runs past 2**64 - 1"),
    ("7", "must be an int or a list"), (1.5, "must be an int or a list"), ([1], "1 seeds for 2 images"),
    ([1, -5], "seed[1] -5 is outside"), (True, "must be an int or a list"), ([True, 2], "not a whole number"),
])
def test_bad_seeds_are_one_line(seed, message):
    with pytest.raises(SdrtError, match=None) as info:
        image_seeds(seed, 2)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_image_seeds_and_generator_rows():
    assert image_seeds(7, 3) == [7, 8, 9]
    assert image_seeds([3, 1], 2) == [3, 1]
    assert image_seeds(2 ** 64 - 2, 2) == [2 ** 64 - 2, 2 ** 64 - 1]
    rows = PerImageGenerator([4, 5]).standard_normal((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(rows[1], np.random.default_rng(5).standard_normal((3,), dtype=np.float32))
