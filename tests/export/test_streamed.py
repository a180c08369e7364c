"""Streamed export (sdrt.export.streamed): a component traced without its weights, the weights copied tensor by
tensor from the folder in their stored dtype (fp16), a Cast to fp32 after each.

On tiny-sd3 written in fp16 (as released SD3 folders are) with its T5 and its transformer streamed: the
manifest says what was stored and why, the weight file holds fp16 weights (half the fp32 bytes), the weight
map points at them, the check against PyTorch passes at the fp32 threshold, the transformer's size probe
ran, and the whole pipeline matches diffusers in fp32 (ONNX Runtime keeping the weights in fp16: no
constant folding of the Casts) and OpenVINO. On tiny-flux written in fp16 and exported under --precision
fp16 with its T5 and transformer streamed: the T5 kept fp32 over its fp16 weights, the fp16 transformer with
its fp32 time embedding (weights of both dtypes in one streamed graph), checked and size-probed, its weights
those of the folder bit for bit, its images those of the in-memory export. Which components stream, and the
one-line refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdrt.cli import main
from sdrt.manifest import Manifest
from sdrt.reference import TorchReplay, load_reference
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from sdrt.weight_map import WeightMap

MIN_PSNR = 40.0
CALL = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=48)


def test_streamed_t5_is_stored_in_fp16_and_checked(tiny_sd3_streamed_onnx):
    manifest = Manifest.load(tiny_sd3_streamed_onnx)
    entry = manifest.components["text_encoder_3"]
    assert entry["precision"] == "fp32" and entry["storage"] == "fp16" and entry["external_data"]
    assert "exported streamed" in entry["precision_note"] and entry["check"]["max_rel_error"] < 1e-4
    assert manifest.components["text_encoder"].get("storage") is None  # the others are exported whole
    transformer = manifest.components["transformer"]
    assert transformer["storage"] == "fp16/fp32"  # its position-embedding buffer is stored in fp32
    assert transformer["check"]["max_rel_error"] < 1e-4
    probed = manifest.data["sizes"]["probed"]
    assert len(probed) >= 3 and all(p["passed"] for p in probed)  # the size probe ran on the streamed graph
    weights = WeightMap.load(manifest, "text_encoder_3")
    records = [r for rs in weights.parameters.values() for r in rs]
    assert {r["dtype"] for r in records} == {"float16"}
    assert {r["layout"] for r in records} == {"identity", "transpose"}  # Linear weights stored transposed
    parameters = sum(int(np.prod(r["shape"])) for r in records)
    data = (tiny_sd3_streamed_onnx / "text_encoder_3" / "model.onnx.data").stat().st_size
    assert 1.9 * parameters < data <= 2 * parameters  # fp16: two bytes a weight (the tiniest inline)
    q = next(name for name in weights.parameters if name.endswith("SelfAttention.q.weight"))
    assert weights.base(weights.parameters[q][0]).dtype == np.float16


def test_streamed_check_has_the_float64_answer(tiny_sd3_streamed_onnx):
    """The streamed check also runs the module in float64 (each layer lifted for its own forward) and records
    how far the graph and PyTorch fp32 are from it: on the tiny model both ~1e-6, i.e. float64 was really run."""
    manifest = Manifest.load(tiny_sd3_streamed_onnx)
    for name in ("text_encoder_3", "transformer"):
        check = manifest.components[name]["check"]
        assert "or_vs_float64" in check["threshold"]
        for shape in check["shapes"]:
            exact = shape["vs_float64"]
            assert 0 < exact["torch_fp32_rel_error"] < 1e-4 and 0 < exact["onnx_rel_error"] < 1e-4, (name, exact)


def test_the_float64_referee():
    """Over the fp32 threshold a graph passes only when float64 shows PyTorch fp32 itself that far off."""
    from sdrt.export.check import EXACT_FACTOR, within

    near = {"max_rel_error": 7e-3, "vs_float64": {"onnx_rel_error": 4.5e-3, "torch_fp32_rel_error": 5.1e-3}}
    assert within(near, 1e-3)
    far = {"max_rel_error": 7e-3, "vs_float64": {"onnx_rel_error": 4.5e-3,
                                                "torch_fp32_rel_error": 4.5e-3 / EXACT_FACTOR * 0.9}}
    assert not within(far, 1e-3)
    assert not within({"max_rel_error": 7e-3}, 1e-3) and within({"max_rel_error": 1e-4}, 1e-3)


def test_lifting_to_float64_casts_the_inputs_too():
    """A module that casts its activations to a child's weight dtype before the child is lifted (T5's feed-forward
    with its fp32-kept `wo`) still runs in float64."""
    import torch

    from sdrt.export.streamed import LiftToFloat

    class FeedForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wi, self.wo = torch.nn.Linear(4, 8).half(), torch.nn.Linear(8, 4)  # wo kept in fp32

        def forward(self, x):
            return self.wo(self.wi(x).to(self.wo.weight.dtype))

    module = FeedForward()
    lift = LiftToFloat(module, torch.float64)
    out = module(torch.ones(2, 4))
    lift.remove()
    assert out.dtype == torch.float64
    assert module.wi.weight.dtype == torch.float16 and module.wo.weight.dtype == torch.float32  # put back


def test_streamed_folder_matches_diffusers_fp32(tiny_sd3_streamed_onnx, capsys):
    import torch

    reference = load_reference(tiny_sd3_streamed_onnx, dtype=torch.float32)
    theirs = reference("a lighthouse", **CALL, seed=5).images
    ours = Pipeline.load(tiny_sd3_streamed_onnx, "ort-cpu")("a lighthouse", **CALL, generator=TorchReplay(5),
                                                             output_type="np").images
    quality = psnr(ours, theirs)
    assert ours.std() > 0.01 and quality >= MIN_PSNR, f"ort-cpu: PSNR {quality:.1f} dB"
    pytest.importorskip("openvino")
    ov = Pipeline.load(tiny_sd3_streamed_onnx, "openvino")("a lighthouse", **CALL, generator=TorchReplay(5),
                                                            output_type="np").images
    with capsys.disabled():
        print(f"\n[streamed T5 and transformer (fp16 weights): ort-cpu {quality:.1f} dB, openvino {psnr(ov, theirs):.1f} dB vs diffusers]")
    assert psnr(ov, theirs) >= MIN_PSNR


def test_streamed_flux_fp16_is_checked_and_holds_the_folders_weights(tiny_flux_streamed_onnx):
    from safetensors.numpy import load_file

    manifest = Manifest.load(tiny_flux_streamed_onnx)
    t5, transformer = manifest.components["text_encoder_2"], manifest.components["transformer"]
    assert t5["precision"] == "fp32" and t5["storage"] == "fp16" and t5["check"]["passed"]
    assert transformer["precision"] == "fp16" and transformer["storage"] == "fp16" and transformer["check"]["passed"]
    assert "exported streamed" in transformer["precision_note"]
    assert manifest.components["text_encoder"].get("storage") is None  # exported whole
    probed = manifest.data["sizes"]["probed"]
    assert len(probed) >= 3 and all(p["passed"] for p in probed)  # Flux's token-grid probe, on the streamed graph
    assert manifest.sizes.image_multiple == 16
    source = Manifest.load(tiny_flux_streamed_onnx).data["source"]["path"]
    stored = load_file(str(next((Path(source) / "transformer").glob("*.safetensors"))))
    weights = WeightMap.load(manifest, "transformer")
    assert set(weights.parameters) == set(stored)
    for name, (record,) in weights.parameters.items():  # fp16 as stored; the time embedding's too (Cast to fp32)
        want = stored[name].T if record["layout"] == "transpose" else stored[name]
        assert np.array_equal(weights.base(record), want), name
    assert json.loads((tiny_flux_streamed_onnx / "transformer" / "weight_map.json").read_text())["unmapped"] == []


def test_streamed_flux_generates_the_in_memory_exports_images(tiny_flux_streamed_onnx, onnx_export):
    call = dict(height=64, width=96, num_inference_steps=3, output_type="np")
    ours = Pipeline.load(tiny_flux_streamed_onnx, "ort-cpu")("a red bicycle", generator=TorchReplay(2), **call).images
    full = Pipeline.load(onnx_export("tiny-flux", "fp16"), "ort-cpu")("a red bicycle", generator=TorchReplay(2),
                                                                     **call).images
    assert ours.std() > 0.01 and psnr(ours, full) >= MIN_PSNR


def test_which_components_stream(tiny_sd3_streamed_onnx, monkeypatch):
    from sdrt import spec
    from sdrt.export import source, streamed

    src = source.load(json.loads((tiny_sd3_streamed_onnx / "sdrt.json").read_text())["source"]["path"])
    model = spec.model_spec("sd3", ["t5"])
    names = model.component_names
    assert streamed.streamed_components(src, model, names, (), available=2**40) == set()
    sizes = {n: streamed.fp32_bytes(streamed.meta_module(src, model.component(n).source)) for n in names}
    t5 = sizes["text_encoder_3"]
    monkeypatch.setattr(streamed, "STREAM_BYTES", t5 - 1)  # over STREAM_BYTES (the transformer too, if larger)
    assert streamed.streamed_components(src, model, names, ()) == {n for n, size in sizes.items() if size >= t5}
    monkeypatch.setattr(streamed, "STREAM_BYTES", 2**40)  # or when the whole export would not fit the memory
    room = int(streamed.WHOLE_PEAK * t5)
    assert streamed.streamed_components(src, model, names, (), available=room) == \
        {n for n, size in sizes.items() if streamed.WHOLE_PEAK * size > room}
    assert streamed.streamed_components(src, model, ["text_encoder"], ["text_encoder"]) == {"text_encoder"}


@pytest.mark.parametrize("model,stream,words", [
    ("tiny_src", "unet", "a UNet cannot be exported streamed"),
    ("tiny-sd3", "text_encoder_3", "needs a diffusers folder with safetensors weights"),
])
def test_stream_refusals_are_one_line(request, tmp_path, capsys, model, stream, words):
    out = tmp_path / "out"
    source = str(request.getfixturevalue(model)) if model == "tiny_src" else model
    capsys.readouterr()  # the fixture's own output
    code = main(["export", "--model", source, "--out", str(out), "--stream", stream])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err
    assert not out.exists()
