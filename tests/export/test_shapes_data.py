"""The synthetic shapes data set and the detector the quality checks rely on."""

from __future__ import annotations

import numpy as np

from sdrt.export import shapes_data
from sdrt.export.shapes_data import Scene


def test_sixty_distinct_captions_with_the_template():
    scenes = shapes_data.all_scenes()
    assert len(scenes) == 60 == len({s.caption for s in scenes})
    assert Scene("red", "circle", "blue").caption == "a red circle on a blue background"
    assert all(s.colour != s.background for s in scenes)


def test_the_data_set_is_reproducible_from_its_seed():
    a, scenes_a = shapes_data.make_dataset(20, seed=3)
    b, scenes_b = shapes_data.make_dataset(20, seed=3)
    c, _ = shapes_data.make_dataset(20, seed=4)
    assert a.dtype == np.uint8 and a.shape == (20, 32, 32, 3)
    assert np.array_equal(a, b) and scenes_a == scenes_b
    assert not np.array_equal(a, c)


def test_the_detector_reads_every_rendered_scene():
    images, scenes = shapes_data.make_dataset(120, seed=11)
    found = [shapes_data.detect(im) for im in images]
    assert all(d.matches(s) for d, s in zip(found, scenes)), [
        (s, d) for d, s in zip(found, scenes) if not d.matches(s)]
    # float images in [0, 1] (the pipeline's output_type="np") read the same
    assert all(shapes_data.detect(im / 255.0).matches(s) for im, s in zip(images[:10], scenes[:10]))


def test_the_detector_rejects_noise_and_blank_images():
    rng = np.random.default_rng(0)
    scenes = shapes_data.all_scenes()
    noise_hits = sum(shapes_data.detect(rng.random((32, 32, 3))).matches(scenes[i % 60]) for i in range(60))
    assert noise_hits <= 3
    blank = np.full((32, 32, 3), shapes_data.PALETTE["blue"], np.uint8)
    d = shapes_data.detect(blank)
    assert d.background == "blue" and d.shape is None and d.colour is None
