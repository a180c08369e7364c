"""Low-memory mode (sdrt.runtime.low_memory): the text encoders and the denoiser take turns in memory.

The images are bit for bit those of a pipeline holding every engine; between calls only one group is
loaded; "auto" decides from the engines' bytes against the memory available; LoRAs are refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.runtime import Pipeline, low_memory
from tests.runtime.lora import sd3_files


@pytest.mark.parametrize("fixture,text", [("tiny_sd3_onnx", ("text_encoder", "text_encoder_2", "text_encoder_3")),
                                          ("tiny_onnx", ("text_encoder",))])
def test_low_memory_gives_the_same_images(fixture, text, request):
    folder = request.getfixturevalue(fixture)
    size = 64 if fixture == "tiny_sd3_onnx" else 32
    call = dict(num_inference_steps=2, height=size, width=size, output_type="np")
    whole = Pipeline.load(folder, "ort-cpu", low_memory="off")
    lean = Pipeline.load(folder, "ort-cpu", low_memory="on")
    assert set(whole.engines) >= {*text, whole.denoiser} and set(lean.engines) == {"vae_decoder"}
    for prompt, seed in (("a cat", 1), ("a dog", 2)):
        assert np.array_equal(lean(prompt, seed=seed, **call).images, whole(prompt, seed=seed, **call).images)
        assert lean.denoiser in lean.engines and not set(text) & set(lean.engines)


def test_auto_decides_from_the_memory_available(tiny_sd3_onnx, monkeypatch, capsys):
    manifest = Manifest.load(tiny_sd3_onnx)
    needed = low_memory.engine_bytes(manifest, ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer",
                                                "vae_decoder"))
    monkeypatch.setattr(low_memory, "available_bytes", lambda: 10 * needed)
    assert low_memory.decide(manifest, "auto") is False
    monkeypatch.setattr(low_memory, "available_bytes", lambda: needed)
    assert low_memory.decide(manifest, None) is True
    assert "low-memory mode" in capsys.readouterr().err
    assert low_memory.decide(manifest, "off") is False and low_memory.decide(manifest, True) is True
    with pytest.raises(SdrtError, match="low_memory 'sometimes' is not one of auto, on, off"):
        low_memory.decide(manifest, "sometimes")


def test_loras_are_refused_in_low_memory_mode(tiny_sd3_onnx, tmp_path, capsys):
    pipe = Pipeline.load(tiny_sd3_onnx, "ort-cpu", low_memory="on")
    lora = sd3_files.write_prefixed(tmp_path / "x.safetensors", {("transformer", "proj_out"): (
        np.ones((64, 2), np.float32), np.ones((2, 16), np.float32))}, "transformer.", underscores=False)
    with pytest.raises(SdrtError, match="low-memory mode"):
        pipe.set_loras([lora])
    code = main(["generate", "--model", str(tiny_sd3_onnx), "--backend", "ort-cpu", "--prompt", "x", "--steps", "1",
                 "--low-memory", "on", "--lora", str(lora), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "low-memory mode" in err
