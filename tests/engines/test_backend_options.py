"""Backend options are one vocabulary, declared per backend; `auto` picks among the backends that
take them and falls back past a TensorRT backend that has no engine for the folder."""

from __future__ import annotations

import inspect

import pytest

from sdrt.engines import base, tensorrt, trt_api
from sdrt.engines.ort import OrtCpuBackend, OrtCudaBackend
from sdrt.errors import BackendUnavailable, EngineMissing, SdrtError
from tests.engines.trt_fakes import FakeCuda, FakeRuntime, fake_trt, model_folder


def _keywords(cls) -> set[str]:
    """The keyword options a backend's constructors (its own and its bases') accept."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        names |= {p.name for p in inspect.signature(init).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return names


@pytest.mark.parametrize("name", list(base.BACKENDS))
def test_each_backend_declares_exactly_the_options_its_constructor_takes(name):
    cls = base.backend_class(name)
    assert set(cls.options) == _keywords(cls)
    assert "enable_cuda_graph" not in cls.options  # one word for CUDA graphs: cuda_graph


def test_cuda_graph_is_the_same_word_on_every_gpu_backend():
    assert base.offering("cuda_graph") == ["tensorrt", "tensorrt_rtx", "ort-cuda"]


def test_unknown_option_names_the_valid_ones_instead_of_a_type_error():
    with pytest.raises(SdrtError, match=r"backend ort-cpu has no option 'cuda_graph' \(cuda_graph is an option of "
                                        r"tensorrt, tensorrt_rtx, ort-cuda\); its options: intra_op_num_threads,"):
        base.create_backend("ort-cpu", cuda_graph=True)


def test_tensorrt_no_longer_accepts_other_backends_options():
    # checked before the library is looked for: the same answer with or without TensorRT installed
    with pytest.raises(SdrtError, match=r"backend tensorrt has no option 'intra_op_num_threads' .*ort-cuda, "
                                        r"ort-cpu\); its options: cuda_graph, device_id"):
        base.create_backend("tensorrt", intra_op_num_threads=2)


def test_auto_with_cuda_graph_on_a_cuda_machine_without_tensorrt(monkeypatch):
    monkeypatch.setattr(base, "available_backends", lambda: ["ort-cuda", "ort-cpu"])
    backend = base.create_backend("auto", cuda_graph=True)
    assert isinstance(backend, OrtCudaBackend) and backend.cuda_graph


def test_auto_options_narrow_the_choice(monkeypatch):
    monkeypatch.setattr(base, "available_backends", lambda: ["tensorrt", "ort-cuda", "ort-cpu"])
    assert base.candidates("auto", {}) == ["tensorrt", "ort-cuda", "ort-cpu"]
    assert base.candidates("auto", {"intra_op_num_threads": 2}) == ["ort-cuda", "ort-cpu"]
    assert base.candidates("auto", {"auto_build": True}) == ["tensorrt"]
    monkeypatch.setattr(base, "available_backends", lambda: ["ort-cpu"])
    with pytest.raises(BackendUnavailable, match=r"no backend usable here takes the option 'cuda_graph' \(it is "
                                                 r"an option of tensorrt, tensorrt_rtx, ort-cuda; usable here: ort-cpu"):
        base.candidates("auto", {"cuda_graph": True})


# -- auto falls back past a TensorRT backend without engines ---------------------------------------
@pytest.fixture
def tensorrt_here(monkeypatch):
    """A fake TensorRT (and GPU) that `auto` finds usable; no engine is built for any folder."""
    cuda = FakeCuda()
    trt = fake_trt()
    trt.Runtime = lambda logger: FakeRuntime(cuda)
    trt.Logger = type("Logger", (), {"WARNING": 1, "__init__": lambda self, level: None})
    features = trt_api.detect(trt, "tensorrt")
    monkeypatch.setattr(tensorrt, "open_toolkit", lambda name, need_gpu, device=0: (trt, features, cuda))
    monkeypatch.setattr(base, "available_backends", lambda: ["tensorrt", "ort-cpu"])
    return cuda


def test_auto_falls_back_to_the_next_backend_with_a_one_line_note(tiny_onnx, tensorrt_here, capsys):
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(tiny_onnx, "auto")
    assert pipe.backend_name == "ort-cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdrt: backend auto: not tensorrt (no tensorrt engine for "
                                               "text_encoder") and "sdrt build" in err[0]
    assert err[0].endswith("using ort-cpu")
    assert not tensorrt_here.mem  # the skipped backend's stream and memory were given back
    pipe.close()


def test_a_named_backend_without_engines_still_fails_with_the_build_command(tiny_onnx, tensorrt_here):
    from sdrt.runtime import Pipeline

    with pytest.raises(EngineMissing, match="no tensorrt engine for text_encoder.*build it with `sdrt build"):
        Pipeline.load(tiny_onnx, "tensorrt")


# -- close ----------------------------------------------------------------------------------------
class _Recording(OrtCpuBackend):
    def __init__(self, fail_on: str | None = None, **options):
        super().__init__(**options)
        self.fail_on, self.closed, self.engines = fail_on, 0, []

    def load(self, manifest, component):
        if component == self.fail_on:
            raise SdrtError(f"{component} is broken")
        engine = super().load(manifest, component)
        self.engines.append(engine)
        return engine

    def close(self):
        self.closed += 1


def _pipeline(folder, backend):
    import json

    from sdrt.manifest import Manifest
    from sdrt.runtime import Pipeline
    from sdrt.runtime.tokenizer import ClipTokenizer

    return Pipeline(Manifest.load(folder), backend, ClipTokenizer.from_folder(folder / "tokenizer"),
                    json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))


def test_pipeline_close_closes_the_backend(tiny_onnx):
    backend = _Recording()
    pipe = _pipeline(tiny_onnx, backend)
    pipe.close()
    assert backend.closed == 1 and not pipe.engines


def test_a_failing_load_frees_what_was_loaded_before(tiny_onnx):
    backend = _Recording(fail_on="vae_decoder")
    with pytest.raises(SdrtError, match="vae_decoder is broken"):
        _pipeline(tiny_onnx, backend)
    assert backend.closed == 1 and [e.dims for e in backend.engines] == [None, None]


def test_tensorrt_deserializes_at_load_so_a_corrupt_engine_fails_there(tmp_path, tensorrt_here, monkeypatch):
    from sdrt.engines import trt_build
    from sdrt.engines.trt_profiles import ProfileRequest

    manifest = model_folder(tmp_path)
    trt, features, cuda = tensorrt.open_toolkit("tensorrt", need_gpu=True)
    entry = trt_build.build_component(manifest, "unet", "tensorrt", ProfileRequest(), trt_build.BuildOptions(),
                                      trt=trt, features=features, target=cuda.target, log=lambda m: None,
                                      builder=lambda *a: b"PLAN")
    backend = tensorrt.TensorRTBackend(log=lambda m: None)
    engine = backend.load(manifest, "unet")
    assert engine.entry == entry and engine._engine is not None  # deserialized before any prepare
    engine.close()
    entry.engine_file.write_bytes(b"JUNK")
    with pytest.raises(SdrtError, match="is corrupt or was built by another TensorRT.*sdrt build --force"):
        backend.load(manifest, "unet")
    backend.close()
    assert not cuda.mem


@pytest.mark.parametrize("backend, message", [
    ("ort-cpu", "backend ort-cpu has no option 'auto_build' (auto_build is an option of tensorrt, tensorrt_rtx)"),
    ("auto", "no backend usable here takes the option 'auto_build' (it is an option of tensorrt, tensorrt_rtx;"),
])
def test_generate_auto_build_is_refused_in_one_line_where_no_tensorrt_takes_it(tiny_onnx, tmp_path, capsys,
                                                                              monkeypatch, backend, message):
    from sdrt.cli import main

    monkeypatch.setattr(base, "available_backends", lambda: ["ort-cpu"])
    rc = main(["generate", "--model", str(tiny_onnx), "--prompt", "x", "--steps", "1", "--backend", backend,
               "--auto-build", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
