"""ControlNet bad input: one line naming the problem and the fix, before any engine runs; the CLI's flags,
PNG metadata and exit code 2; preprocessors; LoRA alongside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main as sdrt_main
from sdrt.errors import SdrtError
from sdrt.runtime import Pipeline, preprocessors
from sdrt.runtime.images import read_png_text


@pytest.fixture(scope="module")
def controlled(tiny_onnx, tiny_controlnet_onnx):
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=tiny_controlnet_onnx)
    yield pipe
    pipe.close()


def _control(h: int = 32, w: int = 32) -> np.ndarray:
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def _copy_with(folder: Path, tmp_path: Path, name: str, change) -> Path:
    copy = tmp_path / name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("engines"))
    data = json.loads((copy / "sdrt.json").read_text())
    change(data)
    (copy / "sdrt.json").write_text(json.dumps(data))
    return copy


CALL = dict(num_inference_steps=2, height=32, width=32)


@pytest.mark.parametrize("arguments, message", [
    ({}, "pass control_image="),
    ({"control_image": [[_control()], [_control()]]}, "2 control images for 1 ControlNets"),
    ({"control_image": [_control(), _control()]}, "2 control images for 1 prompts"),  # one ControlNet: per prompt
    ({"control_image": _control(), "controlnet_conditioning_scale": [0.5, 0.5]}, "has 2 values for 1 ControlNets"),
    ({"control_image": _control(), "control_guidance_start": 0.6, "control_guidance_end": 0.4},
     "control_guidance_start 0.6 must be below control_guidance_end 0.4"),
    ({"control_image": _control(), "control_guidance_start": -0.1}, "control_guidance_start -0.1 is out of range"),
    ({"control_image": _control(), "control_guidance_end": 1.5}, "control_guidance_end 1.5 is out of range"),
    ({"control_image": _control(), "controlnet_conditioning_scale": "strong"}, "is not a number"),
    ({"prompt": ["a", "b", "c"], "control_image": [[_control(), _control()]]}, "2 control images for 3 prompts"),
])
def test_bad_control_arguments_are_one_line(controlled, arguments, message):
    prompt = arguments.pop("prompt", "a cat")
    with pytest.raises(SdrtError, match=message) as error:
        controlled(prompt, **CALL, **arguments)
    assert "\n" not in str(error.value)


def test_control_image_without_controlnet(tiny_onnx):
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    with pytest.raises(SdrtError, match="has no ControlNet: load one with Pipeline.load"):
        pipe("a cat", control_image=_control(), **CALL)


def test_controlnet_that_does_not_fit_fails_at_load(tiny_onnx, tiny_controlnet_onnx, controlnet_export, tmp_path):
    with pytest.raises(SdrtError, match="is for SDXL base .* bases, .* is an SD 1.x/2.x"):
        Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=controlnet_export("tiny-sdxl-controlnet"))
    wide = _copy_with(tiny_controlnet_onnx, tmp_path, "wide",
                      lambda d: d["pipeline"].update(text_hidden_size=768))
    with pytest.raises(SdrtError, match="has cross-attention width 768, the base .* has 32"):
        Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=wide)
    other = _copy_with(tiny_controlnet_onnx, tmp_path, "other-layout",
                       lambda d: d["pipeline"]["residuals"].update(mid=[128, 4]))
    with pytest.raises(SdrtError, match="mid block 128 channels at 1/4; the base's UNet takes"):
        Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=other)
    with pytest.raises(SdrtError, match="is a model folder, not a ControlNet"):
        Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=tiny_onnx)


def test_old_export_without_residual_marks_names_the_reexport(tiny_onnx, tiny_controlnet_onnx, tmp_path):
    old = _copy_with(tiny_onnx, tmp_path, "old", lambda d: d["pipeline"].pop("residuals"))
    plain = Pipeline.load(old, backend="ort-cpu")  # it still loads and runs without a ControlNet
    assert plain("a cat", **CALL, output_type="np").images.shape == (1, 32, 32, 3)
    with pytest.raises(SdrtError, match="exported by an older sdrt .* export the model again with this sdrt"):
        Pipeline.load(old, backend="ort-cpu", controlnet=tiny_controlnet_onnx)


def test_residual_graph_is_made_once_under_engines(controlled, tiny_onnx, tiny_controlnet_onnx):
    # (other tests sharing the cached folder make their own derived graphs, e.g. from an IP-Adapter's UNet)
    graphs = tiny_onnx / "engines" / "graphs"
    path = controlled.manifest.onnx_path("unet")
    assert path.parent.parent == graphs and path.parent.name.startswith("unet-residuals-")
    before = sorted(graphs.glob("unet-residuals-*/model.onnx"))
    again = Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=tiny_controlnet_onnx)
    try:
        assert again.manifest.onnx_path("unet") == path  # the same graph, not written again
    finally:
        again.close()
    assert sorted(graphs.glob("unet-residuals-*/model.onnx")) == before
    assert "down_block_residual_0" in controlled.manifest.spec.denoiser.input_names
    from sdrt.manifest import Manifest
    from sdrt.runtime.metadata import model_hash

    assert model_hash(controlled.manifest) == model_hash(Manifest.load(tiny_onnx))  # the export's, not the rewrite's


def test_loras_apply_alongside_a_controlnet(controlled, tiny_onnx, tmp_path):
    from tests.runtime.lora.helpers import map_shapes, write_kohya

    lora = write_kohya(tmp_path / "style.safetensors", map_shapes(tiny_onnx), magnitude=1.0)
    call = dict(**CALL, control_image=_control(), seed=4, output_type="np")
    before = controlled("a cat", **call).images
    controlled.set_loras([(lora, 1.0)])
    try:
        changed = controlled("a cat", **call).images
    finally:
        controlled.set_loras([])
    assert np.abs(changed - before).max() > 1e-3
    assert np.array_equal(controlled("a cat", **call).images, before)


def test_preprocessors():
    picture = Image.fromarray(np.pad(np.full((16, 16, 3), 255, np.uint8), ((8, 8), (8, 8), (0, 0))))
    edges = np.asarray(preprocessors.run("canny", picture, low=50, high=100))
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[16, 16].max() == 0 and edges[0, 0].max() == 0 and edges[6:10, 16].max() == 255  # the border only
    assert np.asarray(preprocessors.run("invert", picture))[0, 0].tolist() == [255, 255, 255]
    assert preprocessors.run("canny", picture, resolution=64).size == (64, 64)
    with pytest.raises(SdrtError, match="unknown preprocessor 'sobel': choose one of none, canny"):
        preprocessors.get("sobel")
    with pytest.raises(SdrtError, match="depth_midas preprocessor runs a MiDaS depth model .* pass it with "
                                        "preprocessor none"):
        preprocessors.get("depth_midas")


def test_cli_controlnet_writes_unit_metadata(tiny_onnx, tiny_controlnet_onnx, tmp_path, capsys):
    control = tmp_path / "edges.png"
    Image.fromarray(_control(40, 40)).save(control)
    out = tmp_path / "out"
    code = sdrt_main(["generate", "--model", str(tiny_onnx), "--prompt", "a cat", "--steps", "2", "--height", "32",
                      "--width", "32", "--backend", "ort-cpu", "--seed", "1", "--out", str(out), "--quiet",
                      "--controlnet", f"{tiny_controlnet_onnx}:0.5", "--control-image", str(control),
                      "--preprocess", "canny", "--control-end", "0.5"])
    assert code == 0
    (png,) = out.glob("*.png")
    text = read_png_text(png)
    assert 'ControlNet 0: "Module: canny, Model: ' in text["parameters"]
    assert "Weight: 0.5, Guidance Start: 0.0, Guidance End: 0.5, Control Mode: Balanced" in text["parameters"]
    assert json.loads(text["sdrt"])["controlnets"][0]["weight"] == 0.5


@pytest.mark.parametrize("flags, message", [
    (["--control-image", "X.png"], "need --controlnet DIR"),
    (["--controlnet", "CN"], "0 --control-image for 1 --controlnet"),
    (["--controlnet", "CN", "--control-image", "C.png", "--preprocess", "sobel"], "unknown preprocessor 'sobel'"),
    (["--controlnet", "CN", "--control-image", "C.png", "--control-start", "0.1", "--control-start", "0.2"],
     "2 --control-start values for 1 --controlnet"),
])
def test_cli_bad_controlnet_flags_exit_2(tiny_onnx, tiny_controlnet_onnx, tmp_path, capsys, flags, message):
    Image.fromarray(_control()).save(tmp_path / "C.png")
    flags = [str(tiny_controlnet_onnx) if f == "CN" else str(tmp_path / f) if f.endswith(".png") else f
             for f in flags]
    out = tmp_path / "out"
    code = sdrt_main(["generate", "--model", str(tiny_onnx), "--prompt", "a cat", "--steps", "2", "--backend",
                      "ort-cpu", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not list(out.glob("*.png"))
