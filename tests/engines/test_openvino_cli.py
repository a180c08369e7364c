"""`sdrt generate --precision` on the tiny preset: recorded in the PNG, refused where it cannot run."""

from __future__ import annotations

import json
import shutil

import pytest

from sdrt.cli import main
from sdrt.runtime.images import read_png_text

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'sdrt[openvino]')")


def _generate(*argv):
    return main(["generate", "--steps", "2", "--height", "32", "--width", "32", "--quiet", "--prompt", "a cat",
                 "--seed", "5", *map(str, argv)])


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_precision_is_recorded_in_the_png(tiny_onnx, tmp_path, precision):
    from sdrt.engines.openvino import device_capabilities, import_openvino

    if precision == "bf16" and "BF16" not in device_capabilities(import_openvino().Core(), "CPU"):
        pytest.skip("this CPU has no bf16 support in OpenVINO")
    model = tmp_path / "model"
    shutil.copytree(tiny_onnx, model, ignore=shutil.ignore_patterns("engines"))
    out = tmp_path / "out"
    assert _generate("--model", model, "--backend", "openvino", "--precision", precision, "--out", out) == 0
    (png,) = out.glob("*.png")
    text = read_png_text(png)
    assert f"Backend: openvino, Precision: {precision}" in text["parameters"]
    meta = json.loads(text["sdrt"])
    assert meta["backend"] == "openvino" and meta["runtime_precision"] == precision


def test_bf16_on_ort_is_one_line_naming_openvino(tiny_onnx, tmp_path, capsys):
    assert _generate("--model", tiny_onnx, "--backend", "ort-cpu", "--precision", "bf16", "--out", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "option of openvino" in err and "Traceback" not in err
