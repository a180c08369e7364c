"""ControlNet folders export with the same `sdrt export` command: a checked graph whose tensors are the spec's,
a manifest that says what base it fits (documented field by field), one-line refusals of what is not supported;
the base's UNet is stored without residual inputs and marked so a ControlNet can add them back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from sdrt import spec
from sdrt.cli import main as sdrt_main
from sdrt.manifest import Manifest
from tests.test_architecture_doc import data_paths, documented


def test_controlnet_manifest_says_what_base_it_fits(tiny_controlnet_onnx: Path, tiny_onnx: Path):
    m = Manifest.load(tiny_controlnet_onnx)
    base = Manifest.load(tiny_onnx)
    assert m.kind == "controlnet" and m.family == "sd" and list(m.components) == ["controlnet"]
    assert m.residuals == base.residuals and m.values["D"] == base.values["D"] and m.values["f"] == base.values["f"]
    assert m.components["controlnet"]["check"]["passed"]
    graph = onnx.load(str(tiny_controlnet_onnx / "controlnet" / "model.onnx"), load_external_data=False)
    comp = m.spec.component("controlnet")
    assert [i.name for i in graph.graph.input] == list(comp.input_names)
    assert [o.name for o in graph.graph.output] == list(comp.output_names)
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert dims["mid_block_residual"] == ["B", 64, "h/4", "w/4"]
    missing = sorted(set(data_paths(json.loads((tiny_controlnet_onnx / "sdrt.json").read_text()))) - documented())
    assert not missing, f"ControlNet sdrt.json fields missing from docs/architecture.md: {missing}"


def test_the_base_unet_is_stored_without_residual_inputs_and_marked(tiny_onnx: Path):
    from sdrt.residual_graph import METADATA_KEY, marked

    graph = onnx.load(str(tiny_onnx / "unet" / "model.onnx"), load_external_data=False)
    assert [i.name for i in graph.graph.input] == list(spec.model_spec("sd").denoiser.input_names)
    marks = json.loads(next(p.value for p in graph.metadata_props if p.key == METADATA_KEY))
    assert list(marks) == list(Manifest.load(tiny_onnx).residuals.names)
    assert marked(tiny_onnx / "unet" / "model.onnx")


@pytest.mark.parametrize("change, message", [
    ({"_class_name": "ControlNetUnionModel"}, "holds a ControlNetUnionModel, not supported yet"),
    ({"global_pool_conditions": True}, "global_pool_conditions (a shuffle-style ControlNet): not supported yet"),
])
def test_unsupported_controlnets_are_one_line(controlnet_export, tmp_path, capsys, change, message):
    onnx_folder = controlnet_export("tiny-controlnet")
    source = Path(Manifest.load(onnx_folder).data["source"]["path"])
    src = tmp_path / "src"
    shutil.copytree(source, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **change}))
    code = sdrt_main(["export", "--model", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_sdrt_preset_writes_a_controlnet_folder(tmp_path, capsys):
    import diffusers

    out = tmp_path / "cn"
    assert sdrt_main(["preset", "tiny-controlnet", "--out", str(out), "--seed", "3"]) == 0
    assert "wrote ControlNet preset tiny-controlnet (seed 3)" in capsys.readouterr().out
    model = diffusers.ControlNetModel.from_pretrained(out)
    assert float(model.controlnet_mid_block.weight.abs().max()) > 0  # zero convolutions seeded, not zero


def test_sdrt_preset_writes_the_trained_shapes_controlnet(tmp_path, capsys):
    """The shipped weights, for the shapes UNet (same layout: `from_unet`), zero convolutions trained."""
    import diffusers

    from sdrt.export.presets import build_components

    out = tmp_path / "cn"
    assert sdrt_main(["preset", "shapes-controlnet", "--out", str(out)]) == 0
    assert "wrote ControlNet preset shapes-controlnet (trained weights)" in capsys.readouterr().out
    model = diffusers.ControlNetModel.from_pretrained(out)
    assert float(model.controlnet_mid_block.weight.abs().max()) > 0
    unet = build_components("shapes")["unet"]
    ours = model.state_dict()
    shared = [k for k in unet.state_dict() if k in ours]
    assert shared and all(ours[k].shape == unet.state_dict()[k].shape for k in shared)


def test_missing_trained_controlnet_weights_are_one_line(tmp_path, monkeypatch, capsys):
    from sdrt.export import controlnet_presets

    monkeypatch.setattr(controlnet_presets, "trained_folder", lambda name: tmp_path / name)
    assert sdrt_main(["preset", "shapes-controlnet", "--out", str(tmp_path / "cn")]) == 2
    err = capsys.readouterr().err
    assert "shapes-controlnet preset's weights are missing" in err and "train_shapes_controlnet" in err
    assert not (tmp_path / "cn").exists()
