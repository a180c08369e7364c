"""Leaving SD3's T5 unloaded at run time (`Pipeline.load(..., without=["text_encoder_3"])`, `--no-t5`): the same
pixels as a folder exported without T5, and one line for what cannot be left out."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.runtime.pipeline import Pipeline


def _image(pipe, prompt="a red bicycle"):
    return pipe(prompt, num_inference_steps=2, guidance_scale=5.0, height=48, width=64, seed=3,
                output_type="np").images


def test_without_t5_is_the_folder_exported_without_it(tiny_sd3_onnx, tiny_sd3_no_t5_onnx):
    with_t5 = Pipeline.load(tiny_sd3_onnx, backend="ort-cpu")
    dropped = Pipeline.load(tiny_sd3_onnx, backend="ort-cpu", without=["text_encoder_3"])
    exported = Pipeline.load(tiny_sd3_no_t5_onnx, backend="ort-cpu")
    try:
        assert "text_encoder_3" in with_t5.engines and "text_encoder_3" not in dropped.engines
        assert not dropped.model_spec.has("text_encoder_3") and "t5" not in dropped.manifest.pipeline["variants"]
        a, b, full = _image(dropped), _image(exported), _image(with_t5)
        np.testing.assert_allclose(a, b, atol=1e-5)  # zeros in T5's place, as the folder without it
        assert np.abs(a - full).max() > 1e-2  # and T5 really was left out
    finally:
        for pipe in (with_t5, dropped, exported):
            pipe.close()
    # the folder's own sdrt.json is not touched
    assert "text_encoder_3" in Manifest.load(tiny_sd3_onnx).components


def test_only_optional_components_can_be_left_out(tiny_sd3_onnx, tiny_onnx):
    with pytest.raises(SdrtError, match=r"cannot run without text_encoder .*optional components of this sd3 "
                                        r"model: text_encoder_3\)"):
        Manifest.load(tiny_sd3_onnx).without(["text_encoder"])
    with pytest.raises(SdrtError, match=r"cannot run without text_encoder_3 .*optional components .*: none\)"):
        Manifest.load(tiny_onnx).without(["text_encoder_3"])


def test_leaving_out_what_the_folder_lacks_is_a_no_op(tiny_sd3_no_t5_onnx):
    manifest = Manifest.load(tiny_sd3_no_t5_onnx)
    assert manifest.without(["text_encoder_3"]).components == manifest.components


def test_no_t5_flag(tiny_sd3_onnx, tmp_path, capsys):
    argv = ["generate", "--model", str(tiny_sd3_onnx), "--steps", "2", "--quiet", "--backend", "ort-cpu",
            "--prompt", "x", "--no-t5", "--seed", "1"]
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    assert len(list((tmp_path / "ok").glob("*.png"))) == 1
    capsys.readouterr()
    rc = main([*argv, "--prompt-3", "for T5", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "prompt_3 feeds the T5 encoder" in err and len(err.splitlines()) == 1, err
