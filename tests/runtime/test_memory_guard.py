"""The memory guard: the ORT CPU attention estimate, the refusal before a call, its one line."""

from __future__ import annotations

import pytest

from sdrt.engines.attention_memory import unfused_attention_bytes
from sdrt.errors import SdrtError
from sdrt.runtime import memory_guard

TINY = {"attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}


def test_estimate_matches_the_buffer_onnxruntime_asked_for():
    # tiny at 512x512 without guidance: ORT asked for "a buffer of size 68719476736" (measured)
    assert unfused_attention_bytes(TINY, 1, 256, 256) == 68719476736
    assert unfused_attention_bytes({**TINY, "attention_head_dim": [5, 10, 20]}, 2, 64, 64) == \
        max(2 * 5 * 4096 ** 2 * 4, 2 * 10 * 1024 ** 2 * 4)


def test_refusal_names_size_estimate_and_what_fits():
    with pytest.raises(SdrtError) as info:
        memory_guard.check_fits("ort-cpu", unfused_attention_bytes, TINY, 1, 512, 512, 2, 1, available=16 * 2**30)
    message = str(info.value)
    assert "512x512" in message and "64.0 GiB" in message and "16.0 GiB is available" in message
    side = int(message.split("use at most about ")[1].split("x")[0])
    assert unfused_attention_bytes(TINY, 1, side // 2, side // 2) <= 16 * 2**30
    memory_guard.check_fits("ort-cpu", unfused_attention_bytes, TINY, 1, 64, 64, 2, 1, available=16 * 2**30)  # fits: no error
    memory_guard.check_fits("tensorrt", None, TINY, 1, 512, 512, 2, 1, available=1)  # no estimate: no refusal


def test_pipeline_refuses_before_running_the_unet(tiny_onnx, monkeypatch):
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(tiny_onnx, "ort-cpu", graph_rewrites=())  # ONNX Runtime's own Attention kernel
    try:
        monkeypatch.setattr(memory_guard, "available_bytes", lambda: 2**20)  # 1 MiB free
        ran = []
        monkeypatch.setattr(pipe.engine("unet"), "run", lambda *a, **k: ran.append(1))
        with pytest.raises(SdrtError, match="needs about .* GiB for ort-cpu's attention scores alone"):
            pipe("a cat", num_inference_steps=1, height=64, width=64, seed=0)
        assert not ran
    finally:
        pipe.close()


def test_no_refusal_where_attention_is_memory_efficient(pipelines, monkeypatch):
    """ort-cpu's default graph has MultiHeadAttention (no [S, S] scores): the estimate does not apply."""
    pipe = pipelines("tiny")
    assert pipe.backend.attention_bytes(TINY, 1, 256, 256) is None  # the estimate does not apply
    monkeypatch.setattr(memory_guard, "available_bytes", lambda: 2**20)
    out = pipe("a cat", num_inference_steps=1, height=64, width=64, seed=0, output_type="np")
    assert out.images.shape[1:3] == (64, 64)
