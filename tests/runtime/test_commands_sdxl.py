"""`sdrt generate` on the SDXL family: the refiner hand-off, the new options, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime import Pipeline


def _generate(*argv) -> int:
    return main(["generate", *map(str, argv), "--backend", "ort-cpu", "--quiet"])


def _one_line(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_base_then_refiner(tiny_sdxl_onnx, tiny_sdxl_refiner_onnx, tmp_path):
    out = tmp_path / "out"
    code = _generate("--model", tiny_sdxl_onnx, "--refiner", tiny_sdxl_refiner_onnx, "--denoising-end", 0.7,
                     "--prompt", "a lighthouse", "--prompt-2", "oil painting", "--steps", 4, "--seed", 3,
                     "--guidance-rescale", 0.5, "--original-size", 128, 128, "--aesthetic-score", 7,
                     "--out", out)
    assert code == 0
    [png] = list(out.glob("*.png"))
    with Image.open(png) as image:
        assert image.size == (64, 64)
        params = json.loads(image.text["sdrt"])
    assert params["denoising_start"] == 0.7 and params["base"]["denoising_end"] == 0.7
    assert params["base"]["prompt_2"] == ["oil painting"] and params["aesthetic_score"] == 7.0
    assert params["base"]["original_size"] == [128, 128] and params["seed"] == 3


def test_sdxl_options_reach_the_pipeline(tiny_sdxl_onnx, tmp_path):
    out = tmp_path / "o"
    assert _generate("--model", tiny_sdxl_onnx, "--prompt", "x", "--steps", 2, "--seed", 1, "--clip-skip", 1,
                     "--crops-coords-top-left", 0, 16, "--out", out) == 0
    with Image.open(next(out.glob("*.png"))) as image:
        params = json.loads(image.text["sdrt"])
    assert params["clip_skip"] == 1 and params["crops_coords_top_left"] == [0, 16]


def test_a_refiner_cannot_draw_from_a_prompt_alone(tiny_sdxl_refiner_onnx, tmp_path, capsys):
    code = _generate("--model", tiny_sdxl_refiner_onnx, "--prompt", "x", "--steps", 2, "--out", tmp_path / "o")
    _one_line(capsys, code, "SDXL refiner", "--image")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_base_and_refiner_of_other_latent_spaces(tiny_sdxl_onnx, tiny_sdxl_refiner_onnx, tmp_path, capsys):
    other = tmp_path / "refiner"
    shutil.copytree(tiny_sdxl_refiner_onnx, other)
    manifest = json.loads((other / "sdrt.json").read_text())
    manifest["pipeline"]["scaling_factor"] = 0.18215
    (other / "sdrt.json").write_text(json.dumps(manifest))
    code = _generate("--model", tiny_sdxl_onnx, "--refiner", other, "--prompt", "x", "--steps", 2,
                     "--out", tmp_path / "o")
    _one_line(capsys, code, "different latent spaces", "scaling_factor")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_denoising_end_outside_the_open_unit_interval(tiny_sdxl_onnx, tiny_sdxl_refiner_onnx, tmp_path, capsys,
                                                      value):
    code = _generate("--model", tiny_sdxl_onnx, "--refiner", tiny_sdxl_refiner_onnx, "--denoising-end", value,
                     "--prompt", "x", "--steps", 2, "--out", tmp_path / "o")
    _one_line(capsys, code, "--denoising-end", "strictly between 0 and 1")


def test_prompt_2_on_an_sd_model(tiny_onnx, tmp_path, capsys):
    code = _generate("--model", tiny_onnx, "--prompt", "x", "--prompt-2", "y", "--steps", 2, "--out", tmp_path / "o")
    _one_line(capsys, code, "prompt_2 is an SDXL argument", "leave prompt_2 out")


@pytest.mark.parametrize("key, value", [("original_size", (64,)), ("crops_coords_top_left", (-1, 0)),
                                        ("target_size", (64.5, 64)), ("original_size", "64x64")])
def test_bad_size_conditioning(tiny_sdxl_onnx, key, value):
    pipe = Pipeline.load(tiny_sdxl_onnx, backend="ort-cpu")
    with pytest.raises(SdrtError, match=f"{key} .* must be two non-negative whole numbers"):
        pipe("x", num_inference_steps=1, **{key: value})


@pytest.mark.parametrize("key, value", [("denoising_start", 0.0), ("denoising_start", 1.0), ("denoising_end", 2)])
def test_bad_denoising_fractions(tiny_sdxl_onnx, key, value):
    pipe = Pipeline.load(tiny_sdxl_onnx, backend="ort-cpu")
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(SdrtError, match=f"{key} .* strictly between 0 and 1"):
        pipe("x", num_inference_steps=2, image=image, **{key: value})


def test_denoising_start_needs_an_image(tiny_sdxl_onnx):
    pipe = Pipeline.load(tiny_sdxl_onnx, backend="ort-cpu")
    with pytest.raises(SdrtError, match="denoising_start continues from an image .* mask_image= .inpainting"):
        pipe("x", num_inference_steps=2, denoising_start=0.5)


def test_clip_skip_needs_the_layer_stack_on_sd(tiny_onnx):
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    with pytest.raises(SdrtError, match="sdrt export --hidden-states"):
        pipe("x", num_inference_steps=1, clip_skip=1)


def test_hand_off_latents_and_python_api(tiny_sdxl_onnx, tiny_sdxl_refiner_onnx):
    from sdrt.runtime import refiner

    base = Pipeline.load(Path(tiny_sdxl_onnx), backend="ort-cpu")
    ref = Pipeline.load(Path(tiny_sdxl_refiner_onnx), backend="ort-cpu")
    out = refiner.generate(base, ref, ["a", "b"], denoising_end=0.75, num_inference_steps=4, seed=5,
                           num_images_per_prompt=2, output_type="np")
    assert out.images.shape == (4, 64, 64, 3) and out.seeds == [5, 6, 7, 8]
    latents = base("a", num_inference_steps=4, seed=5, denoising_end=0.75, output_type="latent").images
    assert latents.shape == (1, 4, 32, 32) and latents.dtype == np.float32
