"""ONNX Runtime engines on a tiny hand-built UNet-shaped graph (spec tensor names, no export needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto

from sdrt.engines import base
from sdrt.engines.ort import OrtCpuBackend, OrtCudaBackend
from sdrt.errors import BackendUnavailable, SdrtError
from sdrt.manifest import Manifest
from tests.engines.trt_fakes import fake_unet_onnx

C, S, D = 4, 77, 8


def _folder(tmp_path, precision="fp32"):
    (tmp_path / "unet").mkdir(parents=True)
    fake_unet_onnx(tmp_path / "unet" / "model.onnx", TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT)
    data = {
        "format": "sdrt-onnx", "format_version": 1,
        "pipeline": {"latent_channels": C, "unet_in_channels": C, "text_hidden_size": D,
                     "vae_scale_factor": 8, "token_length": S, "sample_size": 8},
        "components": {"unet": {"file": "unet/model.onnx", "precision": precision, "sha256": "x" + precision}},
        "sizes": {"latent_multiple": 1, "min_latent": 1, "max_latent": 64},
    }
    (tmp_path / "sdrt.json").write_text(json.dumps(data))
    return Manifest.load(tmp_path)


def _expected(sample, t, ehs):
    return 2 * sample + t[:, None, None, None] + ehs.mean(axis=(1, 2))[:, None, None, None]


def _inputs(rng, b, h, w):
    return (rng.standard_normal((b, C, h, w), dtype=np.float32), np.arange(b, dtype=np.float32) * 10,
            rng.standard_normal((b, S, D), dtype=np.float32))


def test_cpu_engine_runs_on_bound_buffers_and_reuses_them(tmp_path):
    engine = OrtCpuBackend(intra_op_num_threads=1).load(_folder(tmp_path), "unet")
    rng = np.random.default_rng(0)
    engine.prepare({"B": 2, "h": 3, "w": 5})
    bound = engine.buffers
    first_out = None
    for _ in range(3):
        sample, t, ehs = _inputs(rng, 2, 3, 5)
        out = engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})["out_sample"]
        np.testing.assert_allclose(out, _expected(sample, t, ehs), rtol=1e-5, atol=1e-5)
        first_out = out if first_out is None else first_out
        assert out is first_out  # the same preallocated host output every run
        engine.prepare({"B": 2, "h": 3, "w": 5})  # same dims: nothing re-allocated
        assert all(engine.buffers[k] is v for k, v in bound.items())


def test_inputs_not_set_again_keep_their_value(tmp_path):
    engine = OrtCpuBackend().load(_folder(tmp_path), "unet")
    rng = np.random.default_rng(1)
    engine.prepare({"B": 1, "h": 2, "w": 2})
    sample, t, ehs = _inputs(rng, 1, 2, 2)
    engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})
    sample2 = sample + 1
    out = engine.run({"sample": sample2})["out_sample"]
    np.testing.assert_allclose(out, _expected(sample2, t, ehs), rtol=1e-5, atol=1e-5)


def test_new_dims_rebind_new_buffers(tmp_path):
    engine = OrtCpuBackend().load(_folder(tmp_path), "unet")
    engine.prepare({"B": 1, "h": 2, "w": 2})
    before = engine.buffers["sample"]
    engine.prepare({"B": 2, "h": 4, "w": 2})
    assert engine.buffers["sample"] is not before
    assert tuple(engine.buffers["sample"].shape()) == (2, C, 4, 2)
    rng = np.random.default_rng(2)
    sample, t, ehs = _inputs(rng, 2, 4, 2)
    out = engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})["out_sample"]
    np.testing.assert_allclose(out, _expected(sample, t, ehs), rtol=1e-5, atol=1e-5)


def test_wrong_input_shape_is_refused(tmp_path):
    engine = OrtCpuBackend().load(_folder(tmp_path), "unet")
    engine.prepare({"B": 1, "h": 2, "w": 2})
    with pytest.raises(ValueError, match="sample"):
        engine.set_input("sample", np.zeros((1, C, 2, 3), np.float32))


def test_fp16_component_casts_float32_inputs(tmp_path):
    engine = OrtCpuBackend().load(_folder(tmp_path, "fp16"), "unet")
    engine.prepare({"B": 1, "h": 2, "w": 2})
    sample, t, ehs = _inputs(np.random.default_rng(3), 1, 2, 2)
    out = engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})["out_sample"]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), _expected(sample, t, ehs), rtol=1e-2, atol=2e-2)


def test_corrupt_model_names_the_file(tmp_path):
    manifest = _folder(tmp_path)
    (tmp_path / "unet" / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(SdrtError, match=r"unet/model\.onnx") as err:
        OrtCpuBackend().load(manifest, "unet")
    assert "\n" not in str(err.value) and "Protobuf parsing failed" in str(err.value)


def test_missing_model_names_the_file(tmp_path):
    manifest = _folder(tmp_path)
    (tmp_path / "unet" / "model.onnx").unlink()
    with pytest.raises(SdrtError, match=r"unet/model\.onnx is missing"):
        OrtCpuBackend().load(manifest, "unet")


def test_bad_session_option_is_one_line_error():
    with pytest.raises(SdrtError, match="graph_optimization_level 'max'"):
        OrtCpuBackend(graph_optimization_level="max")


def test_session_options_are_applied():
    so = OrtCpuBackend(intra_op_num_threads=1, inter_op_num_threads=1, graph_optimization_level="basic",
                       enable_mem_pattern=False, session_config={"session.use_env_allocators": "1"}).session_options()
    assert so.intra_op_num_threads == 1 and so.enable_mem_pattern is False
    assert str(so.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert so.get_session_config_entry("session.use_env_allocators") == "1"


def test_optimized_model_cache_is_written_then_reused(tmp_path):
    manifest = _folder(tmp_path / "m")
    cache = tmp_path / "cache"
    OrtCpuBackend(optimized_model_cache=cache).load(manifest, "unet")
    written = sorted(cache.glob("unet-*.onnx"))
    assert len(written) == 1
    stamp = written[0].stat().st_mtime_ns
    engine = OrtCpuBackend(optimized_model_cache=cache).load(manifest, "unet")
    assert written[0].stat().st_mtime_ns == stamp  # loaded, not rewritten
    engine.prepare({"B": 1, "h": 2, "w": 2})
    sample, t, ehs = _inputs(np.random.default_rng(4), 1, 2, 2)
    out = engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})["out_sample"]
    np.testing.assert_allclose(out, _expected(sample, t, ehs), rtol=1e-5, atol=1e-5)


def _rerecord(manifest, sha256):
    """The folder's sdrt.json with another recorded sha256 for the unet (what a new export writes)."""
    data = json.loads((manifest.folder / "sdrt.json").read_text())
    data["components"]["unet"]["sha256"] = sha256
    (manifest.folder / "sdrt.json").write_text(json.dumps(data))
    return Manifest.load(manifest.folder)


