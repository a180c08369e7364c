"""Benchmark peers: contender specs, and OpenVINO GenAI on an IR built from sdrt's own tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.bench.contenders import Generation, ReferenceContender, SdrtContender, psnr
from sdrt.bench.plan import Plan, peer_contender, sdrt_contender
from sdrt.bench.suites import get_suite
from sdrt.errors import SdrtError


def _plan(**options):
    return Plan(suite=get_suite("cpu-sd15"), out=None, onnx=None, prompt="x", seed=0, backend_options=options)


def test_contender_specs(tmp_path):
    bf16 = sdrt_contender(tmp_path, "openvino:bf16", _plan(intra_op_num_threads=2))
    assert bf16.name == "sdrt openvino bf16" and bf16.options == {"precision": "bf16", "num_threads": 2}
    assert sdrt_contender(tmp_path, "ort-cpu", _plan()).name == "sdrt ort-cpu"
    autocast = peer_contender(tmp_path, "diffusers:bf16", get_suite("cpu-sd15"))
    assert isinstance(autocast, ReferenceContender) and autocast.kind == "peer" and "autocast" in autocast.name
    with pytest.raises(SdrtError, match="unknown benchmark peer 'comfy'"):
        peer_contender(tmp_path, "comfy", get_suite("cpu-sd15"))


def test_genai_peer_matches_sdrt_on_the_same_weights(tiny_onnx, tmp_path, monkeypatch):
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed")
    pytest.importorskip("openvino_tokenizers", reason="openvino-tokenizers is not installed")
    from sdrt.bench.genai_peer import GenaiContender

    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "cache"))
    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)
    gen = Generation("a red bicycle", 3, 7.5, 32, 32, 1, None, latents)
    peer = GenaiContender(tiny_onnx, "f32")
    peer.prepare()
    assert (peer.ir / "unet" / "openvino_model.xml").is_file() and (peer.ir / "tokenizer" / "openvino_tokenizer.xml").is_file()
    peer.load()
    theirs, times, _ = peer(gen)
    peer.close()
    ours = SdrtContender(tiny_onnx, "ort-cpu")
    ours.load()
    mine, _, _ = ours(gen)
    ours.close()
    assert theirs.shape == mine.shape == (1, 32, 32, 3) and len(times.unet_steps_s) >= 3
    assert psnr(theirs, mine) >= 40.0  # the same image, up to GenAI's uint8 output
