"""ControlNet against diffusers end to end: same exported weights, noise, scheduler config; fp32 on the CPU.

diffusers runs StableDiffusionControlNet(Img2Img|Inpaint)Pipeline and StableDiffusionXLControlNetPipeline
(MultiControlNetModel for two) on the source modules with a torch generator; sdrt gets `TorchReplay`
of the same seed. The test ControlNets have non-zero "zero convolutions" (a fresh one changes
nothing, and would prove nothing): `test_controlnet_changes_the_image` checks that they steer.
Images must agree to PSNR >= 40 dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from sdrt.reference import TorchReplay, load_reference
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.test_parity import Case as _BaseCase, _inputs

STEPS = 4
MIN_PSNR = 40.0


@dataclass(frozen=True)
class Case:
    base: str = "tiny"
    nets: tuple = ("tiny-controlnet/0",)  # ControlNet preset / seed, one per ControlNet
    scheduler: str = "ddim"
    guidance: float = 7.5
    prompts: tuple = ("a red bicycle",)
    per_prompt: int = 1
    size: tuple = (32, 32)
    mode: str = "txt2img"
    strength: float = 0.7
    control_size: tuple | None = None  # (height, width) of the control image when it differs (resized)
    per_prompt_control: bool = False   # one control image per prompt
    extra: dict = field(default_factory=dict)


CASES = {
    "one-scale-window": Case(extra={"controlnet_conditioning_scale": 0.7, "control_guidance_start": 0.2,
                                    "control_guidance_end": 0.8}),
    "two-scale-list": Case(nets=("tiny-controlnet/0", "tiny-controlnet/1"), scheduler="euler",
                           extra={"controlnet_conditioning_scale": [0.6, 1.3], "control_guidance_start": [0.0, 0.25],
                                  "control_guidance_end": [0.75, 1.0]}),
    "guess-mode": Case(scheduler="dpmpp_2m", extra={"guess_mode": True, "controlnet_conditioning_scale": 0.9}),
    "cfg-off": Case(guidance=1.0, scheduler="euler"),
    "nonsquare-b2-resized": Case(prompts=("a cat", "a dog"), per_prompt=2, size=(24, 40), control_size=(20, 28),
                                 per_prompt_control=True),
    "img2img": Case(mode="img2img", scheduler="euler", extra={"controlnet_conditioning_scale": 0.8}),
    "inpaint4": Case(mode="inpaint", strength=0.8),
    "inpaint9": Case(base="tiny-inpaint", mode="inpaint", strength=1.0, scheduler="euler"),
    "sdxl": Case(base="tiny-sdxl", nets=("tiny-sdxl-controlnet/0",), scheduler=None, guidance=5.0, size=(64, 48),
                 extra={"controlnet_conditioning_scale": 0.8, "control_guidance_end": 0.7}),
    "sdxl-guess-img2img": Case(base="tiny-sdxl", nets=("tiny-sdxl-controlnet/0",), scheduler=None, guidance=5.0,
                               size=(64, 64), mode="img2img", strength=0.6, extra={"guess_mode": True}),
}


@pytest.fixture(scope="module")
def loaded(onnx_export, controlnet_export):
    """(base, nets) -> (sdrt Pipeline on ort-cpu, diffusers reference), loaded once per module."""
    cache: dict = {}

    def get(base: str, nets: tuple):
        if (base, nets) not in cache:
            folders = [controlnet_export(net.split("/")[0], seed=int(net.split("/")[1])) for net in nets]
            base_folder = onnx_export(base)
            cache[(base, nets)] = (Pipeline.load(base_folder, backend="ort-cpu", controlnet=folders),
                                   load_reference(base_folder, controlnet=folders))
        return cache[(base, nets)]

    return get


def control_images(case: Case, count: int) -> list:
    h, w = case.control_size or case.size
    rng = np.random.default_rng(5)
    made = []
    for _ in range(count):
        pictures = [(rng.random((h, w, 3)) * 255).astype(np.uint8)
                    for _ in (case.prompts if case.per_prompt_control else (0,))]
        made.append(pictures if case.per_prompt_control else pictures[0])
    return made


@pytest.mark.parametrize("name", list(CASES))
def test_controlnet_matches_diffusers(name, loaded):
    case = CASES[name]
    pipe, ref = loaded(case.base, case.nets)
    h, w = case.size
    n = len(case.prompts) * case.per_prompt
    controls = control_images(case, len(case.nets))
    prompt = list(case.prompts) if len(case.prompts) > 1 else case.prompts[0]
    base_case = _BaseCase(case.base, "ddim", size=case.size, mode=case.mode, strength=case.strength)
    call = dict(num_inference_steps=STEPS, guidance_scale=case.guidance, height=h, width=w,
                num_images_per_prompt=case.per_prompt, scheduler=case.scheduler,
                control_image=controls if len(controls) > 1 else controls[0], **_inputs(base_case), **case.extra)
    ours = pipe(prompt, **call, generator=TorchReplay(11), output_type="np")
    theirs = ref(prompt, **call, seed=11)
    assert ours.images.shape == theirs.images.shape == (n, h, w, 3)
    assert ours.images.std() > 0.01  # a real picture, not a flat one that trivially matches
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"{name}: PSNR {quality:.1f} dB"
    default = pipe.family_spec.controlnet_scale[case.mode]  # diffusers' default differs by mode (inpaint: 0.5)
    assert [c["weight"] for c in ours.parameters["controlnets"]] == [
        float(s) for s in np.broadcast_to(case.extra.get("controlnet_conditioning_scale", default), (len(case.nets),))]


def test_controlnet_changes_the_image(loaded, onnx_export):
    """The test ControlNets steer (non-zero zero convolutions): without one, or at scale 0, the image differs."""
    pipe, _ = loaded("tiny", ("tiny-controlnet/0",))
    plain = Pipeline.load(onnx_export("tiny"), backend="ort-cpu")
    control = control_images(Case(), 1)[0]
    call = dict(num_inference_steps=STEPS, height=32, width=32, scheduler="euler", output_type="np")  # no config fix
    steered = pipe("a red bicycle", control_image=control, generator=TorchReplay(3), **call).images
    unsteered = plain("a red bicycle", generator=TorchReplay(3), **call).images
    off = pipe("a red bicycle", control_image=control, controlnet_conditioning_scale=0.0, generator=TorchReplay(3),
               **call).images
    assert psnr(steered, unsteered) < 30
    assert psnr(off, unsteered) > 60  # scale 0 is the base alone (the residual graph adds zeros)
