"""The shipped `shapes-controlnet` puts the shape where its control mask says: the IoU of the detected
blob with the mask is higher with the ControlNet than without, on the same prompts and noise (ort-cpu)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sdrt.bench import shapes_controlnet_iou as iou  # noqa: E402

CASES = 4
#: lower bounds, well under what the shipped weights measure (docs/controlnet.md: 16 cases)
MIN_MEAN_IOU_WITH = 0.6
MIN_MEAN_GAIN = 0.2


@pytest.fixture(scope="module")
def pipes(onnx_export, shapes_controlnet_onnx):
    from sdrt.runtime import Pipeline

    base = Pipeline.load(onnx_export("shapes"), backend="ort-cpu")
    controlled = Pipeline.load(onnx_export("shapes"), backend="ort-cpu", controlnet=shapes_controlnet_onnx)
    yield base, controlled
    base.close()
    controlled.close()


def test_the_controlnet_puts_the_shape_on_the_mask(pipes):
    result = iou.measure(*pipes, n=CASES)
    s = result["summary"]
    assert s["iou_mean_with"] >= MIN_MEAN_IOU_WITH, result["rows"]
    assert s["iou_mean_with"] - s["iou_mean_without"] >= MIN_MEAN_GAIN, result["rows"]
    assert s["cases_with_higher_iou"] >= CASES - 1, result["rows"]


def test_a_zero_scale_gives_the_plain_model(pipes):
    """Scale 0: the ControlNet's residuals vanish and the image is the shapes model's own."""
    base, controlled = pipes
    scene, coverage = iou.cases(1)[0]
    plain = iou._generate(base, scene, seed=0)
    off = iou._generate(controlled, scene, seed=0, control_image=iou.control_image(coverage),
                        controlnet_conditioning_scale=0.0)
    np.testing.assert_allclose(off, plain, atol=1e-4)


def test_iou_of_a_drawn_mask():
    from sdrt.export import shapes_data

    scene, coverage = iou.cases(1)[0]
    image = np.where(coverage[..., None] >= 0.5, shapes_data.PALETTE[scene.colour],
                     shapes_data.PALETTE[scene.background]).astype(np.uint8)
    assert iou.iou(image, coverage) == 1.0
    assert iou.iou(np.roll(image, 16, axis=1), coverage) < 0.5
