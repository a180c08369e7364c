"""Integration tests on the real libraries. Each skips, with its reason, where they are missing.

- TensorRT-RTX builds ahead of time without a GPU: that test runs wherever `tensorrt_rtx` and
  polygraphy are importable (it ran on the CPU-only development machine).
- Everything that deserializes or runs an engine needs an NVIDIA GPU (marked `gpu`).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from sdrt import cli
from sdrt.engines import base, trt_cache
from sdrt.errors import SdrtError
from tests.engines.trt_fakes import model_folder

BACKENDS = ("tensorrt", "tensorrt_rtx")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require(backend: str) -> None:
    try:
        base.resolve_backend(backend)
    except SdrtError as e:
        pytest.skip(f"{backend} is not usable here: {e}")


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.mark.tensorrt
@pytest.mark.skipif(not (_installed("tensorrt_rtx") and _installed("polygraphy")),
                    reason="needs the tensorrt_rtx module and polygraphy (pip install tensorrt-rtx-cu13 polygraphy)")
def test_rtx_builds_a_real_engine_without_a_gpu(tmp_path, capsys):
    import tensorrt_rtx

    model_folder(tmp_path)
    argv = ["build", "--model", str(tmp_path), "--backend", "tensorrt_rtx", "--max-size", "128", "--max-batch", "2"]
    assert cli.main(argv) == 0
    entries = trt_cache.read_entries(trt_cache.store_root(tmp_path, "tensorrt_rtx"), "unet")
    assert len(entries) == 1 and entries[0].engine_file.stat().st_size > 1000
    assert entries[0].identity["library"] == f"tensorrt_rtx {tensorrt_rtx.__version__}"
    assert entries[0].profile.max == {"B": 4, "h": 16, "w": 16, "L": 77}
    assert cli.main(argv) == 0 and "up to date" in capsys.readouterr().err


def _unet_inputs(rng, b, h, w):
    return {"sample": rng.standard_normal((b, 4, h, w)).astype(np.float32),
            "timestep": np.full((b,), 500.0, np.float32)}


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_matches_onnxruntime_and_keeps_its_buffers(tmp_path, backend):
    _require(backend)
    import onnxruntime as ort

    manifest = model_folder(tmp_path)
    assert cli.main(["build", "--model", str(tmp_path), "--backend", backend, "--max-size", "128"]) == 0
    session = ort.InferenceSession(str(tmp_path / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ehs = rng.standard_normal((2, 77, 8)).astype(np.float32)
    engine = base.create_backend(backend).load(manifest, "unet")
    engine.prepare({"B": 2, "h": 16, "w": 8})
    engine.set_input("encoder_hidden_states", ehs)
    pointers = {name: buf.ptr for name, buf in engine.buffers.items()}
    for _ in range(3):
        feeds = _unet_inputs(rng, 2, 16, 8)
        got = engine.run(feeds)["out_sample"].astype(np.float32)
        ref = session.run(None, {"sample": feeds["sample"].astype(np.float16), "timestep": feeds["timestep"],
                                 "encoder_hidden_states": ehs.astype(np.float16)})[0].astype(np.float32)
        assert psnr(got, ref, peak=float(np.ptp(ref))) >= 35
        assert {name: buf.ptr for name, buf in engine.buffers.items()} == pointers
    engine.close()


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_replay_equals_plain_runs(tmp_path, backend):
    _require(backend)
    manifest = model_folder(tmp_path)
    assert cli.main(["build", "--model", str(tmp_path), "--backend", backend]) == 0
    plain = base.create_backend(backend).load(manifest, "unet")
    graphed = base.create_backend(backend, cuda_graph=True).load(manifest, "unet")
    rng = np.random.default_rng(1)
    ehs = rng.standard_normal((2, 77, 8)).astype(np.float32)
    for engine in (plain, graphed):
        engine.prepare({"B": 2, "h": 8, "w": 8})
        engine.set_input("encoder_hidden_states", ehs)
    for _ in range(4):  # warm-up, capture, then replays, each on new inputs
        feeds = _unet_inputs(rng, 2, 8, 8)
        np.testing.assert_array_equal(graphed.run(feeds)["out_sample"], plain.run(feeds)["out_sample"])


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_pipeline_matches_ort_cpu(tmp_path, backend):
    _require(backend)
    pytest.importorskip("sdrt.export.commands_export", reason="sdrt export is not available in this checkout")
    from sdrt.manifest import Manifest
    from sdrt.runtime import Pipeline

    out = tmp_path / "tiny"
    assert cli.main(["export", "--model", "tiny", "--out", str(out)]) == 0
    assert cli.main(["build", "--model", str(out), "--backend", backend]) == 0
    manifest = Manifest.load(out)
    size = manifest.default_image_size
    f = manifest.pipeline["vae_scale_factor"]
    latents = np.random.default_rng(2).standard_normal(
        (1, manifest.pipeline["latent_channels"], size // f, size // f)).astype(np.float32)
    kwargs = {"num_inference_steps": 4, "latents": latents, "output_type": "np"}
    ref = Pipeline.load(out, backend="ort-cpu")("a red cube", **kwargs).images
    got = Pipeline.load(out, backend=backend)("a red cube", **kwargs).images
    assert psnr(got, ref, peak=1.0) >= 35
