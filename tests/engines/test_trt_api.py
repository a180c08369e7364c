"""Version and feature detection, the fp16 policy, and the adapters between TensorRT flavors."""

from __future__ import annotations

import sys
import types

import pytest

from sdrt.engines import trt_api
from sdrt.errors import BackendUnavailable, SdrtError
from tests.engines.trt_fakes import FakeCuda, FakeEngine, UNET_IO, fake_trt


@pytest.mark.parametrize("text, want", [("10.8.0.43", (10, 8, 0, 43)), ("11.0", (11, 0)), ("10.0.0b6", (10, 0, 0)),
                                        ("1.7.1.116", (1, 7, 1, 116)), ("", ())])
def test_parse_version(text, want):
    assert trt_api.parse_version(text) == want


def test_detect_reads_features_from_the_module_not_the_version():
    f10 = trt_api.detect(fake_trt("10.8.0"), "tensorrt")
    assert (f10.strongly_typed, f10.fp16_flag, f10.io_tensor_api, f10.user_managed_memory) == (True, True, True, True)
    assert f10.timing_cache and f10.needs_gpu_to_build and not f10.engine_validity
    assert f10.major == 10 and f10.library == "tensorrt 10.8.0"
    f11 = trt_api.detect(fake_trt("11.1.0", fp16_flag=False), "tensorrt")
    assert f11.strongly_typed and not f11.fp16_flag
    f86 = trt_api.detect(fake_trt("8.6.1", strongly_typed=False, user_managed=False), "tensorrt")
    assert not f86.strongly_typed and f86.fp16_flag and not f86.user_managed_memory
    rtx = trt_api.detect(fake_trt("1.7.1.116", fp16_flag=False, rtx=True), "tensorrt_rtx")
    assert rtx.engine_validity and not rtx.timing_cache and not rtx.needs_gpu_to_build
    assert rtx.library == "tensorrt_rtx 1.7.1.116"


def test_old_tensorrt_without_named_io_is_refused_with_an_upgrade_line():
    old = fake_trt("8.4.3")
    del old.IExecutionContext.execute_async_v3
    with pytest.raises(BackendUnavailable, match="8.4.3 is too old.*8.5"):
        trt_api.require_runtime_api(trt_api.detect(old, "tensorrt"))


@pytest.mark.parametrize("kw, precision, want", [
    ({}, "fp16", (True, False)),                                   # TensorRT 10: strongly typed
    ({"fp16_flag": False}, "fp16", (True, False)),                 # TensorRT 11 / RTX
    ({"strongly_typed": False}, "fp16", (False, True)),            # TensorRT 8.x: the FP16 flag
    ({"strongly_typed": False}, "fp32", (False, False)),
])
def test_fp16_policy(kw, precision, want):
    t = trt_api.network_typing(trt_api.detect(fake_trt(**kw), "tensorrt"), precision)
    assert (t.strongly_typed, t.fp16_flag) == want


def test_fp16_without_either_mechanism_is_an_error():
    features = trt_api.detect(fake_trt(strongly_typed=False, fp16_flag=False), "tensorrt")
    with pytest.raises(SdrtError, match="neither strongly typed"):
        trt_api.network_typing(features, "fp16")


def test_device_memory_size_and_context_adapters():
    trt = fake_trt()
    features = trt_api.detect(trt, "tensorrt")
    engine = FakeEngine(FakeCuda(), UNET_IO, memory=12345)
    assert trt_api.device_memory_size(engine, features) == 12345
    old = types.SimpleNamespace(device_memory_size=777)
    assert trt_api.device_memory_size(old, trt_api.detect(types.SimpleNamespace(), "tensorrt")) == 777
    ctx = trt_api.create_context(trt, engine, features, shared_memory=True)
    assert ctx.strategy is trt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert trt_api.create_context(trt, engine, features, shared_memory=False).strategy is None
    legacy = trt_api.detect(fake_trt(user_managed=False), "tensorrt")
    assert not trt_api.shares_memory(engine, legacy)
    assert trt_api.create_context(trt, engine, legacy, shared_memory=True).strategy is None


def test_engine_validity_only_where_the_api_has_it():
    rtx = trt_api.detect(fake_trt(rtx=True), "tensorrt_rtx")
    runtime = types.SimpleNamespace(get_engine_validity=lambda data: (types.SimpleNamespace(name="INVALID"), 0))
    assert not trt_api.engine_is_valid(runtime, b"x", rtx)
    runtime.get_engine_validity = lambda data: (types.SimpleNamespace(name="SUBOPTIMAL"), 0)
    assert trt_api.engine_is_valid(runtime, b"x", rtx)
    assert trt_api.engine_is_valid(object(), b"x", trt_api.detect(fake_trt(), "tensorrt"))


@pytest.mark.parametrize("flavor, words", [
    ("tensorrt", r"TensorRT \(Python module tensorrt\) is not installed.*sdrt\[tensorrt\].*NVIDIA's package server"),
    ("tensorrt_rtx", r"TensorRT-RTX .* is not installed.*sdrt\[tensorrt-rtx\]"),
])
def test_missing_module_names_the_extra(monkeypatch, flavor, words):
    monkeypatch.setitem(sys.modules, trt_api.FLAVORS[flavor].module, None)  # import fails even if installed
    with pytest.raises(BackendUnavailable, match=words):
        trt_api.import_trt(flavor)


def test_missing_cuda_python(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(BackendUnavailable, match="cuda-python is not installed"):
        trt_api.import_cudart()


def test_unknown_flavor():
    with pytest.raises(SdrtError, match="unknown TensorRT backend"):
        trt_api.flavor("tensorrt_lite")