def test_ort_caches_follow_the_manifests_hash_not_the_mtime(tmp_path):
    """The optimized-model cache and the rewritten graphs: a touched file keeps its entries, another
    recorded sha256 makes new ones."""
    import os

    manifest = _folder(tmp_path / "m")
    cache = tmp_path / "cache"
    rewrites = manifest.engines_dir("ort-cpu")

    def load(m):
        OrtCpuBackend(optimized_model_cache=cache, graph_rewrites=("group_norm_to_instance_norm",)).load(m, "unet")
        return sorted(p.name for p in cache.iterdir()), sorted(p.name for p in rewrites.iterdir())

    first = load(manifest)
    assert len(first[0]) == 1 and len(first[1]) == 1  # one optimized model, one rewrite entry ("unchanged")
    os.utime(manifest.onnx_path("unet"), ns=(1, 1))
    assert load(manifest) == first
    second = load(_rerecord(manifest, "y" * 64))
    assert len(second[0]) == 2 and len(second[1]) == 2 and set(first[0]) < set(second[0])


def test_registry_resolves_ort_cpu():
    assert base.resolve_backend("ort-cpu") == "ort-cpu"
    assert "ort-cpu" in base.available_backends()
    assert isinstance(base.create_backend("ort-cpu", intra_op_num_threads=1), OrtCpuBackend)


def _cuda_missing_reason():
    try:
        OrtCudaBackend.check_available()
    except BackendUnavailable as e:
        return str(e)
    return None


def test_ort_cuda_unavailable_names_the_fix():
    reason = _cuda_missing_reason()
    if reason is None:
        pytest.skip("ort-cuda is usable here")
    assert "sdrt[gpu]" in reason or "no CUDA GPU" in reason
    with pytest.raises(BackendUnavailable):
        base.resolve_backend("ort-cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_matches_cpu(tmp_path, cuda_graph):
    reason = _cuda_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    engine = OrtCudaBackend(cuda_graph=cuda_graph).load(_folder(tmp_path), "unet")
    engine.prepare({"B": 2, "h": 4, "w": 4})
    bound = engine.buffers
    rng = np.random.default_rng(5)
    for _ in range(3):
        sample, t, ehs = _inputs(rng, 2, 4, 4)
        out = engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})["out_sample"]
        np.testing.assert_allclose(out, _expected(sample, t, ehs), rtol=1e-4, atol=1e-4)
        assert all(engine.buffers[k] is v for k, v in bound.items())


def test_optimized_model_cache_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A session that fails after ORT wrote its optimized model leaves no cache entry to be 'hit' later."""
    import onnxruntime as ort

    manifest = _folder(tmp_path / "m")
    cache = tmp_path / "cache"
    real = ort.InferenceSession

    def write_then_fail(model, sess_options=None, providers=None):
        real(model, sess_options=sess_options, providers=providers)  # writes optimized_model_filepath
        raise RuntimeError("out of memory")

    monkeypatch.setattr(ort, "InferenceSession", write_then_fail)
    with pytest.raises(SdrtError):
        OrtCpuBackend(optimized_model_cache=cache).load(manifest, "unet")
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(ort, "InferenceSession", real)
    OrtCpuBackend(optimized_model_cache=cache).load(manifest, "unet")
    assert [p.suffix for p in cache.iterdir()] == [".onnx"]
