"""LoRA on SD3 with the openvino backend: side paths (every Linear: transformer, CLIP-L/G, T5) or merged
weights (the patch-embedding Conv is 2x2), against diffusers' fused LoRA (f32, PSNR >= 40 dB); A -> B -> A
and unloading are exact.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdrt.reference import Reference, TorchReplay, load_source_pipeline
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from sdrt.weight_map import WeightMap
from tests.runtime.lora import sd3_files

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'sdrt[openvino]')")

MIN_PSNR = 40.0
MAX_BASE_PSNR = 30.0
CALL = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=48)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sd3_onnx):
    """(a private copy of tiny-sd3, LoRA A (PEFT, Linear layers only: side paths), LoRA B (kohya, with the
    patch Conv and T5: the transformer merged), A's matrices)."""
    root = tmp_path_factory.mktemp("ov-lora-sd3")
    folder = root / "tiny-sd3"
    shutil.copytree(tiny_sd3_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    pipe = Pipeline.load(folder, "ort-cpu")
    source = load_source_pipeline(pipe.manifest)
    shapes = sd3_files.sd3_shapes(source, t5=True)
    linear = {c: {n: s for n, s in layers.items() if len(s) == 2} for c, layers in shapes.items()}
    pairs_a = sd3_files.draw({c: v for c, v in linear.items() if c != "text_encoder_3"}, seed=41)
    a = sd3_files.write_peft(root / "a.safetensors", pairs_a)
    modules = WeightMap.load(pipe.manifest, "transformer").modules()
    b = sd3_files.write_kohya(root / "b.safetensors", sd3_files.draw(shapes, seed=42), modules)
    return folder, a, b


def _run(pipe):
    return pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images


def test_openvino_sd3_lora_matches_diffusers_and_switches_exactly(setup, capsys):
    folder, a, b = setup
    fresh = _run(Pipeline.load(folder, "openvino"))
    pipe = Pipeline.load(folder, "openvino", loras=[(a, 0.8)])
    first_a = _run(pipe)
    assert pipe.adapters.branched == {"text_encoder", "text_encoder_2", "transformer"}
    source = load_source_pipeline(pipe.manifest)
    source.load_lora_weights(str(a))
    source.fuse_lora(lora_scale=0.8)
    theirs = Reference(source, folder)("a red bicycle", **CALL, seed=11).images
    pipe.set_loras([(b, 0.6)])  # the patch Conv: the transformer merged; T5 branched
    with_b = _run(pipe)
    assert "transformer" not in pipe.adapters.branched and "text_encoder_3" in pipe.adapters.branched
    pipe.set_loras([(a, 0.8)])
    again_a = _run(pipe)
    pipe.set_loras([])
    unloaded = _run(pipe)

    quality = psnr(first_a, theirs)
    with capsys.disabled():
        print(f"\n[openvino f32 + SD3 LoRA side paths vs diffusers fp32 + LoRA, tiny-sd3, 3 steps] PSNR {quality:.1f} dB")
    assert psnr(first_a, fresh) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    assert quality >= MIN_PSNR, f"openvino SD3 LoRA: PSNR {quality:.1f} dB against diffusers"
    assert psnr(with_b, first_a) < MAX_BASE_PSNR
    assert np.array_equal(first_a, again_a)
    assert np.array_equal(unloaded, fresh)
