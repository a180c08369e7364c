"""sdrt on the openvino backend against diffusers fp32, end to end on the tiny presets.

f32 must agree to PSNR >= 40 dB (like ort-cpu); bf16 is reported (``record_property`` and the
test's output), and only has to be a picture close to the reference, since bf16 rounds every
activation to 8 mantissa bits.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdrt.reference import TorchReplay
from sdrt.runtime.images import psnr

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'sdrt[openvino]')")

STEPS = 3
MIN_PSNR = 40.0
#: bf16 is lossy; this bound only catches a broken conversion (measured values are printed)
MIN_BF16_PSNR = 20.0

CASES = {
    "tiny-ddim-cfg": ("tiny", "ddim", {}),
    "tiny-euler-nocfg-b2": ("tiny", "euler", {"guidance_scale": 1.0, "prompt": ["a cat", "a dog"]}),
    "sd21-dpmpp2m-cfg": ("tiny-sd21", "dpmpp_2m", {"height": 40, "width": 32}),
    "img2img-ddim": ("tiny", "ddim", {"image": "random", "strength": 0.6}),
}


@pytest.fixture(scope="module")
def ov_pipelines(tmp_path_factory, tiny_onnx, tiny_sd21_onnx):
    """(preset, precision) -> Pipeline on openvino, on a private copy of the folder (its engine cache)."""
    from sdrt.runtime import Pipeline

    folders = {"tiny": tiny_onnx, "tiny-sd21": tiny_sd21_onnx}
    copies: dict = {}
    cache: dict = {}

    def get(preset: str, precision: str = "f32"):
        if preset not in copies:
            copies[preset] = tmp_path_factory.mktemp("ov") / preset
            shutil.copytree(folders[preset], copies[preset], ignore=shutil.ignore_patterns("engines"))
        if (preset, precision) not in cache:
            cache[preset, precision] = Pipeline.load(copies[preset], "openvino", precision=precision)
        return cache[preset, precision]

    return get


def _call(case: dict) -> dict:
    call = {"prompt": "a red bicycle", "num_inference_steps": STEPS, "height": 32, "width": 32, **case}
    if call.get("image") == "random":
        call["image"] = (np.random.default_rng(7).random((call["height"], call["width"], 3)) * 255).astype(np.uint8)
    return call


@pytest.mark.parametrize("name", list(CASES))
def test_openvino_f32_matches_diffusers(name, ov_pipelines, references):
    preset, scheduler, case = CASES[name]
    call = _call(case)
    ours = ov_pipelines(preset)(**call, scheduler=scheduler, generator=TorchReplay(11), output_type="np")
    theirs = references(preset)(**call, scheduler=scheduler, seed=11)
    assert ours.parameters["backend"] == "openvino" and ours.parameters["runtime_precision"] == "f32"
    assert ours.images.std() > 0.01
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"{name}: PSNR {quality:.1f} dB"


def test_openvino_bf16_psnr_is_reported(ov_pipelines, references, record_property, capsys):
    from sdrt.engines.openvino import PRECISIONS, device_capabilities

    if PRECISIONS["bf16"][1] not in device_capabilities(ov.Core(), "CPU"):
        pytest.skip("this CPU has no bf16 support in OpenVINO (needs AVX512-BF16 or AMX)")
    call = _call({})
    ours = ov_pipelines("tiny", "bf16")(**call, scheduler="ddim", generator=TorchReplay(11), output_type="np")
    theirs = references("tiny")(**call, scheduler="ddim", seed=11)
    quality = psnr(ours.images, theirs.images)
    record_property("bf16_psnr_db", round(quality, 2))
    with capsys.disabled():
        print(f"\n[openvino bf16 vs diffusers fp32, tiny, {STEPS} steps] PSNR {quality:.1f} dB")
    assert ours.parameters["runtime_precision"] == "bf16"
    assert ours.images.std() > 0.01 and quality >= MIN_BF16_PSNR, f"bf16 PSNR {quality:.1f} dB"


def test_openvino_f32_runs_the_sdxl_family(tiny_sdxl_onnx, tmp_path):
    """text_encoder_2, pooled text_embeds and time_ids through openvino (the manifest's family spec)."""
    from sdrt.reference import load_reference
    from sdrt.runtime import Pipeline

    folder = tmp_path / "tiny-sdxl"
    shutil.copytree(tiny_sdxl_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    call = {"prompt": "a red bicycle", "prompt_2": "oil painting", "num_inference_steps": STEPS,
            "height": 32, "width": 48, "original_size": (96, 64), "crops_coords_top_left": (4, 8)}
    ours = Pipeline.load(folder, "openvino")(**call, scheduler="euler", generator=TorchReplay(11), output_type="np")
    theirs = load_reference(tiny_sdxl_onnx)(**call, scheduler="euler", seed=11)
    assert ours.parameters["backend"] == "openvino" and ours.images.std() > 0.01
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"tiny-sdxl on openvino: PSNR {quality:.1f} dB"
