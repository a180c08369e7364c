"""Other exports: the CLI on a preset name, fp16 graphs, the SD 2.1-style and inpainting presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from sdrt.cli import main
from sdrt.manifest import Manifest


def input_types(folder: Path, component: str) -> dict[str, int]:
    model = onnx.load(str(folder / component / "model.onnx"), load_external_data=False)
    return {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


def test_cli_exports_a_preset_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "te"
    assert main(["export", "--model", "tiny", "--out", str(out), "--components", "text_encoder"]) == 0
    captured = capsys.readouterr()
    assert "loaded preset tiny (StableDiffusionPipeline)" in captured.out
    assert "text_encoder: exported in" in captured.out and "check max rel error" in captured.out
    assert f"wrote {out}" in captured.out
    assert captured.err == ""
    m = Manifest.load(out)
    assert m.data["source"] == {**m.data["source"], "kind": "preset", "name": "tiny", "path": None}
    assert list(m.components) == ["text_encoder"] and m.components["text_encoder"]["check"]["passed"]
    assert m.sizes.latent_multiple == 4  # unet not exported: the architecture's rule, not probed
    assert "not probed" in m.data["sizes"]["rule"]


def test_fp16(onnx_export) -> None:
    folder = onnx_export("tiny", "fp16", ("text_encoder", "unet"))
    m = Manifest.load(folder)
    for name in ("text_encoder", "unet"):
        entry = m.components[name]
        assert entry["precision"] == "fp16" and entry["check"]["passed"]
        assert entry["check"]["threshold"]["max_rel"] == 3e-2
        assert 0 < entry["check"]["max_rel_error"] < 3e-2
    unet = input_types(folder, "unet")
    assert unet["sample"] == unet["encoder_hidden_states"] == unet["out_sample"] == onnx.TensorProto.FLOAT16
    assert unet["timestep"] == onnx.TensorProto.FLOAT  # float32 in every graph, as the spec says
    text = input_types(folder, "text_encoder")
    assert text["input_ids"] == onnx.TensorProto.INT32 and text["last_hidden_state"] == onnx.TensorProto.FLOAT16
    initializers = onnx.load(str(folder / "unet" / "model.onnx")).graph.initializer
    big = [t for t in initializers if int(np.prod(t.dims)) > 1000]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert m.sizes.latent_multiple == 1  # the probe passes at fp16 too


def test_tiny_sd21(tiny_sd21_onnx: Path) -> None:
    m = Manifest.load(tiny_sd21_onnx)
    assert m.pipeline["prediction_type"] == "v_prediction"
    assert all(c["check"]["passed"] for c in m.components.values()) and len(m.components) == 4
    assert m.sizes.latent_multiple == 1


def test_tiny_inpaint(tiny_inpaint_onnx: Path) -> None:
    m = Manifest.load(tiny_inpaint_onnx)
    assert m.pipeline["class_name"] == "StableDiffusionInpaintPipeline"
    assert m.pipeline["inpainting"] is True and m.pipeline["unet_in_channels"] == 9
    model = onnx.load(str(tiny_inpaint_onnx / "unet" / "model.onnx"), load_external_data=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 9
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4
    assert all(c["check"]["passed"] for c in m.components.values()) and len(m.components) == 4


def test_torchscript_fallback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ts"
    code = main(["export", "--model", "tiny", "--out", str(out), "--components", "text_encoder",
                 "--exporter", "torchscript", "--opset", "17"])
    assert code == 0, capsys.readouterr().err
    m = Manifest.load(out)
    assert m.data["exporter"]["method"] == "torchscript" and m.data["exporter"]["opset"] == 17
    opsets = {o.domain: o.version for o in onnx.load(str(out / "text_encoder" / "model.onnx")).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17
    assert m.components["text_encoder"]["check"]["passed"]
    assert input_types(out, "text_encoder")["input_ids"] == onnx.TensorProto.INT32
