"""Hostile and unusual inputs: each is one line (or converted properly), never a traceback or a silent change."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main
from sdrt.errors import SdrtError, SdrtWarning
from sdrt.manifest import SizeRule
from sdrt.runtime import images as imageio
from sdrt.runtime.images import read_png_text

CALL = dict(num_inference_steps=1, height=16, width=16, output_type="np", seed=0)


def _generate(model, out, *argv):
    return main(["generate", "--model", str(model), "--steps", "1", "--height", "16", "--width", "16",
                 "--seed", "1", "--out", str(out), "--quiet", *map(str, argv)])


def test_invalid_utf8_prompt_from_argv_is_one_line(tiny_onnx, tmp_path, capsys):
    prompt = b"a caf\xe9 at night".decode("utf-8", "surrogateescape")  # what Python makes of latin-1 argv bytes
    assert _generate(tiny_onnx, tmp_path / "o", "--prompt", prompt) == 2
    err = capsys.readouterr().err
    assert "prompt is not valid UTF-8 (byte b'\\xe9' at character 5)" in err and err.count("\n") == 1


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10000 px: past the warning, below the hard error
    with pytest.raises(SdrtError, match="too large to open safely") as info:
        imageio.load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # past 2x: PIL's DecompressionBombError
    with pytest.raises(SdrtError, match="too large to open safely"):
        imageio.load_image(path)
    assert "MAX_IMAGE_PIXELS" in str(info.value)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    loaded = np.asarray(imageio.load_image(tmp_path / "16.png"))
    np.testing.assert_array_equal(loaded, np.round(ramp / 65535 * 255).astype(np.uint8))
    pixels = imageio.images_to_array([imageio.load_image(tmp_path / "16.png")])
    assert pixels.min() == -1.0 and 0.9 < pixels.max() <= 1.0 and np.median(pixels) < 0.1  # not all white
    from_array = np.asarray(imageio.load_image(ramp))
    np.testing.assert_array_equal(from_array, loaded)


def test_palette_image_keeps_its_colours(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = (200, 30, 10)
    rgb[4:] = (10, 40, 220)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    pixels = imageio.images_to_array([imageio.load_image(tmp_path / "p.png")])
    np.testing.assert_allclose(pixels[0].transpose(1, 2, 0), rgb / 127.5 - 1, atol=1e-6)


def test_folder_as_image(tmp_path):
    with pytest.raises(SdrtError, match="is a folder, not an image file"):
        imageio.load_image(tmp_path)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_size_hint_is_a_size_that_runs(size):
    rule = SizeRule(1, 3, 256, 2)  # tiny: latent 3..256, f = 2 -> 6..512 px, even
    with pytest.raises(SdrtError) as info:
        rule.check_image_size(size, 32)
    hint = int(str(info.value).rsplit("use ", 1)[1].split()[0])
    rule.check_image_size(hint, 32)  # the hint itself is accepted


def test_negative_prompt_without_guidance_warns(pipelines):
    pipe = pipelines("tiny")
    with pytest.warns(SdrtWarning, match="negative prompt is ignored"):
        pipe("a cat", negative_prompt="blurry", guidance_scale=1.0, **CALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe("a cat", negative_prompt="blurry", guidance_scale=2.0, **CALL)


def test_cli_warnings_are_one_sdrt_line(tiny_onnx, tmp_path, capsys):
    long_prompt = " ".join(["an extremely detailed painting of a lighthouse"] * 400)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert _generate(tiny_onnx, tmp_path / "o", "--prompt", long_prompt, "--negative-prompt", "x",
                         "--guidance-scale", "1") == 0
    lines = capsys.readouterr().err.splitlines()
    warned = [line for line in lines if line.startswith("sdrt: warning:")]
    assert len(warned) == 2 and len(lines) == 2, lines
    assert all(len(line) < 300 for line in warned)
    assert any("tokens were dropped" in line for line in warned)


@pytest.mark.parametrize("scheduler, name, sampler", [
    ("dpmpp_2m", "dpmpp_2m", "DPM++ 2M"), ("dpmpp_2m_karras", "dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("dpmpp_sde", "dpmpp_sde", "DPM++ 2M SDE"), ("euler_a", "euler_a", "Euler a"),
    ("PNDMScheduler", "pndm", "PLMS"),  # the model's config skips PRK steps: PLMS
])
def test_metadata_names_the_exact_scheduler(pipelines, scheduler, name, sampler):
    params = pipelines("tiny")("a cat", **CALL, scheduler=scheduler).parameters
    assert params["scheduler_name"] == name and params["sampler"] == sampler
    assert params["precision"]["unet"] == "fp32" and len(params["model_hash"]) == 10


def test_png_records_hashes_sampler_and_its_own_seed(tiny_onnx, tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "o"
    assert _generate(tiny_onnx, out, "--prompt", "a cat", "--image", image, "--strength", 1, "--scheduler", "dpmpp_2m_karras",
                     "--num-images", "2") == 0
    second = read_png_text(sorted(out.glob("*.png"))[1])
    assert "Sampler: DPM++ 2M Karras" in second["parameters"] and "Seed: 2," in second["parameters"]
    assert "Model hash: " in second["parameters"]
    meta = json.loads(second["sdrt"])
    assert meta["scheduler_name"] == "dpmpp_2m_karras" and meta["seed"] == 2 and len(meta["image_hash"]) == 16
    again = tmp_path / "again.png"
    Image.open(image).save(again.with_suffix(".bmp"))
    assert imageio.images_to_array([imageio.load_image(again.with_suffix(".bmp"))]).shape == (1, 3, 16, 16)


def test_a_config_no_name_fits_keeps_its_class_name():
    from sdrt.runtime.schedulers import get_scheduler, registry_name

    assert registry_name(get_scheduler({"_class_name": "PNDMScheduler", "skip_prk_steps": False})) is None
    sde_karras = {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++",
                  "use_karras_sigmas": True}
    assert registry_name(get_scheduler(sde_karras)) is None
