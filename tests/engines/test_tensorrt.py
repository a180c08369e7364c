"""The backends end to end on fakes: build -> store -> load -> run, stale engines, auto build, availability."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sdrt.engines import base, tensorrt, trt_api, trt_build
from sdrt.engines.trt_profiles import ProfileRequest
from sdrt.errors import BackendUnavailable, SdrtError
from tests.engines.trt_fakes import FakeCuda, FakeRuntime, fake_trt, model_folder


class _Logger:
    WARNING = 1

    def __init__(self, level):
        self.level = level


@pytest.fixture
def fakes(monkeypatch):
    """Patch the toolkit: a fake tensorrt whose Runtime deserializes fake engines on a fake GPU."""
    cuda = FakeCuda()
    trt = fake_trt()
    features = trt_api.detect(trt, "tensorrt")
    trt.Runtime = lambda logger: FakeRuntime(cuda)
    trt.Logger = _Logger
    monkeypatch.setattr(tensorrt, "open_toolkit", lambda name, need_gpu, device=0: (trt, features, cuda))
    monkeypatch.setattr(trt_build, "polygraphy_build", lambda *a, **k: b"PLAN")
    return trt, features, cuda


def _build(manifest, trt, features, target):
    return trt_build.build_component(manifest, "unet", "tensorrt", ProfileRequest(max_size=128),
                                     trt_build.BuildOptions(), trt=trt, features=features, target=target,
                                     log=lambda m: None)


def test_built_engine_loads_and_runs(tmp_path, fakes):
    trt, features, cuda = fakes
    manifest = model_folder(tmp_path)
    _build(manifest, trt, features, cuda.target)
    backend = tensorrt.TensorRTBackend(cuda_graph=True, log=lambda m: None)
    engine = backend.load(manifest, "unet")
    assert engine.cuda_graph
    engine.prepare({"B": 2, "h": 16, "w": 8})
    out = engine.run({"sample": np.ones((2, 4, 16, 8), np.float32), "timestep": np.full(2, 5.0, np.float32),
                      "encoder_hidden_states": np.full((2, 77, 8), 2.0, np.float32)})["out_sample"]
    np.testing.assert_allclose(out, 2 + 5 + 2)
    with pytest.raises(SdrtError, match=r"no tensorrt engine for unet covers batch 4.*--batch 2"):
        engine.prepare({"B": 4, "h": 8, "w": 8})
    engine.close()
    backend.close()


def test_engine_for_another_gpu_is_never_loaded(tmp_path, fakes):
    trt, features, cuda = fakes
    manifest = model_folder(tmp_path)
    _build(manifest, trt, features, "Some Other GPU (sm_80)")
    backend = tensorrt.TensorRTBackend(log=lambda m: None)
    with pytest.raises(SdrtError, match=r"built from another GPU \(Some Other GPU \(sm_80\); here: Fake GPU "
                                        r"\(sm_89\)\); a stale engine is never loaded: rebuild with `sdrt build"):
        backend.load(manifest, "unet")


def test_no_engine_names_the_build_command(tmp_path, fakes):
    manifest = model_folder(tmp_path)
    with pytest.raises(SdrtError, match=rf"no tensorrt_rtx engine for unet in .*: build it with `sdrt build "
                                        rf"--model {tmp_path} --backend tensorrt_rtx --batch 1 --components unet`"):
        tensorrt.TensorRTRTXBackend(log=lambda m: None).load(manifest, "unet")


def test_auto_build_makes_a_static_engine_for_the_dims_asked(tmp_path, fakes):
    manifest = model_folder(tmp_path)
    messages = []
    backend = tensorrt.TensorRTBackend(auto_build=True, log=messages.append)
    engine = backend.load(manifest, "unet")
    engine.prepare({"B": 2, "h": 8, "w": 16})
    assert engine.entry.profile.static and engine.entry.profile.max == {"B": 2, "h": 8, "w": 16, "L": 77}
    assert any("building one" in m for m in messages)
    engine.prepare({"B": 1, "h": 8, "w": 8})  # odd UNet batch: a build without guidance
    assert engine.entry.profile.max == {"B": 1, "h": 8, "w": 8, "L": 77}


def test_backend_is_unavailable_here_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'sdrt\[tensorrt\]'"):
        base.resolve_backend("tensorrt")
    assert "tensorrt" not in base.available_backends()


def test_rtx_identity_is_portable():
    rtx = trt_api.detect(fake_trt(rtx=True), "tensorrt_rtx")
    assert tensorrt.target_of(rtx, None) == tensorrt.PORTABLE
    assert tensorrt.target_of(trt_api.detect(fake_trt(), "tensorrt"), FakeCuda()) == "Fake GPU (sm_89)"
