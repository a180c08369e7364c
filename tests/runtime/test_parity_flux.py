"""Flux against diffusers end to end: same exported weights, noise, scheduler config; fp32 CPU.

diffusers runs FluxPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline / FluxFillPipeline on the
preset's modules with a torch generator; sdrt gets `TorchReplay` of the same seed (and packed
`latents` where a case injects them). Images must agree to PSNR >= 40 dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from sdrt.reference import TorchReplay, load_reference
from sdrt.runtime import Pipeline
from sdrt.runtime.flux_latents import pack
from sdrt.runtime.images import psnr
from tests.runtime.test_parity import _inputs

MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def flux(tiny_flux_onnx, tiny_flux_schnell_onnx, tiny_flux_fill_onnx):
    """preset -> (sdrt Pipeline on ort-cpu, diffusers reference), loaded once per module."""
    folders = {"tiny-flux": tiny_flux_onnx, "tiny-flux-schnell": tiny_flux_schnell_onnx,
               "tiny-flux-fill": tiny_flux_fill_onnx}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = (Pipeline.load(folders[name], backend="ort-cpu"), load_reference(folders[name]))
        return cache[name]

    return get


@dataclass(frozen=True)
class Case:
    preset: str = "tiny-flux"
    steps: int = 4
    guidance: float = 3.5
    prompts: tuple = ("a red bicycle",)
    per_prompt: int = 1
    size: tuple = (64, 96)  # height, width: non-square by default
    mode: str = "txt2img"
    strength: float = 0.6
    inject_latents: bool = False
    extra: dict = field(default_factory=dict)


CASES = {
    "dev-guidance-3.5": Case(),
    "dev-guidance-7-injected-latents": Case(guidance=7.0, inject_latents=True),
    "schnell-4-steps": Case(preset="tiny-flux-schnell", guidance=0.0),
    "square": Case(size=(64, 64)),
    "short-max-sequence-length-and-prompt-2": Case(extra={"max_sequence_length": 12,
                                                         "prompt_2": "a watercolor painting of a bicycle"}),
    "true-cfg": Case(extra={"negative_prompt": "blurry", "true_cfg_scale": 4.0}),
    "true-cfg-schnell-negative-2": Case(preset="tiny-flux-schnell", guidance=0.0, extra={
        "negative_prompt": "blurry", "negative_prompt_2": "dark", "true_cfg_scale": 2.5}),
    "batch-2-prompts": Case(prompts=("a cat", "a dog"), inject_latents=True),
    "batch-2-per-prompt": Case(per_prompt=2),
    "custom-sigmas": Case(extra={"sigmas": [1.0, 0.75, 0.45, 0.2, 0.05]}),
    "euler-karras": Case(extra={"scheduler": "euler_karras"}),
    "img2img": Case(mode="img2img", strength=0.65, steps=6),
    "img2img-schnell-b2": Case(preset="tiny-flux-schnell", mode="img2img", strength=0.8, guidance=0.0, per_prompt=2),
    "inpaint": Case(mode="inpaint", strength=0.7, steps=6),
    "inpaint-full-b2": Case(mode="inpaint", strength=1.0, per_prompt=2),
    "fill": Case(preset="tiny-flux-fill", mode="inpaint", strength=1.0, guidance=30.0),
    "fill-partial-b2": Case(preset="tiny-flux-fill", mode="inpaint", strength=0.7, per_prompt=2, guidance=30.0),
}


def _run(flux, case: Case, seed: int = 11):
    pipe, ref = flux(case.preset)
    h, w = case.size
    n = len(case.prompts) * case.per_prompt
    prompt = list(case.prompts) if len(case.prompts) > 1 else case.prompts[0]
    call = dict(num_inference_steps=case.steps, guidance_scale=case.guidance, num_images_per_prompt=case.per_prompt,
                height=h, width=w, **_inputs(case), **case.extra)
    ours_latents = theirs_latents = None
    if case.inject_latents:  # diffusers' FluxPipeline takes them packed, as sdrt does
        f = pipe.vae_scale_factor
        raw = np.random.default_rng(3).standard_normal((n, pipe.latent_channels, h // f, w // f), dtype=np.float32)
        ours_latents = theirs_latents = pack(raw)
    ours = pipe(prompt, **call, latents=ours_latents, generator=TorchReplay(seed), output_type="np")
    theirs = ref(prompt, **call, latents=theirs_latents, seed=seed)
    return ours.images, theirs.images, n


@pytest.mark.parametrize("name", list(CASES))
def test_sdrt_matches_diffusers(name, flux):
    case = CASES[name]
    ours, theirs, n = _run(flux, case)
    assert ours.shape == theirs.shape == (n, *case.size, 3)
    assert ours.std() > 0.01  # a real picture, not a flat one that trivially matches
    quality = psnr(ours, theirs)
    assert quality >= MIN_PSNR, f"{name}: PSNR {quality:.1f} dB"


def test_packed_latents_out_match_diffusers(flux):
    """output_type="latent" hands back FluxPipeline's packed latents [N, tokens, 4C]."""
    pipe, ref = flux("tiny-flux")
    call = dict(num_inference_steps=3, guidance_scale=3.5, height=64, width=32)
    ours = pipe("a lighthouse", **call, generator=TorchReplay(5), output_type="latent").images
    theirs = ref("a lighthouse", **call, seed=5, output_type="latent").images
    assert ours.shape == theirs.shape == (1, 4 * 2, 64)
    span = float(np.ptp(theirs))  # latents are not in [0, 1]: PSNR over their own range
    assert psnr(ours / span, theirs / span) >= MIN_PSNR


def test_parity_is_sensitive_to_flux_conditioning(flux):
    """The comparisons can fail: prompt_2, the guidance scale, true CFG and the sequence length each
    change the image (a dev-style model embeds guidance; schnell-style ignores it, as diffusers does)."""
    pipe, _ = flux("tiny-flux")

    def image(p=pipe, **kw):
        args = dict(num_inference_steps=3, guidance_scale=3.5, height=64, width=64, output_type="np")
        return p("a red bicycle", generator=TorchReplay(11), **{**args, **kw}).images

    plain = image()
    assert psnr(plain, image(prompt_2="something else entirely")) < 35
    assert psnr(plain, image(guidance_scale=8.0)) < 35
    assert psnr(plain, image(negative_prompt="blurry", true_cfg_scale=3.0)) < 35
    assert psnr(plain, image(max_sequence_length=8)) < 60  # the pad tokens attend too: a small change
    schnell, _ = flux("tiny-flux-schnell")
    assert psnr(image(schnell, guidance_scale=0.0), image(schnell, guidance_scale=1.0)) == float("inf")
