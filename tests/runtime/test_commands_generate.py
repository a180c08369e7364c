"""`sdrt generate` on the tiny presets: txt2img, img2img, both inpainting kinds, PNG metadata, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main
from sdrt.runtime.images import read_png_text


def _generate(*argv):
    return main(["generate", "--steps", "2", "--height", "32", "--width", "32", "--quiet", *map(str, argv)])


def test_txt2img_writes_one_png_per_image_with_parameters(tiny_onnx, tmp_path):
    out = tmp_path / "out"
    rc = _generate("--model", tiny_onnx, "--prompt", "a red bicycle", "--negative-prompt", "blurry",
                   "--seed", 42, "--num-images", 2, "--scheduler", "euler", "--out", out)
    assert rc == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00001-42-0.png", "00001-43-1.png"]  # image i: seed + i
    text = read_png_text(files[1])
    lines = text["parameters"].splitlines()
    assert lines[0] == "a red bicycle" and lines[1] == "Negative prompt: blurry"
    assert "Steps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 43, Size: 32x32" in lines[2]
    assert "Batch index: 1" in lines[2]
    meta = json.loads(text["sdrt"])
    assert meta["seed"] == 43 and meta["seeds"] == [42, 43] and meta["index"] == 1 and meta["backend"] == "ort-cpu"
    # a second run numbers its files after the first: nothing is overwritten
    assert _generate("--model", tiny_onnx, "--prompt", "x", "--seed", 42, "--out", out) == 0
    assert (out / "00002-42-0.png").is_file()
    same = np.asarray(Image.open(out / "00002-42-0.png"))
    assert same.shape == (32, 32, 3)


def _write(path, array):
    Image.fromarray(array).save(path)
    return path


def test_img2img_and_inpainting(tiny_onnx, tiny_inpaint_onnx, tmp_path):
    rng = np.random.default_rng(0)
    image = _write(tmp_path / "in.png", (rng.random((32, 48, 3)) * 255).astype(np.uint8))
    mask_array = np.zeros((32, 48), np.uint8)
    mask_array[8:24, 16:40] = 255
    mask = _write(tmp_path / "mask.png", mask_array)
    for model, extra, label in ((tiny_onnx, [], "img2img"), (tiny_onnx, ["--mask", mask], "inpaint4"),
                                (tiny_inpaint_onnx, ["--mask", mask], "inpaint9")):
        out = tmp_path / label
        rc = main(["generate", "--model", str(model), "--prompt", "a cat", "--steps", "4", "--strength", "0.75",
                   "--image", str(image), *map(str, extra), "--seed", "3", "--out", str(out), "--quiet"])
        assert rc == 0, label
        (png,) = out.glob("*.png")
        assert Image.open(png).size == (48, 32)  # the input image's size by default
        assert "Denoising strength: 0.75" in read_png_text(png)["parameters"]
        assert json.loads(read_png_text(png)["sdrt"])["mode"] == ("img2img" if label == "img2img" else "inpaint")


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "num_inference_steps (--steps) 0"),
    (["--guidance-scale", "nan"], "guidance_scale nan"),
    (["--strength", "2", "--image", "IMAGE"], "strength 2.0"),
    (["--height", "4"], "outside the sizes"),
    (["--image", "/no/such.png"], "/no/such.png does not exist"),
    (["--backend", "nonsense"], "unknown backend"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_onnx, tmp_path, capsys, argv, message):
    image = _write(tmp_path / "i.png", np.zeros((32, 32, 3), np.uint8))
    argv = [str(image) if a == "IMAGE" else a for a in argv]
    rc = main(["generate", "--model", str(tiny_onnx), "--prompt", "x", "--height", "32", "--width", "32",
               "--quiet", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_model_folder_without_manifest(tmp_path, capsys):
    rc = main(["generate", "--model", str(tmp_path), "--prompt", "x", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no sdrt.json" in err


def test_cuda_graph_needs_a_gpu_backend(tiny_onnx, tmp_path, capsys):
    rc = _generate("--model", tiny_onnx, "--prompt", "x", "--backend", "ort-cpu", "--cuda-graph",
                   "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 2 and "--cuda-graph needs a GPU backend" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
