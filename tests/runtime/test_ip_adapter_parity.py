"""IP-Adapter against diffusers end to end: same exported weights, injected latents, scheduler config; fp32 CPU.

diffusers loads the `tiny-ip-adapter` fixture (diffusers' `load_ip_adapter` layout) into the tiny
preset's pipeline, alone or with the tiny ControlNet, and runs StableDiffusion(ControlNet)Pipeline
with `ip_adapter_image`; sdrt runs the exported IP-Adapter on the UNet rewritten at load. Images
must agree to PSNR >= 40 dB. The fixture's weights steer the picture (`test_ip_adapter_changes_the_image`),
so agreement proves something.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.reference import TorchReplay, load_reference
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from sdrt.runtime.ip_adapter import check_fits

STEPS = 4
MIN_PSNR = 40.0


@dataclass(frozen=True)
class Case:
    base: str = "tiny"
    controlnet: bool = False
    scale: float = 1.0
    scheduler: str = "euler"
    guidance: float = 7.5
    prompts: tuple = ("a red bicycle",)
    per_prompt: int = 1
    size: tuple = (32, 32)
    image_size: tuple = (40, 56)  # (height, width) of the image prompt: resized and centre-cropped
    img2img: bool = False  # diffusers takes no injected latents there: the same seeded draws instead
    extra: dict = field(default_factory=dict)


CASES = {
    "alone": Case(scale=0.7),
    "alone-cfg-off-batch2-nonsquare": Case(guidance=1.0, prompts=("a cat", "a dog"), per_prompt=2, size=(24, 40),
                                           scheduler="ddim", image_size=(32, 32)),
    "img2img": Case(scale=0.6, img2img=True, image_size=(64, 24)),
    "with-controlnet": Case(controlnet=True, scale=0.8, extra={"controlnet_conditioning_scale": 0.7,
                                                              "control_guidance_end": 0.75}),
    "sdxl": Case(base="tiny-sdxl", scale=0.6, scheduler=None, guidance=5.0, size=(64, 48)),
    "sdxl-with-controlnet": Case(base="tiny-sdxl", controlnet=True, scheduler=None, guidance=5.0, size=(48, 64),
                                 extra={"controlnet_conditioning_scale": 0.8}),
}
#: base preset -> (its IP-Adapter preset, its ControlNet preset)
ADD_ONS = {"tiny": ("tiny-ip-adapter", "tiny-controlnet"), "tiny-sdxl": ("tiny-sdxl-ip-adapter", "tiny-sdxl-controlnet")}


@pytest.fixture(scope="module")
def loaded(onnx_export, controlnet_export, ip_adapter_export):
    """(controlnet?, base) -> (sdrt Pipeline on ort-cpu, diffusers reference), both with the IP-Adapter, loaded once."""
    cache: dict = {}

    def get(controlnet: bool, base: str = "tiny"):
        if (controlnet, base) not in cache:
            ip_name, net_name = ADD_ONS[base]
            nets = [controlnet_export(net_name)] if controlnet else None
            folder, ip = onnx_export(base), ip_adapter_export(ip_name)
            cache[(controlnet, base)] = (Pipeline.load(folder, backend="ort-cpu", controlnet=nets, ip_adapter=ip),
                                         load_reference(folder, controlnet=nets, ip_adapter=ip))
        return cache[(controlnet, base)]

    return get


def image_prompt(size: tuple) -> np.ndarray:
    return (np.random.default_rng(9).random((*size, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(CASES))
def test_ip_adapter_matches_diffusers(name, loaded):
    case = CASES[name]
    pipe, ref = loaded(case.controlnet, case.base)
    h, w = case.size
    f = pipe.vae_scale_factor
    n = len(case.prompts) * case.per_prompt
    prompt = list(case.prompts) if len(case.prompts) > 1 else case.prompts[0]
    call = dict(num_inference_steps=STEPS, guidance_scale=case.guidance, height=h, width=w,
                num_images_per_prompt=case.per_prompt, scheduler=case.scheduler,
                ip_adapter_image=image_prompt(case.image_size), **case.extra)
    if case.img2img:
        call.update(image=(np.random.default_rng(7).random((h, w, 3)) * 255).astype(np.uint8), strength=0.7)
        ours_random, theirs_random = {"generator": TorchReplay(11)}, {"seed": 11}
    else:
        latents = np.random.default_rng(3).standard_normal((n, 4, h // f, w // f), dtype=np.float32)
        ours_random = theirs_random = {"latents": latents}
    if case.controlnet:
        call["control_image"] = (np.random.default_rng(5).random((h, w, 3)) * 255).astype(np.uint8)
    pipe.set_ip_adapter_scale(case.scale)
    ours = pipe(prompt, **call, **ours_random, output_type="np")
    theirs = ref(prompt, **call, **theirs_random, ip_adapter_scale=case.scale)
    assert ours.images.shape == theirs.images.shape == (n, h, w, 3)
    assert ours.images.std() > 0.01  # a real picture, not a flat one that trivially matches
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"{name}: PSNR {quality:.1f} dB"
    described = ours.parameters["ip_adapter"]
    assert described["scale"] == case.scale and described["model"].startswith(f"src-{ADD_ONS[case.base][0]}-0-")
    assert described["module"] == ("ip-adapter_clip_sdxl" if case.base == "tiny-sdxl" else "ip-adapter_clip_sd15")


@pytest.mark.parametrize("base", list(ADD_ONS))
def test_ip_adapter_changes_the_image(loaded, onnx_export, base):
    """The fixtures steer (so parity proves something); scale 0 and no image prompt are the base alone."""
    pipe, _ = loaded(False, base)
    plain = Pipeline.load(onnx_export(base), backend="ort-cpu")
    call = dict(num_inference_steps=STEPS, height=32, width=32, scheduler="euler", output_type="np")
    base = plain("a red bicycle", generator=TorchReplay(3), **call).images
    pipe.set_ip_adapter_scale(1.0)
    steered = pipe("a red bicycle", ip_adapter_image=image_prompt((32, 32)), generator=TorchReplay(3), **call).images
    other = pipe("a red bicycle", ip_adapter_image=255 - image_prompt((32, 32)), generator=TorchReplay(3), **call).images
    without = pipe("a red bicycle", generator=TorchReplay(3), **call)
    pipe.set_ip_adapter_scale(0.0)
    off = pipe("a red bicycle", ip_adapter_image=image_prompt((32, 32)), generator=TorchReplay(3), **call).images
    assert psnr(steered, base) < 30
    assert psnr(steered, other) < 40  # the picture follows the image prompt, not just its presence
    assert psnr(off, base) > 60 and psnr(without.images, base) > 60
    assert "ip_adapter" not in without.parameters


def test_ip_adapter_bad_input(loaded, tiny_onnx, tiny_controlnet_onnx):
    pipe, _ = loaded(False)
    plain = Pipeline.load(tiny_onnx, backend="ort-cpu")
    call = dict(num_inference_steps=2, height=32, width=32)
    with pytest.raises(SdrtError, match="no IP-Adapter: load one"):
        plain("x", ip_adapter_image=image_prompt((8, 8)), **call)
    with pytest.raises(SdrtError, match="no IP-Adapter"):
        plain.set_ip_adapter_scale(0.5)
    for scale in ("strong", float("nan"), {"down": 1.0}):
        with pytest.raises(SdrtError, match="IP-Adapter scale"):
            pipe.set_ip_adapter_scale(scale)
    with pytest.raises(SdrtError, match="2 IP-Adapter images"):
        pipe("x", ip_adapter_image=[image_prompt((8, 8))] * 2, **call)
    with pytest.raises(SdrtError, match="not an IP-Adapter"):
        Pipeline.load(tiny_onnx, backend="ort-cpu", ip_adapter=tiny_controlnet_onnx)
    with pytest.raises(SdrtError, match="is an IP-Adapter folder, not a model: .* as ip_adapter="):
        Pipeline.load(pipe.ip_adapter.manifest.folder, backend="ort-cpu")
    base = Manifest.load(tiny_onnx)
    wider = Manifest(base.folder, {**base.data, "pipeline": {**base.pipeline, "text_hidden_size": 768}})
    with pytest.raises(SdrtError, match="cross-attention width 32, the base .* has 768"):
        check_fits(wider, pipe.ip_adapter.manifest)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino: pip install 'sdrt[openvino]'")
def test_openvino_runs_the_ip_adapter_like_onnx_runtime(loaded, tiny_onnx, tiny_controlnet_onnx, tiny_ip_adapter_onnx):
    """OpenVINO f32 compiles the rewritten UNet (IP-Adapter and ControlNet inputs) and both IP-Adapter graphs."""
    pipe, _ = loaded(True)
    other = Pipeline.load(tiny_onnx, backend="openvino", controlnet=[tiny_controlnet_onnx],
                          ip_adapter=tiny_ip_adapter_onnx)
    call = dict(num_inference_steps=STEPS, height=32, width=32, scheduler="euler", output_type="np",
                ip_adapter_image=image_prompt((40, 56)), control_image=image_prompt((32, 32)))
    images = []
    for p in (pipe, other):
        p.set_ip_adapter_scale(0.7)
        images.append(p("a red bicycle", generator=TorchReplay(4), **call).images)
    assert psnr(images[1], images[0]) > 40
