"""`sdrt quantize` on the tiny export: the folder it writes, its manifest, loading it, and the gate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.quantize import Request, quantize_model
from sdrt.quantize.gate import psnr
from sdrt.runtime import Pipeline

from tests.quantize.conftest import FAST


def _images(folder: Path, backend: str = "ort-cpu") -> np.ndarray:
    pipe = Pipeline.load(folder, backend=backend)
    try:
        return pipe("a photograph of a dog", num_inference_steps=3, height=64, width=64, seed=3,
                    output_type="np").images
    finally:
        pipe.close()


def test_int8_folder_manifest_and_links(tiny_onnx, quantize_tiny):
    out, report = quantize_tiny("int8")
    manifest = Manifest.load(out)
    q = manifest.components["unet"]["quantization"]
    assert q["scheme"] == "int8" and q["tool"] == "onnxruntime.quantization" and q["tool_version"]
    assert q["calibration"]["prompts"] == 2 and q["calibration"]["source"].endswith("prompts.txt")
    assert q["calibration"]["samples"] >= 2 * FAST["steps"]  # one UNet run per step and prompt (PNDM adds some)
    assert q["source_sha256"] == Manifest.load(tiny_onnx).components["unet"]["sha256"]
    assert "conv" in " ".join(q["kept_float"]).lower() and q["quality"]["passed"] is report["passed"] is True
    assert q["quality"]["psnr_db_mean"] == report["psnr_db_mean"] and 0 < report["ssim_mean"] <= 1
    assert manifest.data["quantized_from"]["path"] == str(tiny_onnx.resolve())
    manifest.verify()  # the recorded sha256 of the new graph is its own
    # the float components are the float folder's files (hard links), the UNet a new graph with Q/DQ
    for name in ("text_encoder", "vae_decoder"):
        assert os.path.samefile(out / name / "model.onnx", tiny_onnx / name / "model.onnx")
    assert not (out / "engines").exists() or not any((out / "engines").glob("*/rewrites-*/unet*"))
    assert (out / "unet" / "weight_map.json").is_file()  # names and shapes for LoRA side paths
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "unet" / "model.onnx"), load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_int8_runs_close_to_float(tiny_onnx, quantize_tiny, backend):
    out, _ = quantize_tiny("int8")
    reference = _images(tiny_onnx)
    quantized = _images(out, backend)
    # tiny has random weights (the harshest case for int8); measured ~23 dB on both backends
    assert psnr(reference, quantized) > 18.0
    assert not np.array_equal(reference, quantized)  # it really ran the int8 graph


def test_int8_weights_is_smaller_and_closer(tiny_onnx, quantize_tiny):
    out, report = quantize_tiny("int8-weights")
    manifest = Manifest.load(out)
    q = manifest.components["unet"]["quantization"]
    assert q["scheme"] == "int8-weights" and q["calibration"] is None and q["weights_quantized"] > 0
    assert manifest.components["unet"]["bytes"] < 0.5 * Manifest.load(tiny_onnx).components["unet"]["bytes"]
    assert report["psnr_db_mean"] > 30.0  # weights only: closer to float than int8 activations


def test_gate_failure_writes_nothing(tiny_onnx, tmp_path):
    out = tmp_path / "strict"
    req = Request(model=tiny_onnx, out=out, scheme="int8-weights", min_psnr=99.0, **FAST)  # no calibration: quicker
    with pytest.raises(SdrtError, match=r"quality gate failed: unet \(int8-weights\) scored PSNR [0-9.]+ dB .*"
                                        r"--min-psnr 99"):
        quantize_model(req)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # not even a staging folder


def test_accept_quality_loss_writes_and_says_so(tiny_onnx, quantize_tiny):
    out, report = quantize_tiny("int8-weights", min_psnr=99.0, accept_quality_loss=True)
    assert report["passed"] is False and report["accepted_loss"] is True
    assert Manifest.load(out).components["unet"]["quantization"]["quality"]["accepted_loss"] is True


def test_fp8_is_refused_on_cpu_backends(quantize_tiny):
    # scored on the CPU, where ONNX Runtime runs its Q/DQ pairs in float; measured 19.9 dB on tiny's random weights
    out, report = quantize_tiny("fp8", min_psnr=15.0)
    assert report["backend"] == "ort-cpu" and report["passed"] and report["psnr_db_mean"] > 15.0
    for backend in ("ort-cpu", "openvino"):
        with pytest.raises(SdrtError, match=rf"unet is quantized fp8, which backend {backend} cannot run .*"
                                            r"use --backend tensorrt or tensorrt_rtx"):
            Pipeline.load(out, backend=backend)
    with pytest.raises(SdrtError, match="only tensorrt, tensorrt_rtx run"):
        Pipeline.load(out, backend="auto")


def test_bad_inputs_are_one_line(tiny_onnx, quantize_tiny, tmp_path):
    out, _ = quantize_tiny("int8")
    cases = [
        (Request(model=out, out=tmp_path / "again"), "is already quantized .*quantize the float folder"),
        (Request(model=tiny_onnx, out=tmp_path / "a", calibration_file=tmp_path / "missing.txt"),
         "calibration file .*missing.txt is unreadable"),
        (Request(model=tiny_onnx, out=tmp_path / "a", components=("unet", "vae")), "has no component 'vae'"),
        (Request(model=tiny_onnx, out=out), "exists: choose another --out, or pass --force"),
        (Request(model=tiny_onnx, out=tmp_path / "a", scheme="int4"), "unknown quantization scheme 'int4'"),
        (Request(model=tiny_onnx, out=tmp_path / "a", scheme="int8-weights", calibration_file=tmp_path / "x"),
         "needs no calibration"),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    cases.append((Request(model=tiny_onnx, out=tmp_path / "a", calibration_file=empty), "holds no prompt"))
    for req, message in cases:
        with pytest.raises(SdrtError, match=message):
            quantize_model(req)
    assert not (tmp_path / "a").exists() and not (tmp_path / "again").exists()


def test_changed_float_source_is_refused(onnx_export, tiny_src, tmp_path, calibration_file):
    """A quantized folder whose float folder was exported again (other weights) refuses to load."""
    import shutil

    source = tmp_path / "float"
    shutil.copytree(onnx_export("tiny"), source, ignore=shutil.ignore_patterns("engines"))
    out = tmp_path / "int8"
    quantize_model(Request(model=source, out=out, scheme="int8-weights", **FAST))
    data = json.loads((source / "sdrt.json").read_text())
    data["components"]["unet"]["sha256"] = "0" * 64  # as a new export with other weights records it
    (source / "sdrt.json").write_text(json.dumps(data))
    with pytest.raises(SdrtError, match=r"was quantized from .*float, whose unet changed since .*quantize it again"):
        Pipeline.load(out, backend="ort-cpu")
    shutil.rmtree(source)  # a deleted source is fine: the quantized folder is complete
    assert Pipeline.load(out, backend="ort-cpu").backend_name == "ort-cpu"


def test_cli_writes_and_refuses(tiny_onnx, tmp_path, capsys):
    from sdrt.cli import main

    out = tmp_path / "w8"
    assert main(["quantize", "--model", str(tiny_onnx), "--out", str(out), "--scheme", "int8-weights",
                 "--steps", "2", "--size", "64"]) == 0
    printed = capsys.readouterr()
    assert "quality vs float: PSNR" in printed.out and f"wrote {out}" in printed.out
    assert main(["info", str(out)]) == 0  # the scheme, the tool and the gate's scores, per component
    info = capsys.readouterr().out
    assert f"quantized from {tiny_onnx.resolve()}" in info
    assert "unet           int8-weights (sdrt.quantize.graphs.weights_only" in info and "gate passed: PSNR" in info
    assert main(["quantize", "--model", str(out), "--out", str(tmp_path / "w8b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already quantized" in err


def test_auto_runs_an_int8_folder_on_the_measured_fastest_cpu_backend():
    from sdrt.engines import auto

    xeon = frozenset({"amx_bf16", "avx512_bf16"})  # measured: openvino int8 1.42 s/step, ort-cpu int8 2.09 s
    assert auto.cpu_order("int8", xeon) == ["openvino", "ort-cpu"]
    assert auto.cpu_order("f32", xeon) == ["ort-cpu", "openvino"]  # the float order is unchanged
    assert auto.cpu_order("int8", frozenset({"avx2"})) == list(auto.DEFAULT_F32)  # unmeasured: the default
