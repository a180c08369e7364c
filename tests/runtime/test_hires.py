"""The hires fix (AUTOMATIC1111's enable_hr): sizes, steps, upscalers, the infotext lines; and the numpy
latent resize against PyTorch's interpolate."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime import latent_resize
from sdrt.runtime.hires import HiresFix, generate, plan, second_pass_schedule
from sdrt.runtime.infotext import a1111_parameters

CALL = dict(num_inference_steps=3, guidance_scale=5.0, height=32, width=48, seed=2, scheduler="ddim")


@pytest.mark.parametrize("mode, antialias", [("bilinear", False), ("bilinear", True), ("bicubic", False),
                                             ("bicubic", True), ("nearest", False), ("nearest-exact", False)])
@pytest.mark.parametrize("size", [(16, 24), (13, 7)])
def test_latent_resize_matches_torch(mode, antialias, size) -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 12)).astype(np.float32)
    extra = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode, antialias=antialias,
                                           **extra).numpy()
    np.testing.assert_allclose(latent_resize.resize(x, *size, mode, antialias), want, atol=1e-5)


@pytest.mark.parametrize("hires, expected", [
    (HiresFix(scale=2), ((1024, 768), (1024, 768))),
    (HiresFix(scale=1.5), ((768, 576), (768, 576))),
    (HiresFix(scale=1.3), ((664, 496), (664, 496))),  # rounded down to the UNet's step (8 px here)
    (HiresFix(resize_x=1024), ((1024, 768), (1024, 768))),  # the other side follows the aspect ratio
    (HiresFix(resize_y=600), ((800, 600), (800, 600))),
    (HiresFix(resize_x=1024, resize_y=1024), ((1360, 1024), (1024, 1024))),  # cover, then crop the middle
    (HiresFix(resize_x=1024, resize_y=512), ((1024, 768), (1024, 512))),
])
def test_target_sizes(hires, expected) -> None:
    p = plan(hires, 512, 384, 8)
    assert (p.upscale, p.final) == expected


def test_second_pass_runs_exactly_the_hires_steps() -> None:
    from sdrt.runtime.conditioning import start_index

    for steps in (1, 5, 10, 20, 37):
        for strength in (0.05, 0.3, 0.5, 0.7, 0.999, 1.0):
            total, s = second_pass_schedule(steps, strength)
            assert start_index(total, s, 1)[1] == steps, (steps, strength)


def test_hires_latent_sizes_steps_and_infotext(pipelines) -> None:
    pipe = pipelines("tiny")
    steps_seen = []
    out = generate(pipe, "a lighthouse", hires=HiresFix(scale=2, upscaler="Latent", steps=2, denoising_strength=0.6),
                   callback=lambda i, t, x: steps_seen.append(x.shape), **CALL)
    assert out.images[0].size == (96, 64)
    assert steps_seen == [(1, 4, 16, 24)] * 3 + [(1, 4, 32, 48)] * 2  # 3 first-pass steps, exactly 2 hires steps
    text = a1111_parameters(out.parameters)
    assert "Size: 48x32" in text and "Denoising strength: 0.6" in text  # Size: the first pass, as the web UI
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in text
    again = generate(pipe, "a lighthouse", hires=HiresFix(scale=2, upscaler="Latent", steps=2,
                                                          denoising_strength=0.6), **CALL)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(out.images[0]))


def test_hires_image_upscaler_prompt_and_sampler(pipelines) -> None:
    pipe = pipelines("tiny")
    hires = HiresFix(resize_x=64, resize_y=64, upscaler="Lanczos", denoising_strength=0.5, scheduler="euler",
                     prompt="a lighthouse at night", negative_prompt="fog")
    out = generate(pipe, "a lighthouse", hires=hires, num_images_per_prompt=2, **CALL)
    assert [im.size for im in out.images] == [(64, 64)] * 2 and out.seeds == [2, 3]
    text = a1111_parameters(out.parameters, 1)
    assert "Hires resize: 64x64" in text and "Hires upscaler: Lanczos" in text and "Hires steps" not in text
    assert 'Hires sampler: Euler, Hires prompt: "a lighthouse at night", Hires negative prompt: "fog"' in text
    assert "Seed: 3" in text


def test_hires_with_variation_seeds_records_them(pipelines) -> None:
    out = generate(pipelines("tiny"), "a boat", hires=HiresFix(scale=1.5, denoising_strength=0.5),
                   subseed=40, subseed_strength=0.2, **CALL)
    text = a1111_parameters(out.parameters)
    assert "Variation seed: 40, Variation seed strength: 0.2" in text and "Hires upscale: 1.5" in text


@pytest.mark.parametrize("hires, message", [
    (HiresFix(upscaler="R-ESRGAN 4x+"), "hires upscaler 'R-ESRGAN 4x\\+' is not available here"),
    (HiresFix(scale=0.5), "hires scale \\(hr_scale\\) 0.5 is out of range"),
    (HiresFix(denoising_strength=0), "denoising_strength 0 leaves the hires pass nothing to do"),
    (HiresFix(resize_x=-5), "hr_resize_x -5 must be a whole number >= 0"),
    (HiresFix(resize_x=4096), "outside the sizes this model supports"),
])
def test_bad_hires_is_one_line(pipelines, hires, message) -> None:
    with pytest.raises(SdrtError, match=message):
        generate(pipelines("tiny"), "x", hires=hires, **{**CALL, "num_inference_steps": 1})
