"""SDXL family and LCM against diffusers end to end: same exported weights, noise, scheduler config; fp32 CPU.

diffusers runs StableDiffusionXL(Img2Img|Inpaint)Pipeline and LatentConsistencyModelPipeline on the
preset's modules with a torch generator; sdrt gets `TorchReplay` of the same seed (and `latents`
where a case injects them). Images (and the base's hand-off latents) must agree to PSNR >= 40 dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from sdrt.reference import TorchReplay, load_reference
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.test_parity import _inputs

MIN_PSNR = 40.0
TURBO = {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_onnx, tiny_sdxl_refiner_onnx, tiny_lcm_onnx):
    """preset -> (sdrt Pipeline on ort-cpu, diffusers reference), loaded once per module."""
    folders = {"tiny-sdxl": tiny_sdxl_onnx, "tiny-sdxl-refiner": tiny_sdxl_refiner_onnx, "tiny-lcm": tiny_lcm_onnx}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = (Pipeline.load(folders[name], backend="ort-cpu"), load_reference(folders[name]))
        return cache[name]

    return get


@dataclass(frozen=True)
class Case:
    preset: str = "tiny-sdxl"
    steps: int = 3
    guidance: float = 5.0
    prompts: tuple = ("a red bicycle",)
    per_prompt: int = 1
    size: tuple = (64, 64)  # height, width
    mode: str = "txt2img"
    strength: float = 0.6
    inject_latents: bool = False
    negative: str | None = None
    scheduler: object = None
    extra: dict = field(default_factory=dict)


CASES = {
    "cfg-zeroed-negative": Case(inject_latents=True),  # no negative prompt: force_zeros_for_empty_prompt
    "cfg-empty-string-negative": Case(negative=""),  # an explicit "" is encoded, not zeroed
    "nocfg": Case(guidance=1.0),
    "negative-and-prompt-2": Case(negative="blurry", extra={"prompt_2": "a watercolor painting",
                                                             "negative_prompt_2": "dark"}),
    "nonsquare-size-conditioning": Case(size=(48, 80), extra={
        "original_size": (512, 768), "crops_coords_top_left": (16, 32), "target_size": (96, 160),
        "negative_original_size": (256, 256), "negative_crops_coords_top_left": (0, 8),
        "negative_target_size": (128, 128)}),
    "guidance-rescale": Case(extra={"guidance_rescale": 0.7}),
    "batch-2-prompts": Case(prompts=("a cat", "a dog"), inject_latents=True),
    "batch-2-per-prompt-negative-sizes": Case(per_prompt=2, extra={
        "negative_original_size": (32, 32), "negative_target_size": (64, 64)}),
    "clip-skip-1": Case(extra={"clip_skip": 1}),
    "dpmpp-2m": Case(scheduler="dpmpp_2m", negative="ugly"),
    "img2img": Case(mode="img2img", strength=0.6, extra={"aesthetic_score": 7.0}),
    "inpaint-full": Case(mode="inpaint", strength=1.0),
    "inpaint-partial-b2": Case(mode="inpaint", strength=0.7, per_prompt=2),
    # diffusers' inpainting takes denoising_start too: strength is ignored, the blend re-noises the known area
    "inpaint-denoising-start": Case(mode="inpaint", steps=5, extra={"denoising_start": 0.6}),
    "refiner-inpaint-denoising-start": Case(preset="tiny-sdxl-refiner", mode="inpaint", steps=5, per_prompt=2,
                                            extra={"denoising_start": 0.7, "aesthetic_score": 6.5}),
    "refiner-img2img": Case(preset="tiny-sdxl-refiner", mode="img2img", strength=0.5, steps=4,
                            extra={"aesthetic_score": 7.5, "negative_aesthetic_score": 2.0}),
    "refiner-prompt-2-unused": Case(preset="tiny-sdxl-refiner", mode="img2img", strength=0.5, negative="x",
                                    extra={"prompt_2": "ignored by diffusers' refiner"}),
    "turbo-1-step": Case(steps=1, guidance=0.0, scheduler=TURBO, inject_latents=True),
    "turbo-4-steps": Case(steps=4, guidance=0.0, scheduler=TURBO),
    "lcm-4-steps": Case(preset="tiny-lcm", steps=4, guidance=8.5, size=(32, 32)),
    "lcm-4-steps-b2": Case(preset="tiny-lcm", steps=4, guidance=3.0, size=(32, 24), per_prompt=2,
                           inject_latents=True),
}


def _run(sdxl, case: Case, seed: int = 11, **override):
    pipe, ref = sdxl(case.preset)
    h, w = case.size
    n = len(case.prompts) * case.per_prompt
    latents = None
    if case.inject_latents:
        f = pipe.vae_scale_factor
        latents = np.random.default_rng(3).standard_normal((n, pipe.latent_channels, h // f, w // f),
                                                           dtype=np.float32)
    prompt = list(case.prompts) if len(case.prompts) > 1 else case.prompts[0]
    call = dict(negative_prompt=case.negative, num_inference_steps=case.steps, guidance_scale=case.guidance,
                num_images_per_prompt=case.per_prompt, latents=latents, scheduler=case.scheduler,
                **_inputs(case), **case.extra, **override)
    if case.mode == "txt2img":
        call.update(height=h, width=w)
    if case.preset == "tiny-lcm":
        call.pop("negative_prompt")
    ours = pipe(prompt, **call, generator=TorchReplay(seed), output_type="np")
    theirs = ref(prompt, **call, seed=seed)
    return ours.images, theirs.images, n


@pytest.mark.parametrize("name", list(CASES))
def test_sdrt_matches_diffusers(name, sdxl):
    case = CASES[name]
    ours, theirs, n = _run(sdxl, case)
    assert ours.shape == theirs.shape == (n, *case.size, 3)
    assert ours.std() > 0.01  # a real picture, not a flat one that trivially matches
    quality = psnr(ours, theirs)
    assert quality >= MIN_PSNR, f"{name}: PSNR {quality:.1f} dB"


def test_base_to_refiner_hand_off_matches_diffusers(sdxl):
    """Ensemble of experts: the base stops at denoising_end and returns latents; the refiner continues."""
    base, base_ref = sdxl("tiny-sdxl")
    refiner, refiner_ref = sdxl("tiny-sdxl-refiner")
    call = dict(num_inference_steps=5, guidance_scale=5.0, height=64, width=64)
    ours = base("a lighthouse", **call, denoising_end=0.8, generator=TorchReplay(5), output_type="latent").images
    theirs = base_ref("a lighthouse", **call, denoising_end=0.8, seed=5, output_type="latent").images
    assert ours.shape == theirs.shape == (1, 4, 32, 32)
    span = float(np.ptp(theirs))  # latents are not in [0, 1]: PSNR over their own range
    assert psnr(ours / span, theirs / span) >= MIN_PSNR
    refine = dict(num_inference_steps=5, guidance_scale=5.0, denoising_start=0.8)
    final = refiner("a lighthouse", image=ours, **refine, generator=TorchReplay(6), output_type="np").images
    final_ref = refiner_ref("a lighthouse", image=theirs, **refine, seed=6).images
    assert final.shape == final_ref.shape == (1, 64, 64, 3) and final.std() > 0.01
    assert psnr(final, final_ref) >= MIN_PSNR


def test_parity_is_sensitive_to_sdxl_conditioning(sdxl):
    """The comparisons can fail: prompt_2, the zeroed negative and the size ids each change the image."""
    pipe, _ = sdxl("tiny-sdxl")

    def image(**kw):
        args = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=64, output_type="np")
        return pipe("a red bicycle", generator=TorchReplay(11), **{**args, **kw}).images

    plain = image()
    assert psnr(plain, image(prompt_2="something else entirely")) < 35
    assert psnr(plain, image(negative_prompt="")) < 35
    assert psnr(plain, image(original_size=(1024, 1024))) < 35
    assert psnr(plain, image(guidance_rescale=0.9)) < 35


def test_sd15_clip_skip_matches_diffusers_embeddings(onnx_export, tiny_src):
    """clip_skip on SD 1.x: the export's layer stack, entry k, is diffusers' final_layer_norm(layer -(k+1))."""
    import diffusers
    import torch

    folder = onnx_export("tiny", components=("text_encoder",), hidden_states=True)
    from sdrt.engines import create_backend
    from sdrt.manifest import Manifest
    from sdrt.runtime import prompts
    from sdrt.runtime.tokenizer import ClipTokenizer

    manifest = Manifest.load(folder)
    assert "hidden_states" in manifest.spec.variants
    encoder = prompts.Encoder("text_encoder", ClipTokenizer.from_folder(folder / "tokenizer"),
                              create_backend("ort-cpu").load(manifest, "text_encoder"))
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_src, safety_checker=None,
                                                            requires_safety_checker=False)
    tok = ref.tokenizer(["a cat", "a dog"], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
    for clip_skip in (None, 1):
        ours = prompts.encode("sd", [encoder], [["a cat", "a dog"]], [["", "blurry"]], per_prompt=1, guidance=True,
                              clip_skip=clip_skip).hidden
        with torch.no_grad():
            pos, neg = ref.encode_prompt(["a cat", "a dog"], "cpu", 1, True, ["", "blurry"])
            if clip_skip:
                # diffusers' clip_skip formula (its `text_encoder.text_model.final_layer_norm` spelling
                # predates transformers 5, where the layers sit on the model itself)
                hidden = ref.text_encoder(tok, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
                pos = ref.text_encoder.final_layer_norm(hidden)
        want = torch.cat([neg, pos]).numpy()
        assert ours.shape == want.shape
        np.testing.assert_allclose(ours, want, atol=1e-4)
    skipped = prompts.encode("sd", [encoder], [["a cat"]], [[""]], per_prompt=1, guidance=False, clip_skip=1).hidden
    plain = prompts.encode("sd", [encoder], [["a cat"]], [[""]], per_prompt=1, guidance=False).hidden
    assert np.abs(skipped - plain).max() > 1e-2  # clip_skip really picks another layer
