"""Quality of the trained shapes preset, measured through sdrt's runtime (ort-cpu), with random
weights of the same architecture as the control that must fail the same checks."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sdrt.bench import shapes_quality as quality  # noqa: E402
from sdrt.export.shapes_data import Scene  # noqa: E402

#: lower bounds, well under what the shipped weights measure (README: "Quality of the shapes preset")
MIN_PROMPT_RATE = 0.4  # all three of colour, shape and background right
MIN_COLOUR_RATE = 0.8  # object colour and background colour, each
MAX_RANDOM_RATE = 0.2


@pytest.fixture(scope="module")
def shapes_pipe(onnx_export):
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(onnx_export("shapes"), backend="ort-cpu")
    yield pipe
    pipe.close()


def test_generated_images_follow_the_prompt(shapes_pipe):
    images = quality.generate(shapes_pipe, quality.QUICK_SCENES)
    result = quality.prompt_following(images, quality.QUICK_SCENES)
    assert result["rate"] >= MIN_PROMPT_RATE, result["rows"]
    assert result["colour_rate"] >= MIN_COLOUR_RATE and result["background_rate"] >= MIN_COLOUR_RATE, result


@pytest.mark.slow  # 150 diffusers UNet calls in torch: 56-62 s on the shared 2-core machine
def test_random_weights_of_the_same_architecture_do_not(monkeypatch):
    """The control: the detector does not find the prompt in a random-weight model's images."""
    import diffusers
    import torch

    from sdrt.export import presets

    random = dataclasses.replace(presets.get_preset("shapes"), name="shapes-random", trained=False)
    monkeypatch.setitem(presets.PRESETS, "shapes-random", random)
    pipe = presets.build_pipeline("shapes-random", seed=0)
    assert isinstance(pipe, diffusers.StableDiffusionPipeline)
    pipe.set_progress_bar_config(disable=True)
    images = np.concatenate([
        pipe(s.caption, num_inference_steps=10, guidance_scale=quality.GUIDANCE, height=32, width=32,
             generator=torch.Generator().manual_seed(i), output_type="np").images
        for i, s in enumerate(quality.QUICK_SCENES)])
    assert quality.prompt_following(images, quality.QUICK_SCENES)["rate"] <= MAX_RANDOM_RATE


def test_sdrt_matches_diffusers_on_the_trained_model(shapes_pipe, onnx_export):
    from sdrt.reference import TorchReplay, load_reference

    ref = load_reference(onnx_export("shapes"))
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    call = dict(num_inference_steps=quality.STEPS, guidance_scale=quality.GUIDANCE, height=32, width=32,
                latents=latents)
    prompt = Scene("yellow", "triangle", "blue").caption
    ours = shapes_pipe(prompt, **call, generator=TorchReplay(5), output_type="np").images
    theirs = ref(prompt, **call, seed=5).images
    assert quality._psnr(ours, theirs) >= 40


def test_img2img_at_low_strength_keeps_the_layout(shapes_pipe):
    result = quality.img2img_layout(shapes_pipe, n=6, strength=0.3)
    assert result["scene_kept_rate"] >= 5 / 6, result
    assert result["psnr_db_mean"] >= 20, result


def test_inpainting_keeps_the_unmasked_area(shapes_pipe):
    """About as well as the VAE reconstructs (~25 dB), while the masked half is redrawn (far lower)."""
    result = quality.inpaint_keep(shapes_pipe, n=4)
    assert result["unmasked_psnr_db_mean"] >= 22, result
    assert result["unmasked_psnr_db_mean"] >= result["masked_psnr_db_mean"] + 6, result


def test_vae_reconstructs_held_out_images(shapes_pipe):
    result = quality.vae_reconstruction(shapes_pipe, n=16)
    assert result["psnr_db_mean"] >= 24, result
