"""The benchmark's int8 contenders: `BACKEND[:PRECISION]@SCHEME` runs on the folder quantized beside the export."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdrt.bench.contenders import Generation
from sdrt.bench.models import quantized_folder
from sdrt.bench.plan import Plan, peer_contender, sdrt_contender
from sdrt.bench.suites import get_suite


def test_int8_contenders_use_the_quantized_sibling(tiny_onnx, quantize_tiny, tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    shutil.copytree(quantize_tiny("int8")[0], tmp_path / "tiny-int8")  # as an earlier run left it
    assert quantized_folder(folder, "int8", 64, log=pytest.fail) == tmp_path / "tiny-int8"  # reused, not redone
    plan = Plan(suite=get_suite("cpu-sd15"), out=None, onnx=None, prompt="x", seed=0)
    ort = sdrt_contender(folder, "ort-cpu@int8", plan)
    bf16 = sdrt_contender(folder, "openvino:bf16@int8", plan)
    assert ort.folder == bf16.folder == tmp_path / "tiny-int8"
    assert ort.name == "sdrt ort-cpu int8" and bf16.name == "sdrt openvino int8 (bf16 elsewhere)"
    assert bf16.options["precision"] == "bf16" and "int8" in get_suite("cpu-sd15").backends[3]
    genai = peer_contender(folder, "openvino-genai:bf16@int8", get_suite("cpu-sd15"), log=pytest.fail)
    assert genai.folder == tmp_path / "tiny-int8" and genai.name == "OpenVINO GenAI int8 (bf16 elsewhere)"
    gen = Generation("a cat", steps=2, guidance_scale=7.5, height=64, width=64, batch=1, scheduler=None,
                     latents=np.random.default_rng(0).standard_normal((1, 4, 32, 32), dtype=np.float32))
    ort.load()
    try:
        images, _, _ = ort(gen)
    finally:
        ort.close()
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
