"""Real TensorRT-RTX engines from real sdrt exports, built on a CPU (TensorRT-RTX needs no GPU to build).

`sdrt build --backend tensorrt_rtx` on the tiny presets' fp16 exports, every component, with a
static and a dynamic profile; nothing is monkeypatched (polygraphy and TensorRT-RTX do the build).
Loading or running an engine needs a GPU: that is tests/engines/test_tensorrt_integration.py (gpu).

Why this test exists: before attention layers were marked decomposable (sdrt.engines.trt_build),
the text encoder failed with "Myelin ... CHECK(composite_op->is_decomposable()) failed" (CLIP's
causal, masked attention has no fused TensorRT-RTX kernel), so `sdrt build` failed on every model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from sdrt import cli, spec
from sdrt.engines import trt_cache
from sdrt.manifest import Manifest

pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not (importlib.util.find_spec("tensorrt_rtx") and importlib.util.find_spec("polygraphy")),
                       reason="needs tensorrt_rtx and polygraphy: pip install 'sdrt[tensorrt-rtx-build]'"),
]

#: profile -> `sdrt build` flags (static: the model's default size, one image; dynamic: ranges)
PROFILES = {"static": [], "dynamic": ["--min-size", "32", "--max-size", "128", "--max-batch", "2"]}


@pytest.fixture
def tiny_fp16(onnx_export, tmp_path):
    """A private copy of the tiny fp16 export (the cached one is shared and read-only)."""
    folder = tmp_path / "tiny-fp16"
    shutil.copytree(onnx_export("tiny", "fp16"), folder, ignore=shutil.ignore_patterns("engines"))
    return folder


def _entries(folder, component):
    return trt_cache.read_entries(trt_cache.store_root(folder, "tensorrt_rtx"), component)


def _attention_ops(folder, component) -> int:
    import onnx

    model = onnx.load(str(folder / component / "model.onnx"), load_external_data=False)
    return sum(node.op_type == "Attention" for node in model.graph.node)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_component_of_the_tiny_fp16_export_builds(tiny_fp16, profile, capsys):
    import tensorrt_rtx

    argv = ["build", "--model", str(tiny_fp16), "--backend", "tensorrt_rtx", *PROFILES[profile]]
    assert cli.main(argv) == 0, capsys.readouterr().err
    components = [c for c in spec.component_names() if (tiny_fp16 / c / "model.onnx").is_file()]
    assert set(components) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    for component in components:
        built = _entries(tiny_fp16, component)
        assert len(built) == 1, component
        entry = built[0]
        assert entry.engine_file.stat().st_size > 100_000  # a real serialized plan, not a stub
        assert entry.identity["library"] == f"tensorrt_rtx {tensorrt_rtx.__version__}"
        # what the engine needed: every ONNX attention marked decomposable (CLIP's text encoder has 2)
        assert entry.info["network"]["attention_layers_marked_decomposable"] == _attention_ops(tiny_fp16, component)
        print(f"{profile} {component}: {entry.info['seconds']} s, {entry.engine_file.stat().st_size / 2**20:.1f} MiB")
    assert _attention_ops(tiny_fp16, "text_encoder") > 0  # the case that failed before
    if profile == "static":
        assert _entries(tiny_fp16, "unet")[0].profile.static
    else:
        unet = _entries(tiny_fp16, "unet")[0]
        f = Manifest.load(tiny_fp16).sizes.vae_scale_factor
        assert unet.profile.min == {"B": 2, "h": 32 // f, "w": 32 // f, "L": 77}
        assert unet.profile.max == {"B": 4, "h": 128 // f, "w": 128 // f, "L": 77}
    assert cli.main(argv) == 0 and capsys.readouterr().err.count("up to date") == len(components)


def test_the_build_log_and_key_say_what_was_built(tiny_fp16, capsys):
    assert cli.main(["build", "--model", str(tiny_fp16), "--backend", "tensorrt_rtx",
                     "--components", "text_encoder"]) == 0
    key = json.loads((_entries(tiny_fp16, "text_encoder")[0].path / trt_cache.KEY_FILE).read_text())
    assert key["typing"] == {"strongly_typed": True, "fp16_flag": False}
    assert key["identity"]["precision"] == "fp16" and key["input_shapes"]["input_ids"] == "1x77 / 2x77 / 2x77"


def test_a_refittable_build_on_this_machine_is_built_or_one_line(tiny_fp16, capsys):
    """`sdrt build --refit` (LoRA without rebuilding) on the real library and export. TensorRT-RTX 1.7
    JIT-compiles a refittable UNet with CUDA, so without a GPU the build fails (measured on the CI
    machine): that must be one line that says to build on the GPU, exit 2. With a GPU the engine is
    built and keyed as refittable. Refitting itself needs a GPU: test_trt_refit.py covers its logic."""
    from sdrt.engines import cuda_driver

    code = cli.main(["build", "--model", str(tiny_fp16), "--backend", "tensorrt_rtx", "--components", "unet", "--refit"])
    err = capsys.readouterr().err
    if code == 0:
        built = _entries(tiny_fp16, "unet")
        key = json.loads((built[0].path / trt_cache.KEY_FILE).read_text())
        assert len(built) == 1 and key["build"].get("refit") is True
        return
    assert cuda_driver.device_count() < 1, err  # with a GPU the build must succeed
    message = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert "refittable unet engine needs a working GPU" in message and "--refit" in message


@pytest.fixture
def tiny_sd3_fp16(onnx_export, tmp_path):
    """A private copy of the tiny-sd3 fp16 export (T5 stays fp32 in it: fp32_always)."""
    folder = tmp_path / "tiny-sd3-fp16"
    shutil.copytree(onnx_export("tiny-sd3", "fp16"), folder, ignore=shutil.ignore_patterns("engines"))
    return folder


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_component_of_the_tiny_sd3_fp16_export_builds(tiny_sd3_fp16, profile, capsys):
    """SD3: two CLIPs, T5 (fp32), the MMDiT transformer (qk RMS-norm, dual attention) and the 16-channel VAE."""
    argv = ["build", "--model", str(tiny_sd3_fp16), "--backend", "tensorrt_rtx", *PROFILES[profile]]
    assert cli.main(argv) == 0, capsys.readouterr().err
    components = [c for c in spec.component_names() if (tiny_sd3_fp16 / c / "model.onnx").is_file()]
    assert set(components) == {"text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder",
                               "vae_encoder"}
    for component in components:
        (entry,) = _entries(tiny_sd3_fp16, component)
        assert entry.engine_file.stat().st_size > 10_000, component  # a real serialized plan
    transformer = _entries(tiny_sd3_fp16, "transformer")[0]
    manifest = Manifest.load(tiny_sd3_fp16)  # the default engine takes the pipeline's T5 length (SD3: 256)
    assert transformer.profile.max["L"] == manifest.pipeline["default_max_sequence_length"] == 256
    assert manifest.precision("text_encoder_3") == "fp32"
