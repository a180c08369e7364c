"""`sdrt export --stream-weights`: traced on the meta device, weights streamed to disk one tensor at a time.

On tiny-flux (which fits in memory) the streamed folder is checked the way a streamed export of a
full-size model cannot be: its graphs against PyTorch, its weights bit for bit against an in-memory
build of the same preset, its images against the in-memory export's, its LoRA weight map in use.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdrt.manifest import Manifest  # noqa: E402


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, preset_source):
    from sdrt.export.exporter import export_model

    out = tmp_path_factory.mktemp("streamed") / "tiny-flux"
    return export_model(str(preset_source("tiny-flux")), out, stream_weights=True, precision="fp16",
                        log=lambda line: None)


def test_streamed_folder_records_what_it_did(streamed):
    manifest = Manifest.load(streamed)
    for name, entry in manifest.components.items():
        assert entry["streamed"] and entry["external_data"], name
        assert entry["check"]["passed"] is None and "not run" in entry["check"]["skipped"]
    assert manifest.precision("transformer") == "fp16" and manifest.precision("text_encoder_2") == "fp32"
    assert "not measured against PyTorch" in manifest.components["transformer"]["precision_note"]
    assert manifest.data["sizes"]["rule"].startswith("streamed export (no PyTorch module in memory)")
    assert manifest.sizes.image_multiple == 16
    from tests.test_architecture_doc import data_paths, documented

    assert not sorted(set(data_paths(manifest.data)) - documented())  # docs/architecture.md lists every field


def test_streamed_graphs_pass_the_check_and_hold_the_sources_weights(streamed, preset_source):
    """What the streamed export skips, done here: each graph against PyTorch, each weight bit for bit."""
    import diffusers

    from sdrt import spec
    from sdrt.export import check
    from sdrt.weight_map import WeightMap

    manifest = Manifest.load(streamed)
    pipe = diffusers.FluxPipeline.from_pretrained(preset_source("tiny-flux"))
    values = manifest.values
    trace = {**values, "B": 2, "h": 16, "w": 12, "L": 77}
    for name in manifest.spec.component_names:
        comp = manifest.spec.component(name)
        module = getattr(pipe, comp.source)
        shapes = check.check_dims(comp, trace, manifest.data["sizes"])
        precision = manifest.precision(name)
        result = check.check_component(comp, module, manifest.onnx_path(name), values, shapes, precision=precision,
                                       vocab_size=int(getattr(module.config, "vocab_size", 2) or 2), model=manifest.spec)
        assert result["passed"], name
    weights = WeightMap.load(manifest, "transformer")
    params = dict(pipe.transformer.named_parameters())
    for parameter, (record,) in weights.parameters.items():
        want = params[parameter].detach().numpy()
        want = want.astype(np.float16) if record["dtype"] == "float16" else want
        assert np.array_equal(weights.base(record), want), parameter
    assert set(weights.parameters) == set(params)


def test_streamed_export_generates_the_in_memory_exports_images(streamed, onnx_export):
    from sdrt.reference import TorchReplay
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    call = dict(height=64, width=96, num_inference_steps=3, output_type="np")
    ours = Pipeline.load(streamed, "ort-cpu")("a red bicycle", generator=TorchReplay(2), **call).images
    full = Pipeline.load(onnx_export("tiny-flux", "fp16"), "ort-cpu")("a red bicycle", generator=TorchReplay(2),
                                                                     **call).images
    assert psnr(ours, full) >= 40.0
    assert json.loads((streamed / "transformer" / "weight_map.json").read_text())["unmapped"] == []
