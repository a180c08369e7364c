"""The TensorRT engine's call sequence on a fake `tensorrt` and a fake CUDA (no GPU here).

What is checked: shapes set once per shape, addresses set once per loaded engine, no allocation
across steps, only the inputs set since the last run are copied, text embeddings stay bound, CUDA
graph capture after one warm-up run and replay afterwards, and the one-line errors.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from sdrt.engines import trt_api, trt_buffers, trt_cache
from sdrt.engines.trt_profiles import DimRange
from sdrt.engines.trt_runtime import Cuda, Session, TensorRTEngine
from sdrt.errors import BackendUnavailable, SdrtError
from sdrt.spec import model_spec
from tests.engines.trt_fakes import FakeCuda, FakeIllegalAddress, FakeRuntime, fake_plan, fake_trt

VALUES = {"C": 4, "Cin": 4, "S": 77, "D": 8, "f": 8}
SMALL = DimRange({"B": 2, "h": 8, "w": 8}, {"B": 2, "h": 8, "w": 8}, {"B": 2, "h": 16, "w": 16})
LARGE = DimRange({"B": 2, "h": 8, "w": 8}, {"B": 4, "h": 16, "w": 16}, {"B": 4, "h": 32, "w": 32})
UNET = model_spec("sd").component("unet")
IDENT = trt_cache.identity("unet", "sha256:aa", "tensorrt 10.8.0", "GPU (sm_89)", "fp16")


def setup(tmp_path, *, cuda_graph=False, plan=b"PLAN", rtx=False, valid=True, profiles=(SMALL,), max_shape=None):
    flavor = "tensorrt_rtx" if rtx else "tensorrt"
    trt = fake_trt(rtx=rtx)
    cuda = FakeCuda()
    runtime = FakeRuntime(cuda, valid=valid, max_shape=max_shape)
    session = Session(trt, trt_api.detect(trt, flavor), runtime, cuda, cuda.stream_create(),
                      trt_buffers.SharedActivations(cuda.malloc, cuda.free))
    entries = [trt_cache.write_entry(tmp_path, f"unet-{i}", plan, IDENT, p, {}) for i, p in enumerate(profiles)]
    finds = []

    def find(dims):
        finds.append(dict(dims))
        choice = trt_cache.choose(entries, IDENT, dims)
        if choice.entry is None:
            raise SdrtError(f"no engine covers {dims}")
        return choice.entry

    engine = TensorRTEngine("unet", VALUES, "fp16", component_spec=UNET, session=session, find=find, cuda_graph=cuda_graph)
    return engine, cuda, runtime, finds


def expected(sample, t, ehs):
    return (2 * sample.astype(np.float32) + t[:, None, None, None]
            + ehs.astype(np.float32).mean(axis=(1, 2))[:, None, None, None])


def calls(engine, name):
    return [c for c in engine._context.calls if c[0] == name]


def test_denoising_loop_reuses_everything(tmp_path):
    engine, cuda, runtime, finds = setup(tmp_path)
    rng = np.random.default_rng(0)
    engine.prepare({"B": 2, "h": 8, "w": 8})
    engine.prepare({"B": 2, "h": 8, "w": 8, "extra": 1})  # same dims: nothing happens
    ehs = rng.standard_normal((2, 77, 8)).astype(np.float32)
    engine.set_input("encoder_hidden_states", ehs)
    buffers = engine.buffers
    mallocs = cuda.mallocs
    for step in range(5):
        sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
        t = np.full((2,), 999.0 - step, np.float32)
        out = engine.run({"sample": sample, "timestep": t})["out_sample"]
        assert out.dtype == np.float16 and out.shape == (2, 4, 8, 8)
        np.testing.assert_allclose(out, expected(sample.astype(np.float16), t, ehs.astype(np.float16)),
                                   rtol=2e-3, atol=0.5)
        assert engine.buffers == buffers and all(engine.buffers[k] is buffers[k] for k in buffers)
    assert cuda.mallocs == mallocs == 5  # 4 tensors + one shared activation block, before the loop
    assert runtime.deserialized == 1 and finds == [{"B": 2, "h": 8, "w": 8, "L": 77}]
    assert len(calls(engine, "set_input_shape")) == 3
    assert len(calls(engine, "set_tensor_address")) == 4
    assert len(calls(engine, "set_device_memory")) == 1
    h2d = [c for c in cuda.copies if c[0] == "h2d"]
    assert len(h2d) == 1 + 5 * 2  # embeddings once, then sample + timestep per step
    assert len([c for c in cuda.copies if c[0] == "d2h"]) == 5


def test_new_dims_inside_the_profile_set_shapes_again_but_allocate_nothing(tmp_path):
    engine, cuda, runtime, finds = setup(tmp_path)
    engine.prepare({"B": 2, "h": 8, "w": 8})
    ehs = np.ones((2, 77, 8), np.float32)
    engine.set_input("encoder_hidden_states", ehs)
    engine.run({"sample": np.zeros((2, 4, 8, 8), np.float32), "timestep": np.zeros(2, np.float32)})
    mallocs = cuda.mallocs
    engine.prepare({"B": 2, "h": 16, "w": 8})
    sample = np.ones((2, 4, 16, 8), np.float32)
    out = engine.run({"sample": sample, "timestep": np.full(2, 3.0, np.float32)})["out_sample"]
    np.testing.assert_allclose(out, 2 + 3 + 1)  # embeddings kept on the device from before
    assert cuda.mallocs == mallocs and runtime.deserialized == 1
    assert calls(engine, "set_input_shape")[-3:] == [("set_input_shape", "sample", (2, 4, 16, 8)),
                                                     ("set_input_shape", "timestep", (2,)),
                                                     ("set_input_shape", "encoder_hidden_states", (2, 77, 8))]
    assert len(calls(engine, "set_tensor_address")) == 4


def test_dims_outside_every_engine_are_the_finders_error(tmp_path):
    engine, *_ = setup(tmp_path)
    with pytest.raises(SdrtError, match="no engine covers"):
        engine.prepare({"B": 4, "h": 8, "w": 8})


def test_switching_to_a_larger_engine_frees_the_old_buffers(tmp_path):
    engine, cuda, runtime, _ = setup(tmp_path, profiles=(SMALL, LARGE))
    engine.prepare({"B": 2, "h": 8, "w": 8})
    first = engine.entry.path.name
    engine.prepare({"B": 4, "h": 24, "w": 24})
    assert engine.entry.path.name != first and runtime.deserialized == 2
    assert cuda.frees == 4  # the four tensor buffers of the first engine; the shared block stays
    out = engine.run({"sample": np.ones((4, 4, 24, 24), np.float32), "timestep": np.zeros(4, np.float32),
                      "encoder_hidden_states": np.zeros((4, 77, 8), np.float32)})["out_sample"]
    np.testing.assert_allclose(out, 2.0)
    engine.close()
    assert not cuda.mem or list(cuda.mem) == [engine.session.shared.ptr]


def test_cuda_graph_is_captured_after_a_warm_up_and_replayed(tmp_path):
    engine, cuda, _, _ = setup(tmp_path, cuda_graph=True)
    engine.prepare({"B": 2, "h": 8, "w": 8})
    engine.set_input("encoder_hidden_states", np.zeros((2, 77, 8), np.float32))
    for step in range(4):
        sample = np.full((2, 4, 8, 8), float(step), np.float32)
        out = engine.run({"sample": sample, "timestep": np.zeros(2, np.float32)})["out_sample"]
        np.testing.assert_allclose(out, 2.0 * step)  # a replay reads the new inputs
    assert len(calls(engine, "execute_async_v3")) == 2  # warm-up, then the captured one
    assert cuda.launches == 3 and len(cuda.graphs) == 1
    engine.prepare({"B": 2, "h": 16, "w": 16})  # a new shape drops the graph
    assert not cuda.graphs


def test_graph_is_captured_again_when_a_larger_engine_moves_the_activation_block(tmp_path):
    """A later, larger engine (the VAE decoder loaded after the loop, an img2img VAE encoder)
    replaces the shared block; the UNet graph captured on the old block must not replay."""
    engine, cuda, _, _ = setup(tmp_path / "unet", cuda_graph=True, plan=fake_plan(1 << 20))
    engine.prepare({"B": 2, "h": 8, "w": 8})
    engine.set_input("encoder_hidden_states", np.zeros((2, 77, 8), np.float32))
    feeds = {"sample": np.ones((2, 4, 8, 8), np.float32), "timestep": np.zeros(2, np.float32)}
    for _ in range(3):  # warm-up, capture, replay
        engine.run(feeds)
    assert cuda.launches == 2 and len(cuda.graphs) == 1
    old_block = engine.session.shared.ptr
    big = trt_cache.write_entry(tmp_path / "big", "unet-big", fake_plan(8 << 20), IDENT, SMALL, {})
    later = TensorRTEngine("unet", VALUES, "fp16", component_spec=UNET, session=engine.session, find=lambda dims: big)
    later.prepare({"B": 2, "h": 8, "w": 8})
    assert engine.session.shared.ptr != old_block and old_block not in cuda.mem  # the block moved
    for step in range(3):  # replaying the old graph would touch the freed block
        feeds["sample"] = np.full((2, 4, 8, 8), float(step), np.float32)
        np.testing.assert_allclose(engine.run(feeds)["out_sample"], 2.0 * step)
    assert engine.graph_captures == 2 and len(cuda.graphs) == 1  # the stale graph is gone


def test_fake_graph_replay_into_freed_memory_fails(tmp_path):
    """The fake models captured addresses: the check above can fail."""
    engine, cuda, _, _ = setup(tmp_path, cuda_graph=True)
    engine.prepare({"B": 2, "h": 8, "w": 8})
    feeds = {"sample": np.ones((2, 4, 8, 8), np.float32), "timestep": np.zeros(2, np.float32),
             "encoder_hidden_states": np.zeros((2, 77, 8), np.float32)}
    engine.run(feeds)
    engine.run(feeds)  # captured
    shared = engine.session.shared
    cuda.free(shared.ptr)
    shared.ptr = cuda.malloc(shared.size)
    with pytest.raises(FakeIllegalAddress, match="activation memory"):
        cuda.launch(engine._graph, 7)


def test_a_shape_tensorrt_refuses_is_a_one_line_error(tmp_path):
    engine, *_ = setup(tmp_path, max_shape={"sample": (2, 4, 8, 8)})
    engine.prepare({"B": 2, "h": 8, "w": 8})
    with pytest.raises(SdrtError, match=r"TensorRT refused shape \(2, 4, 16, 16\) for the unet input sample.*"
                                        r"sdrt build --force"):
        engine.prepare({"B": 2, "h": 16, "w": 16})


def test_engine_given_at_construction_is_deserialized_at_once(tmp_path):
    engine, _, runtime, finds = setup(tmp_path)
    entry = trt_cache.write_entry(tmp_path / "bad", "unet-bad", b"JUNK", IDENT, SMALL, {})
    with pytest.raises(SdrtError, match="corrupt"):
        TensorRTEngine("unet", VALUES, "fp16", component_spec=UNET, session=engine.session, find=lambda dims: entry, entry=entry)
    good = trt_cache.write_entry(tmp_path / "good", "unet-good", b"PLAN", IDENT, SMALL, {})
    loaded = TensorRTEngine("unet", VALUES, "fp16", component_spec=UNET, session=engine.session, find=lambda dims: good, entry=good)
    assert loaded.entry == good and runtime.deserialized == 2  # the junk one was tried, then this one


@pytest.mark.parametrize("kw", [{"plan": b"JUNK"}, {"rtx": True, "valid": False}])
def test_corrupt_or_foreign_engine_asks_for_a_rebuild(tmp_path, kw):
    engine, _, runtime, _ = setup(tmp_path, **kw)
    with pytest.raises(SdrtError, match="corrupt or was built by another TensorRT version.*sdrt build --force"):
        engine.prepare({"B": 2, "h": 8, "w": 8})
    if kw.get("rtx"):
        assert runtime.deserialized == 0  # refused from the header, never deserialized


def test_set_input_errors(tmp_path):
    engine, *_ = setup(tmp_path)
    with pytest.raises(SdrtError, match="call prepare"):
        engine.set_input("sample", np.zeros((2, 4, 8, 8)))
    engine.prepare({"B": 2, "h": 8, "w": 8})
    with pytest.raises(SdrtError, match="has no input 'out_sample'"):
        engine.set_input("out_sample", np.zeros((2, 4, 8, 8)))
    with pytest.raises(SdrtError, match=r"shape \(1, 4, 8, 8\); the engine is prepared for \(2, 4, 8, 8\)"):
        engine.set_input("sample", np.zeros((1, 4, 8, 8)))


# -- the cuda-python wrapper, on a fake cudart --------------------------------------------------------
class _Err:
    def __init__(self, name, value):
        self.name, self.value = name, value


OK = _Err("cudaSuccess", 0)


def test_cuda_errors_are_one_line():
    rt = types.SimpleNamespace(cudaMalloc=lambda n: (_Err("cudaErrorMemoryAllocation", 2), None),
                               cudaFree=lambda p: (_Err("cudaErrorInvalidValue", 1),))
    cuda = Cuda(rt)
    with pytest.raises(SdrtError, match="out of GPU memory while allocating 64 bytes"):
        cuda.malloc(64)
    with pytest.raises(SdrtError, match="CUDA error cudaErrorInvalidValue while freeing GPU memory"):
        cuda.free(1)


def test_no_gpu_and_device_identity():
    no_driver = types.SimpleNamespace(cudaGetDeviceCount=lambda: (_Err("cudaErrorInsufficientDriver", 35), None))
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU.*cudaErrorInsufficientDriver.*ort-cpu"):
        Cuda(no_driver).require_gpu("TensorRT")
    props = types.SimpleNamespace(name=b"NVIDIA L4\0\0\0", major=8, minor=9)
    rt = types.SimpleNamespace(cudaGetDeviceCount=lambda: (OK, 1), cudaGetDeviceProperties=lambda d: (OK, props))
    cuda = Cuda(rt)
    cuda.require_gpu("TensorRT")
    with pytest.raises(BackendUnavailable, match="only 1 device"):
        cuda.require_gpu("TensorRT", device=1)
    assert cuda.device_target(0) == "NVIDIA L4 (sm_89)"
