"""`sdrt build` and the build step, with the polygraphy call replaced by a recorder (no TensorRT here)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from sdrt import cli
from sdrt.engines import tensorrt, trt_api, trt_build, trt_cache
from sdrt.engines.trt_profiles import DimRange, ProfileRequest
from sdrt.errors import SdrtError
from tests.engines.trt_fakes import FakeCuda, fake_trt, fake_unet_onnx, model_folder, reexported


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, trt, onnx_path, shapes, net_typing, features, options, timing, log_path, rng, component):
        self.calls.append({"shapes": shapes, "typing": net_typing, "timing": timing, "options": options,
                           "onnx": onnx_path, "log": log_path})
        return b"PLAN-" + component.encode()


def build(manifest, rec, request=ProfileRequest(), options=trt_build.BuildOptions(), trt=None, flavor="tensorrt",
          target="Fake GPU (sm_89)"):
    trt = trt or fake_trt(rtx=flavor == "tensorrt_rtx")
    return trt_build.build_component(manifest, "unet", flavor, request, options, trt=trt,
                                     features=trt_api.detect(trt, flavor), target=target, log=lambda m: None,
                                     builder=rec)


def test_build_stores_the_engine_with_what_its_key_hashed(tmp_path):
    manifest = model_folder(tmp_path)
    rec = Recorder()
    entry = build(manifest, rec)
    assert entry.engine_file.read_bytes() == b"PLAN-unet"
    assert entry.path.parent == tmp_path / "engines" / "tensorrt"
    info = json.loads((entry.path / trt_cache.KEY_FILE).read_text())
    assert info["identity"]["library"] == "tensorrt 10.8.0.43" and info["identity"]["precision"] == "fp16"
    assert info["identity"]["target"] == "Fake GPU (sm_89)"
    assert info["identity"]["onnx"] == manifest.components["unet"]["sha256"]  # the manifest's, not a file scan
    assert info["profile"]["max"] == {"B": 2, "h": 8, "w": 8, "L": 77} and info["input_shapes"]["sample"] == \
        "2x4x8x8 / 2x4x8x8 / 2x4x8x8"
    call = rec.calls[0]
    assert call["shapes"]["encoder_hidden_states"] == ((2, 77, 8),) * 3
    assert call["typing"] == trt_api.Typing(strongly_typed=True, fp16_flag=False)
    assert call["timing"].parent == entry.path.parent and "tensorrt_10.8.0.43" in call["timing"].name


def test_up_to_date_engines_are_reused_and_changes_rebuild(tmp_path):
    manifest = model_folder(tmp_path)
    rec = Recorder()
    first = build(manifest, rec)
    assert build(manifest, rec).path == first.path and len(rec.calls) == 1
    build(manifest, rec, options=trt_build.BuildOptions(force=True))
    assert len(rec.calls) == 2
    assert build(manifest, rec, options=trt_build.BuildOptions(opt_level=5)).path != first.path
    assert build(manifest, rec, request=ProfileRequest(max_size=128)).path != first.path
    assert build(manifest, rec, target="Other GPU (sm_90)").path != first.path
    os.utime(tmp_path / "unet" / "model.onnx", ns=(1, 1))  # a touched file (copied, restored): same engine
    assert build(manifest, rec).path == first.path and len(rec.calls) == 5
    fake_unet_onnx(tmp_path / "unet" / "model.onnx", elem=1)  # a new export (fp32 graph)...
    manifest = reexported(manifest)  # ...records its sha256 in sdrt.json: new key
    assert build(manifest, rec).path != first.path
    assert len(rec.calls) == 6
    assert [p.name for p in (tmp_path / "engines").iterdir()] == ["tensorrt"]  # no hash memo beside the engines


def test_fp16_flag_fallback_and_rtx_without_timing_cache(tmp_path):
    manifest = model_folder(tmp_path)
    rec = Recorder()
    build(manifest, rec, trt=fake_trt("8.6.1", strongly_typed=False))
    assert rec.calls[-1]["typing"] == trt_api.Typing(strongly_typed=False, fp16_flag=True)
    entry = build(manifest, rec, flavor="tensorrt_rtx", target=tensorrt.PORTABLE)
    assert rec.calls[-1]["timing"] is None and entry.path.parent.name == "tensorrt_rtx"


def test_failures_are_classified(tmp_path):
    rng = DimRange({"B": 2}, {"B": 2}, {"B": 8})
    oom = trt_build.classify_failure("unet", RuntimeError("Invalid Engine"),
                                     "[E] Error Code 2: OutOfMemory (Requested size was 8 GiB)", rng, None)
    assert "out of GPU memory while building the unet engine" in str(oom) and "--max-batch" in str(oom)
    other = trt_build.classify_failure("unet", RuntimeError("Invalid Engine"),
                                       "[I] ok\n[E] Error Code 4: Internal Error (unsupported op Foo)\n[I] bye",
                                       rng, tmp_path / "build-unet.log")
    assert "could not build the unet engine: [E] Error Code 4: Internal Error (unsupported op Foo)" in str(other)
    assert "build-unet.log" in str(other)


# -- the CLI -------------------------------------------------------------------------------------
def test_onnx_runtime_needs_no_build(tmp_path, capsys):
    assert cli.main(["build", "--model", str(tmp_path), "--backend", "ort-cpu"]) == 0
    assert "ONNX Runtime needs no build step" in capsys.readouterr().err


def test_tensorrt_missing_is_one_line_and_non_zero(tmp_path, monkeypatch, capsys):
    model_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli.main(["build", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sdrt[tensorrt]" in err and "NVIDIA" in err


@pytest.mark.parametrize("argv, words", [
    (["--height", "500"], "height 500 is not a multiple of 8"),
    (["--components", "vae_decoder"], "has no vae_decoder"),
    (["--max-size", "1024"], "outside the sizes"),
    (["--max-size", "32"], "--min-size 64 is larger than --max-size 32"),
    (["--workspace-gb", "0"], "--workspace-gb 0.0 must be positive"),
])
def test_bad_build_requests(tmp_path, capsys, argv, words):
    model_folder(tmp_path)
    assert cli.main(["build", "--model", str(tmp_path), *argv]) == 2
    assert words in capsys.readouterr().err


def test_cli_builds_every_component_with_progress(tmp_path, monkeypatch, capsys):
    model_folder(tmp_path, components=("unet", "vae_decoder"))
    trt = fake_trt()
    monkeypatch.setattr(tensorrt, "open_toolkit",
                        lambda name, need_gpu, device=0: (trt, trt_api.detect(trt, name), FakeCuda()))
    rec = Recorder()
    monkeypatch.setattr(trt_build, "polygraphy_build", rec)
    argv = ["build", "--model", str(tmp_path), "--min-size", "64", "--max-size", "128", "--opt-level", "4"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "[1/2] unet" in err and "[2/2] vae_decoder" in err and "built in" in err and "done in" in err
    assert [c["onnx"].parent.name for c in rec.calls] == ["unet", "vae_decoder"]
    assert rec.calls[0]["options"].opt_level == 4
    assert rec.calls[1]["shapes"]["latent_sample"] == ((1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 16, 16))
    assert cli.main(argv) == 0 and "up to date" in capsys.readouterr().err and len(rec.calls) == 2


def test_build_without_gpu_for_tensorrt_says_so(tmp_path, monkeypatch, capsys):
    model_folder(tmp_path)
    from sdrt.errors import BackendUnavailable

    def no_gpu(name, need_gpu, device=0):
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU and CUDA sees none usable as device 0 (x)")

    monkeypatch.setattr(tensorrt, "open_toolkit", no_gpu)
    assert cli.main(["build", "--model", str(tmp_path)]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


def test_build_options_key_fields_leave_out_cache_and_force():
    assert trt_build.BuildOptions(force=True, timing_cache=None).key_fields() == {"opt_level": None,
                                                                                  "workspace_gb": None}
    with pytest.raises(SdrtError):
        raise trt_build.classify_failure("vae", RuntimeError("x"), "", DimRange({}, {}, {}), None)


def test_a_refit_build_that_needed_cuda_says_to_build_on_the_gpu():
    from sdrt.engines.trt_profiles import DimRange

    log = "[E] IBuilder::buildSerializedNetwork: Error Code 1: Myelin (... CHECK(status == CUDA_SUCCESS) failed ...)"
    refit = trt_build.classify_failure("unet", RuntimeError("Invalid Engine"), log, DimRange({}, {}, {}), None, refit=True)
    assert "needs a working GPU to build" in str(refit) and "--refit" in str(refit) and "\n" not in str(refit)
    plain = trt_build.classify_failure("unet", RuntimeError("Invalid Engine"), log, DimRange({}, {}, {}), None)
    assert str(plain).startswith("TensorRT could not build the unet engine")
