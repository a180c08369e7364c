"""Streamed export (sdrt.export.streamed): a component traced without its weights, the weights copied tensor by
tensor from the folder in their stored dtype (fp16), a Cast to fp32 after each.

On tiny-sd3 written in fp16 (as released SD3 folders are) with its T5 and its transformer streamed: the
manifest says what was stored and why, the weight file holds fp16 weights (half the fp32 bytes), the weight
map points at them, the check against PyTorch passes at the fp32 threshold, the transformer's size probe
ran, and the whole pipeline matches diffusers in fp32 (ONNX Runtime keeping the weights in fp16: no
constant folding of the Casts) and OpenVINO. Which components stream, and the one-line refusals.
"""

from __future__ import annotations

import json

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
