"""`sdrt generate --ip-adapter DIR --ip-image PNG --ip-scale X`: the PNG records the IP-Adapter (as
sd-webui-controlnet's unit and in the sdrt chunk); bad flags are one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main as sdrt_main
from sdrt.runtime.images import read_png_text


def _picture(path, size=(40, 48)):
    Image.fromarray((np.random.default_rng(2).random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_ip_adapter_writes_its_metadata(tiny_onnx, tiny_controlnet_onnx, tiny_ip_adapter_onnx, tmp_path):
    picture = _picture(tmp_path / "picture.png")
    out = tmp_path / "out"
    code = sdrt_main(["generate", "--model", str(tiny_onnx), "--prompt", "a cat", "--steps", "2", "--height", "32",
                      "--width", "32", "--backend", "ort-cpu", "--seed", "1", "--out", str(out), "--quiet",
                      "--controlnet", f"{tiny_controlnet_onnx}:0.5", "--control-image", str(picture),
                      "--ip-adapter", str(tiny_ip_adapter_onnx), "--ip-image", str(picture), "--ip-scale", "0.6"])
    assert code == 0
    (png,) = out.glob("*.png")
    text = read_png_text(png)
    assert 'ControlNet 0: "Module: none, Model: ' in text["parameters"]  # the ControlNet first, then the IP-Adapter
    assert 'ControlNet 1: "Module: ip-adapter_clip_sd15, Model: src-tiny-ip-adapter-0-' in text["parameters"]
    assert "Weight: 0.6, Guidance Start: 0.0, Guidance End: 1.0" in text["parameters"]
    meta = json.loads(text["sdrt"])["ip_adapter"]
    assert meta["scale"] == 0.6 and meta["module"] == "ip-adapter_clip_sd15"


@pytest.mark.parametrize("flags, message", [
    (["--ip-image", "P.png"], "--ip-image and --ip-scale need --ip-adapter DIR"),
    (["--ip-adapter", "IP"], "--ip-adapter needs its image prompt: pass --ip-image PNG"),
    (["--ip-adapter", "IP", "--ip-image", "missing.png"], "missing.png"),
    (["--ip-adapter", "BASE", "--ip-image", "P.png"], "not an IP-Adapter"),
    (["--ip-adapter", "IP", "--ip-image", "P.png", "--ip-scale", "nan"], "IP-Adapter scale"),
])
def test_cli_bad_ip_adapter_flags_exit_2(tiny_onnx, tiny_ip_adapter_onnx, tmp_path, capsys, flags, message):
    _picture(tmp_path / "P.png")
    named = {"IP": str(tiny_ip_adapter_onnx), "BASE": str(tiny_onnx)}
    flags = [named.get(f) or (str(tmp_path / f) if f.endswith(".png") else f) for f in flags]
    out = tmp_path / "out"
    code = sdrt_main(["generate", "--model", str(tiny_onnx), "--prompt", "a cat", "--steps", "2", "--backend",
                      "ort-cpu", "--height", "32", "--width", "32", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not list(out.glob("*.png"))
