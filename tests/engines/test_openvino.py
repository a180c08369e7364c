"""The openvino backend on a tiny hand-built UNet-shaped graph: bound buffers, shapes, the compiled-model
cache and its keys, and bad input (no export needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sdrt.engines import base, openvino_cache
from sdrt.errors import BackendUnavailable, SdrtError
from tests.engines.trt_fakes import model_folder

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'sdrt[openvino]')")
from sdrt.engines import openvino as ovb  # noqa: E402

C, S, D = 4, 77, 8


def _folder(tmp_path, sha="abc"):
    manifest = model_folder(tmp_path, "fp32")
    manifest.components["unet"]["sha256"] = sha  # what the cache key reads as the ONNX content
    return manifest


def _expected(sample, t, ehs):
    return 2 * sample + t[:, None, None, None] + ehs.mean(axis=(1, 2))[:, None, None, None]


def _inputs(rng, b, h, w):
    return (rng.standard_normal((b, C, h, w), dtype=np.float32), np.arange(b, dtype=np.float32) * 10,
            rng.standard_normal((b, S, D), dtype=np.float32))


def _run(engine, rng, b=2, h=3, w=5):
    engine.prepare({"B": b, "h": h, "w": w})
    sample, t, ehs = _inputs(rng, b, h, w)
    out = engine.run({"sample": sample, "timestep": t, "encoder_hidden_states": ehs})["out_sample"]
    np.testing.assert_allclose(out, _expected(sample, t, ehs), rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize("shapes", ["dynamic", "static"])
def test_engine_runs_on_bound_buffers_and_reuses_them(tmp_path, shapes):
    engine = ovb.OpenVinoBackend(shapes=shapes, num_threads=1).load(_folder(tmp_path), "unet")
    rng = np.random.default_rng(0)
    first = _run(engine, rng)
    bound = engine.buffers
    for _ in range(2):
        out = _run(engine, rng)
        assert out is first  # the same preallocated host array every run
        assert all(engine.buffers[k] is v for k, v in bound.items())
        # OpenVINO writes into our array: the request's output tensor is that memory
        assert np.shares_memory(engine.request.get_tensor("out_sample").data, out)
    other = _run(engine, rng, b=1, h=4, w=2)  # new dims: new buffers (static: a new compile)
    assert other.shape == (1, C, 4, 2) and engine.buffers["sample"] is not bound["sample"]


def test_second_load_comes_from_the_cache(tmp_path):
    manifest = _folder(tmp_path)
    first = ovb.OpenVinoBackend().load(manifest, "unet")
    assert first.loaded_from_cache is False
    entries = list(openvino_cache.store_root(tmp_path).iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("unet-")
    assert openvino_cache.is_complete(entries[0]) and openvino_cache.blob_files(entries[0])
    second = ovb.OpenVinoBackend().load(manifest, "unet")
    assert second.loaded_from_cache is True
    _run(second, np.random.default_rng(1))


def test_cache_key_changes_with_each_field(tmp_path):
    manifest = _folder(tmp_path)
    backend = ovb.OpenVinoBackend()
    base_key = openvino_cache.cache_key(backend.identity(manifest, "unet", None))
    static = openvino_cache.cache_key(backend.identity(manifest, "unet", {"sample": (1, 4, 8, 8)}))
    threads = openvino_cache.cache_key(ovb.OpenVinoBackend(num_threads=1).identity(manifest, "unet", None))
    other_onnx = openvino_cache.cache_key(backend.identity(_folder(tmp_path / "b", sha="def"), "unet", None))
    keys = {base_key, static, threads, other_onnx}
    ident = backend.identity(manifest, "unet", None)
    for field, value in (("library", "2020.1"), ("device", "GPU"), ("precision", "bf16")):
        keys.add(openvino_cache.cache_key({**ident, field: value}))
    assert len(keys) == 7
    assert ident["library"] == ov.get_version() and ident["precision"] == "f32"
    # the same inputs give the same key (a cache that can hit)
    assert openvino_cache.cache_key(ovb.OpenVinoBackend().identity(manifest, "unet", None)) == base_key


def test_cache_key_follows_the_manifests_hash_not_the_mtime(tmp_path):
    """A touched ONNX file keeps its compiled model; another recorded sha256 is another entry. A manifest
    without a recorded sha256 is keyed by the hash computed from the files (never an mtime)."""
    import json
    import os

    from sdrt.manifest import Manifest

    manifest = model_folder(tmp_path, "fp32")
    backend = ovb.OpenVinoBackend()
    key = openvino_cache.cache_key(backend.identity(manifest, "unet", None))
    assert backend.identity(manifest, "unet", None)["onnx"] == manifest.components["unet"]["sha256"]
    os.utime(manifest.onnx_path("unet"), ns=(1, 1))
    assert openvino_cache.cache_key(backend.identity(Manifest.load(tmp_path), "unet", None)) == key
    data = json.loads((tmp_path / "sdrt.json").read_text())
    data["components"]["unet"].pop("sha256")
    (tmp_path / "sdrt.json").write_text(json.dumps(data))
    older = Manifest.load(tmp_path)  # written before sdrt recorded hashes: computed, the same value
    assert openvino_cache.cache_key(backend.identity(older, "unet", None)) == key
    data["components"]["unet"]["sha256"] = "f" * 64
    (tmp_path / "sdrt.json").write_text(json.dumps(data))
    assert openvino_cache.cache_key(backend.identity(Manifest.load(tmp_path), "unet", None)) != key


def test_corrupt_cache_entry_is_rebuilt_with_a_message(tmp_path):
    manifest = _folder(tmp_path)
    ovb.OpenVinoBackend().load(manifest, "unet")
    (entry,) = openvino_cache.store_root(tmp_path).iterdir()
    for blob in openvino_cache.blob_files(entry):
        blob.write_bytes(b"not a compiled model" * 10)
    lines: list[str] = []
    engine = ovb.OpenVinoBackend(log=lines.append).load(manifest, "unet")
    assert engine.loaded_from_cache is False
    assert any("rebuil" in line and str(entry) in line for line in lines), lines
    _run(engine, np.random.default_rng(2))
    again = ovb.OpenVinoBackend().load(manifest, "unet")  # the rebuilt entry serves the next load
    assert again.loaded_from_cache is True


def test_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'sdrt\[openvino\]'"):
        ovb.OpenVinoBackend.check_available()
    with pytest.raises(BackendUnavailable, match=r"sdrt\[openvino\]"):
        base.create_backend("openvino")


def test_absent_device_lists_the_present_ones():
    present = ov.Core().available_devices
    with pytest.raises(SdrtError, match=r"device 'NPU7' is not present here; present: " + present[0]):
        ovb.OpenVinoBackend(device="NPU7")


def test_bf16_on_a_cpu_without_it_suggests_f32(monkeypatch):
    monkeypatch.setattr(ovb, "device_capabilities", lambda core, device: ["FP32", "INT8"])
    with pytest.raises(SdrtError, match=r"no bf16 support.*--precision f32"):
        ovb.OpenVinoBackend(precision="bf16")


def test_bad_options_are_one_line():
    with pytest.raises(SdrtError, match="precision 'f8'"):
        ovb.OpenVinoBackend(precision="f8")
    with pytest.raises(SdrtError, match="shapes 'fixed'"):
        ovb.OpenVinoBackend(shapes="fixed")
    with pytest.raises(SdrtError, match="performance_hint"):
        ovb.OpenVinoBackend(performance_hint="FAST")


def test_precision_goes_only_to_backends_that_convert():
    assert base.create_backend("openvino", "f32").runtime_precision == "f32"
    with pytest.raises(SdrtError, match="ort-cpu has no option 'precision' \\(precision is an option of openvino"):
        base.create_backend("ort-cpu", "bf16")
    with pytest.raises(SdrtError, match="precision 'fp8' is not one of"):
        base.create_backend("auto", "fp8")
    assert base.create_backend("ort-cpu", "f32").name == "ort-cpu"  # f32 runs everywhere
    assert base.create_backend("auto", "bf16").name == "openvino"  # auto: the backends that convert


def test_auto_order_follows_the_measured_table():
    from sdrt.engines import auto

    xeon = frozenset({"avx512f", "avx512_bf16", "amx_bf16"})
    row = auto.matching_row(xeon)
    assert row is not None and row.unet_step_s["ort-cpu f32"] < row.unet_step_s["openvino f32"]
    assert auto.cpu_order("f32", xeon) == ["ort-cpu", "openvino"]
    assert auto.cpu_order("bf16", xeon) == ["openvino"]
    assert auto.cpu_order(None, frozenset({"avx2"})) == list(auto.DEFAULT_F32)  # no row: the default


def test_auto_switches_from_the_default_only_past_the_margin(monkeypatch):
    from sdrt.engines import auto

    zen4 = frozenset({"avx512f", "avx512_bf16", "sse4a"})
    row = auto.matching_row(zen4)
    assert row is not None and "AMD" in row.cpu and auto.matching_row(zen4 | {"amx_bf16"}).cpu != row.cpu
    steps = row.unet_step_s  # measured: openvino f32 ~6% faster than ort-cpu, within the margin
    assert steps["openvino f32"] < steps["ort-cpu f32"] < steps["openvino f32"] / (1 - auto.SWITCH_MARGIN)
    assert auto.cpu_order("f32", zen4) == ["ort-cpu", "openvino"]
    faster = auto.Measured("a CPU where openvino is 20% faster", frozenset({"x"}), frozenset(),
                           {"ort-cpu f32": 1.0, "openvino f32": 0.8}, "test")
    monkeypatch.setattr(auto, "TABLE", (faster,))
    assert auto.cpu_order("f32", frozenset({"x"})) == ["openvino", "ort-cpu"]
