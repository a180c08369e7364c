"""LoRA on the openvino backend: side paths on a model compiled once, or merged weights and a compile.

A LoRA whose layers are all Linear / 1x1 Conv layers goes in as low-rank side paths
(sdrt.engines.openvino_lora: the branched model is compiled or imported once, a switch binds new
inputs); one on 3x3 convolutions replaces the model's Constants with merged weights and compiles
again. Both: f32 against diffusers (`load_lora_weights` + `fuse_lora`) to PSNR >= 40 dB; A -> B -> A
gives A's images bit for bit, across the two paths too; unloading gives a never-LoRA'd openvino
pipeline's images bit for bit; the compiled-model cache keeps the base entries as they were, gains
only the branched model (the same for every LoRA) and never a merged one. bf16 is run and its PSNR
reported.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdrt.reference import Reference, TorchReplay, load_source_pipeline
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.lora.helpers import layer_shapes, write_kohya, write_peft

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'sdrt[openvino]')")

MIN_PSNR = 40.0
MAX_BASE_PSNR = 30.0
MIN_BF16_PSNR = 20.0  # bf16 rounds every weight: this only catches a broken conversion
CALL = dict(num_inference_steps=3, guidance_scale=7.5, height=32, width=32, scheduler="ddim")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_onnx):
    """(a private copy of tiny, the diffusers source pipeline, LoRA A (kohya, UNet+TE+conv), LoRA B (PEFT))."""
    root = tmp_path_factory.mktemp("ov-lora")
    folder = root / "tiny"
    shutil.copytree(tiny_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    source = load_source_pipeline(Pipeline.load(folder, "ort-cpu").manifest)
    a = write_kohya(root / "a.safetensors", layer_shapes(source, text=True, conv=True), seed=31)
    b = write_peft(root / "b.safetensors", layer_shapes(source, text=True), seed=32)
    return folder, a, b


def _reference(pipe, folder, path, scale):
    source = load_source_pipeline(pipe.manifest)
    source.load_lora_weights(str(path), adapter_name="x")
    source.fuse_lora(lora_scale=scale)
    return Reference(source, folder)("a red bicycle", **CALL, seed=11).images


def _entries(folder):
    import json

    root = folder / "engines" / "openvino"
    return {p.name: json.loads((p / "key.json").read_text())["identity"] for p in root.iterdir() if (p / "key.json").is_file()}


def _run(pipe):
    return pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images


def test_openvino_lora_matches_diffusers_and_switches_exactly(setup, capsys):
    folder, a, b = setup
    fresh = _run(Pipeline.load(folder, "openvino"))  # compiles the base into the cache
    entries = _entries(folder)

    pipe = Pipeline.load(folder, "openvino", loras=[(a, 0.8)])
    first_a = _run(pipe)
    assert pipe.adapters.branched == {"text_encoder"}  # the UNet part has 3x3 convs: merged
    theirs = _reference(pipe, folder, a, 0.8)
    pipe.set_loras([(b, 0.5), (a, 0.3)])
    mixed = _run(pipe)
    pipe.set_loras([(a, 0.8)])
    again_a = _run(pipe)
    pipe.set_loras([])
    unloaded = _run(pipe)

    assert psnr(first_a, fresh) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    quality = psnr(first_a, theirs)
    with capsys.disabled():
        print(f"\n[openvino f32 + LoRA vs diffusers fp32 + LoRA, tiny, 3 steps] PSNR {quality:.1f} dB")
    assert quality >= MIN_PSNR, f"openvino f32 + LoRA: PSNR {quality:.1f} dB against diffusers"
    assert psnr(mixed, first_a) < MAX_BASE_PSNR
    assert np.array_equal(first_a, again_a)
    assert np.array_equal(unloaded, fresh)
    # the base entries are as they were; new ones are only branched models, never a merged one
    after = _entries(folder)
    assert set(entries) <= set(after)
    assert all(ident["shapes"].endswith("+lora-branches") for name, ident in after.items() if name not in entries)
    assert np.array_equal(_run(Pipeline.load(folder, "openvino")), fresh)


def test_openvino_side_paths_switch_without_compiling(setup, capsys):
    folder, a, b = setup
    fresh = _run(Pipeline.load(folder, "openvino"))
    pipe = Pipeline.load(folder, "openvino", loras=[(b, 0.9)])
    first_b = _run(pipe)
    assert pipe.adapters.branched == {"text_encoder", "unet"}
    compiled = {c: pipe.engines[c].compiled for c in ("text_encoder", "unet")}
    theirs = _reference(pipe, folder, b, 0.9)
    pipe.set_loras([(b, 0.4), (b, 0.5)])  # the same file twice: stacked along the rank, the same sum
    stacked = _run(pipe)
    assert all(pipe.engines[c].compiled is compiled[c] for c in compiled)  # no compile: new inputs bound
    pipe.set_loras([(a, 0.8)])  # to the merged path (3x3 convs) and back
    pipe.set_loras([(b, 0.9)])
    again_b = _run(pipe)
    pipe.set_loras([])
    unloaded = _run(pipe)

    quality = psnr(first_b, theirs)
    with capsys.disabled():
        print(f"\n[openvino f32 + LoRA side paths vs diffusers fp32 + LoRA, tiny, 3 steps] PSNR {quality:.1f} dB")
    assert psnr(first_b, fresh) < MAX_BASE_PSNR
    assert quality >= MIN_PSNR, f"openvino side paths: PSNR {quality:.1f} dB against diffusers"
    assert psnr(stacked, first_b) >= MIN_PSNR
    assert np.array_equal(first_b, again_b)
    assert np.array_equal(unloaded, fresh)
    second = Pipeline.load(folder, "openvino", loras=[(b, 0.9)])  # the branched model comes from the cache
    assert second.engines["unet"].loaded_from_cache is True
    assert np.array_equal(_run(second), first_b)


def test_openvino_bf16_lora_runs_and_its_psnr_is_reported(setup, record_property, capsys):
    from sdrt.engines.openvino import PRECISIONS, device_capabilities

    if PRECISIONS["bf16"][1] not in device_capabilities(ov.Core(), "CPU"):
        pytest.skip("this CPU has no bf16 support in OpenVINO (needs AVX512-BF16 or AMX)")
    folder, a, _ = setup
    pipe = Pipeline.load(folder, "openvino", precision="bf16", loras=[(a, 0.8)])
    ours = pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np")
    theirs = _reference(pipe, folder, a, 0.8)
    quality = psnr(ours.images, theirs)
    record_property("bf16_lora_psnr_db", round(quality, 2))
    with capsys.disabled():
        print(f"\n[openvino bf16 + LoRA vs diffusers fp32 + LoRA, tiny, 3 steps] PSNR {quality:.1f} dB")
    assert ours.parameters["runtime_precision"] == "bf16"
    assert ours.images.std() > 0.01 and quality >= MIN_BF16_PSNR, f"bf16 + LoRA PSNR {quality:.1f} dB"
