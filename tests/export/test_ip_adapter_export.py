"""IP-Adapter folders (diffusers' load_ip_adapter layout) export with `sdrt export`: two checked graphs whose
tensors are the spec's, a manifest that records the layout a base's UNet must match (documented field by
field), one-line refusals; the UNet rewrite at load (sdrt.ip_graph) adds exactly the IP-Adapter branches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from sdrt.cli import main as sdrt_main
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from tests.test_architecture_doc import data_paths, documented


def test_ip_adapter_manifest_records_its_layout(tiny_ip_adapter_onnx: Path, tiny_onnx: Path):
    m = Manifest.load(tiny_ip_adapter_onnx)
    layout = m.ip_adapter_layout()
    assert m.kind == "ip_adapter" and list(m.components) == ["image_encoder", "image_proj"]
    assert layout.tokens == 4 and layout.cross_attention_dim == Manifest.load(tiny_onnx).values["D"]
    assert layout.widths == (32, 64, 64, 64, 32, 32, 64)  # down 0, down 1, up 1 (x2), up 2 (x2), mid
    assert all(m.components[c]["check"]["passed"] for c in m.components)
    for name in m.components:
        graph = onnx.load(str(tiny_ip_adapter_onnx / name / "model.onnx"), load_external_data=False)
        comp = m.spec.component(name)
        assert [i.name for i in graph.graph.input] == list(comp.input_names)
        assert [o.name for o in graph.graph.output] == list(comp.output_names)
    missing = sorted(set(data_paths(json.loads((tiny_ip_adapter_onnx / "sdrt.json").read_text()))) - documented())
    assert not missing, f"IP-Adapter sdrt.json fields missing from docs/architecture.md: {missing}"


def test_unsupported_ip_adapters_are_one_line(tiny_ip_adapter_onnx, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    source = Path(Manifest.load(tiny_ip_adapter_onnx).data["source"]["path"])
    src = tmp_path / "src"
    shutil.copytree(source, src)
    weights = src / "ip-adapter_sd15.safetensors"
    state = load_file(str(weights))
    state["image_proj.latents"] = np.zeros((1, 16, 32), np.float32)  # IP-Adapter Plus: a resampler
    del state["image_proj.proj.weight"]
    save_file(state, str(weights))
    code = sdrt_main(["export", "--model", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "IP-Adapter Plus" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_unet_rewrite_adds_one_branch_per_cross_attention(tiny_onnx, tiny_ip_adapter_onnx, tmp_path):
    import onnxruntime as ort

    from sdrt.ip_graph import add_ip_inputs, cross_attentions

    base = Manifest.load(tiny_onnx)
    layout = Manifest.load(tiny_ip_adapter_onnx).ip_adapter_layout()
    source = base.onnx_path("unet")
    modules = [m for m, _ in cross_attentions(onnx.load(str(source), load_external_data=False).graph)]
    assert modules[0].startswith("down_blocks.0.") and modules[-1].startswith("mid_block.")
    out = tmp_path / "model.onnx"
    add_ip_inputs(source, out, layout, "fp32", [32, 64, 64])
    plain, rewritten = ort.InferenceSession(str(source)), ort.InferenceSession(str(out))
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 6, 8), dtype=np.float32),
             "timestep": np.array([10.0, 900.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}
    extra = {t.name: rng.standard_normal((2, 4, t.shape[2]), dtype=np.float32) for t in layout.unet_tensors()}
    zero_values = {k: (np.zeros_like(v) if k.startswith("ip_value") else v) for k, v in extra.items()}
    want = plain.run(None, feeds)[0]
    assert np.array_equal(rewritten.run(None, {**feeds, **zero_values})[0], want)  # zero values: the base exactly
    assert np.abs(rewritten.run(None, {**feeds, **extra})[0] - want).max() > 1e-2
    with pytest.raises(SdrtError, match="layer widths"):
        add_ip_inputs(source, tmp_path / "other.onnx", layout, "fp32", [32, 32, 64])


def test_unet_without_module_names_is_one_line(tiny_onnx, tiny_ip_adapter_onnx, tmp_path):
    """A UNet graph whose nodes do not say which module they came from (the torchscript exporter, older
    sdrt): the rewrite cannot find the cross-attentions and says to export again."""
    from sdrt.ip_graph import add_ip_inputs

    model = onnx.load(str(Manifest.load(tiny_onnx).onnx_path("unet")), load_external_data=False)
    for node in model.graph.node:
        del node.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(SdrtError, match="export the model again with this sdrt's defaults to use an IP-Adapter"):
        add_ip_inputs(bare, tmp_path / "out.onnx", Manifest.load(tiny_ip_adapter_onnx).ip_adapter_layout(), "fp32",
                      [32, 64, 64])
    assert not (tmp_path / "out.onnx").exists()
