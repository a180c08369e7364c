"""`sdrt generate` on tiny-sd3: the SD3 flags, PNG metadata, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest

from sdrt.cli import main
from sdrt.runtime.images import read_png_text


def _generate(model, out, *argv):
    return main(["generate", "--model", str(model), "--steps", "2", "--guidance-scale", "5", "--quiet",
                 "--backend", "ort-cpu", "--out", str(out), *map(str, argv)])


def test_txt2img_with_the_t5_prompt_and_length(tiny_sd3_onnx, tmp_path):
    out = tmp_path / "out"
    rc = _generate(tiny_sd3_onnx, out, "--prompt", "a red bicycle", "--prompt-3", "a photo of a bicycle",
                   "--negative-prompt", "blurry", "--max-sequence-length", 32, "--seed", 5, "--height", 48,
                   "--width", 64)
    assert rc == 0
    (png,) = out.glob("*.png")
    text = read_png_text(png)
    assert "Sampler: Euler" in text["parameters"] and "Size: 64x48" in text["parameters"]
    meta = json.loads(text["sdrt"])
    assert meta["max_sequence_length"] == 32 and meta["prompt_3"] == "a photo of a bicycle"
    assert meta["scheduler"] == "FlowMatchEulerDiscreteScheduler" and meta["mode"] == "txt2img"


def test_heun_by_name(tiny_sd3_onnx, tmp_path):
    out = tmp_path / "out"
    assert _generate(tiny_sd3_onnx, out, "--prompt", "x", "--scheduler", "Heun", "--seed", 1) == 0
    meta = json.loads(read_png_text(next(out.glob("*.png")))["sdrt"])
    assert meta["scheduler"] == "FlowMatchHeunDiscreteScheduler"


@pytest.mark.parametrize("argv, message", [
    (["--height", "66"], "transformer needs latent sizes that are multiples of 2"),  # the patch size
    (["--height", "256"], "outside the sizes this model supports"),  # past the position-embedding grid
    (["--max-sequence-length", "600"], "max_sequence_length 600 is above this model's 512"),
    (["--max-sequence-length", "0"], "max_sequence_length 0 must be a whole number"),
    (["--scheduler", "dpmpp_2m"], "not one for flow-matching models"),
    (["--original-size", "64", "64"], "original_size is not an argument of SD3 pipelines"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_sd3_onnx, tmp_path, capsys, argv, message):
    rc = _generate(tiny_sd3_onnx, tmp_path / "o", "--prompt", "x", *argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


def test_prompt_3_without_t5_is_refused(tiny_sd3_no_t5_onnx, tmp_path, capsys):
    rc = _generate(tiny_sd3_no_t5_onnx, tmp_path / "o", "--prompt", "x", "--prompt-3", "for T5")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "prompt_3 feeds the T5 encoder" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))
    # without prompt_3 the same model runs, on zeros in T5's place (as diffusers does)
    assert _generate(tiny_sd3_no_t5_onnx, tmp_path / "ok", "--prompt", "x", "--seed", 1) == 0


def test_guidance_off_ignores_the_negative_prompt_as_diffusers_does(tiny_sd3_onnx, tmp_path, capsys):
    """SD3 runs classifier-free guidance only above 1 (diffusers' do_classifier_free_guidance): a warning."""
    rc = main(["generate", "--model", str(tiny_sd3_onnx), "--prompt", "x", "--negative-prompt", "y",
               "--guidance-scale", "1", "--steps", "2", "--quiet", "--backend", "ort-cpu", "--out",
               str(tmp_path / "o")])
    assert rc == 0 and "negative prompt is ignored" in capsys.readouterr().err
