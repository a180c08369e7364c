"""LoRA in sdrt (numpy merge, ONNX Runtime initializer overrides) against diffusers' own LoRA loading.

diffusers loads the same random file with `load_lora_weights` (peft) and fuses it (`fuse_lora`) or
weights several (`set_adapters`); both pipelines then run with the same noise (TorchReplay), and
the images must agree to PSNR >= 40 dB while differing clearly from the base model's (the LoRA
did something). Switching back and forth must give the same images bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from sdrt.reference import Reference, TorchReplay, load_source_pipeline
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.lora.helpers import (attention_only, layer_shapes, write_diffusers_training, write_kohya,
                                        write_peft, write_processor_format)

MIN_PSNR = 40.0
#: a LoRA that changes the picture by less than this (PSNR against the base) tests nothing
MAX_BASE_PSNR = 30.0


@dataclass(frozen=True)
class Case:
    preset: str
    files: tuple            # ((format, text encoder too?, conv too?, seed, scale), ...)
    scheduler: str = "ddim"
    steps: int = 3
    guidance: float = 7.5


CASES = {
    "kohya-unet": Case("tiny", (("kohya", False, False, 1, 0.8),)),
    "peft-unet-text": Case("tiny", (("peft", True, False, 2, 1.0),)),
    "kohya-unet-text-sd21": Case("tiny-sd21", (("kohya", True, False, 3, 0.7),), scheduler="euler"),
    "kohya-conv": Case("tiny-sd21", (("kohya", False, True, 4, 1.0),), scheduler="dpmpp_2m"),
    "stacked-two-scales": Case("tiny", (("kohya", True, False, 5, 0.6), ("peft", False, True, 6, -0.4))),
    # files in the layouts diffusers itself writes: its training scripts' (written by diffusers), and
    # the attention-processor names of diffusers < 0.21. diffusers 0.42 does not apply the UNet
    # `.lora.down` keys of the first (its fused weights do not move), so its reference loads the
    # PEFT-format twin of each file: the same matrices under lora_A/lora_B names.
    "diffusers-training-unet-text": Case("tiny", (("diffusers-training", True, False, 8, 0.8),)),
    "diffusers-processor-unet-text": Case("tiny-sd21", (("processor", True, False, 9, 1.0),), scheduler="euler"),
    "lcm-lora-style": Case("tiny", (("kohya", False, True, 7, 1.0),), scheduler="lcm", steps=4, guidance=1.0),
}


@pytest.fixture(scope="module")
def folders(tiny_onnx, tiny_sd21_onnx):
    return {"tiny": tiny_onnx, "tiny-sd21": tiny_sd21_onnx}


WRITERS = {"kohya": write_kohya, "peft": write_peft, "diffusers-training": write_diffusers_training,
           "processor": write_processor_format}
#: formats whose diffusers reference reads a PEFT twin
TWINNED = ("diffusers-training", "processor")


def _write(tmp_path, source, spec, index, *, twin: bool = False):
    """The file of `spec` (sdrt reads it); with twin=True the file diffusers reads for it: itself, or
    for the formats diffusers 0.42 misreads, the PEFT file with the same matrices."""
    fmt, text, conv, seed, _ = spec
    shapes = layer_shapes(source, text=text, conv=conv)
    if twin and fmt in TWINNED:
        shapes = attention_only(shapes) if fmt == "processor" else shapes
        return write_peft(tmp_path / f"lora{index}-{fmt}-twin.safetensors", shapes, seed=seed)
    return WRITERS[fmt](tmp_path / f"lora{index}-{fmt}.safetensors", shapes, seed=seed)


def _call(case):
    return dict(num_inference_steps=case.steps, guidance_scale=case.guidance, height=32, width=32,
                scheduler=case.scheduler)


@pytest.mark.parametrize("name", list(CASES))
def test_lora_matches_diffusers(name, folders, tmp_path):
    case = CASES[name]
    folder = folders[case.preset]
    pipe = Pipeline.load(folder, "ort-cpu")
    ref_pipe = load_source_pipeline(pipe.manifest)
    files = [(_write(tmp_path, ref_pipe, spec, i), spec[-1]) for i, spec in enumerate(case.files)]
    twins = [_write(tmp_path, ref_pipe, spec, i, twin=True) if spec[0] in TWINNED else path
             for i, (spec, (path, _)) in enumerate(zip(case.files, files))]  # before diffusers wraps modules
    base = pipe("a red bicycle", **_call(case), generator=TorchReplay(11), output_type="np").images

    pipe.set_loras(files)
    ours = pipe("a red bicycle", **_call(case), generator=TorchReplay(11), output_type="np")
    names = [f"a{i}" for i in range(len(files))]
    for path, adapter in zip(twins, names):
        ref_pipe.load_lora_weights(str(path), adapter_name=adapter)
    if len(files) == 1:
        ref_pipe.fuse_lora(lora_scale=files[0][1])
    else:
        ref_pipe.set_adapters(names, [scale for _, scale in files])
    theirs = Reference(ref_pipe, folder)("a red bicycle", **_call(case), seed=11)

    assert [lora["scale"] for lora in ours.parameters["loras"]] == [s for _, s in files]
    assert psnr(ours.images, base) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"{name}: PSNR {quality:.1f} dB against diffusers"


def test_switching_is_exact(folders, tmp_path):
    """A -> B -> A gives A's images bit for bit; [] gives a never-LoRA'd pipeline's images bit for bit."""
    folder = folders["tiny"]
    source = load_source_pipeline(Pipeline.load(folder, "ort-cpu").manifest)
    a = write_kohya(tmp_path / "a.safetensors", layer_shapes(source, text=True, conv=True), seed=11)
    b = write_peft(tmp_path / "b.safetensors", layer_shapes(source, text=True), seed=12)
    call = dict(num_inference_steps=3, height=32, width=32, scheduler="euler_a", output_type="np")

    def run(p):
        return p("a cat", **call, seed=5).images

    fresh = run(Pipeline.load(folder, "ort-cpu"))
    pipe = Pipeline.load(folder, "ort-cpu", loras=[(a, 0.9)])
    first_a = run(pipe)
    pipe.set_loras([(b, 0.5), (a, 0.3)])
    mixed = run(pipe)
    pipe.set_loras([(a, 0.9)])
    again_a = run(pipe)
    pipe.set_loras([])
    unloaded = run(pipe)

    assert np.array_equal(first_a, again_a)
    assert np.array_equal(unloaded, fresh)
    assert psnr(first_a, fresh) < MAX_BASE_PSNR and psnr(mixed, first_a) < MAX_BASE_PSNR
    assert pipe.loras == []
