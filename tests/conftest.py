"""Shared test fixtures and markers for every area.

Fixtures (all session-scoped; each returns a `pathlib.Path`):

=====================  =======================================================================
``tiny_src``           diffusers folder of the ``tiny`` preset (`sdrt preset tiny`), loadable by
                       ``diffusers.StableDiffusionPipeline.from_pretrained``
``tiny_sd21_src``      likewise, ``tiny-sd21`` (v-prediction, linear projection, per-block heads)
``tiny_inpaint_src``   likewise, ``tiny-inpaint`` (StableDiffusionInpaintPipeline, 9-channel UNet)
``tiny_onnx``          fp32 ONNX model folder exported from ``tiny_src`` (all four components)
``tiny_sd21_onnx``     fp32 ONNX model folder exported from ``tiny_sd21_src``
``tiny_inpaint_onnx``  fp32 ONNX model folder exported from ``tiny_inpaint_src``
``tiny_sdxl_onnx``     fp32 ONNX model folder of ``tiny-sdxl`` (two text encoders, text_time UNet)
``tiny_sdxl_refiner_onnx``  likewise, ``tiny-sdxl-refiner`` (text_encoder_2 only, aesthetic time ids)
``tiny_lcm_onnx``      likewise, ``tiny-lcm`` (UNet with time_cond_proj_dim: ``timestep_cond``)
``tiny_flux_onnx``     likewise, ``tiny-flux`` (Flux dev-style: CLIP + T5, guidance-embedded transformer)
``tiny_flux_schnell_onnx``  likewise, ``tiny-flux-schnell`` (no guidance embedding)
``tiny_flux_fill_onnx``  likewise, ``tiny-flux-fill`` (Flux Fill: 384-channel transformer)
``tiny_sd3_streamed_onnx``  ``tiny-sd3`` written in fp16, its T5 and transformer exported streamed (fp16 weights)
``tiny_flux_streamed_onnx``  ``tiny-flux`` written in fp16, exported under ``--precision fp16`` with its T5 and
                       transformer streamed
``tiny_controlnet_onnx``  an exported ControlNet for ``tiny`` (``tiny-controlnet`` preset, non-zero
                       zero convolutions); ``controlnet_export(preset, seed=0, precision="fp32")``
                       exports others (e.g. a second one, ``tiny-sdxl-controlnet``), cached likewise
``tiny_ip_adapter_onnx``  an exported IP-Adapter for ``tiny`` (``tiny-ip-adapter``: diffusers'
                       load_ip_adapter layout, seeded); ``ip_adapter_export(preset, seed=0)`` likewise
                       (e.g. ``tiny-sdxl-ip-adapter``)
``onnx_export``        a function ``onnx_export(preset, precision="fp32", components=None,
                       hidden_states=False) -> Path`` for other variants (e.g.
                       ``onnx_export("tiny", "fp16")``), cached likewise
``pipelines``          preset name (tiny, tiny-sd21, tiny-inpaint) -> an sdrt Pipeline on ort-cpu,
                       loaded once
``references``         likewise -> its diffusers reference (`sdrt.reference`), loaded once
=====================  =======================================================================

Treat the folders as read-only: they are shared by the whole session and, by default, cached
between runs in ``.pytest_cache/d/sdrt-models/`` under a key that changes whenever the export
code, the presets or the library versions change. ``SDRT_TEST_CACHE=0`` exports into a fresh
temporary folder instead; ``SDRT_TEST_CACHE_DIR=DIR`` keeps the cache in DIR (checkouts can share it).

Markers (independent; a test that needs both carries both): ``@pytest.mark.gpu`` tests skip, with
the reason, where no NVIDIA GPU is visible; ``@pytest.mark.tensorrt`` tests skip where neither the
``tensorrt`` nor the ``tensorrt_rtx`` module is installed. So a TensorRT-RTX build test (no GPU
needed) is marked ``tensorrt`` only and runs on CPU machines.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test reaches a model hub (read when huggingface_hub is imported)
ROOT = Path(__file__).resolve().parents[1]
#: Files whose change makes cached models stale.
CACHE_INPUTS = ["sdrt/manifest.py", "sdrt/weight_map.py", *sorted(
    str(p.relative_to(ROOT)) for p in [*(ROOT / "sdrt" / "spec").glob("*.py"), *(ROOT / "sdrt" / "export").glob("*.py"),
                                       *(ROOT / "sdrt" / "data" / "shapes").glob("*.safetensors"),
                                       *(ROOT / "sdrt" / "data" / "shapes-controlnet").glob("*.safetensors"),
                                       *(ROOT / "sdrt" / "data" / "shapes-controlnet").glob("config.json")])]
CACHE_LIBRARIES = ("torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime", "tokenizers")


# -- markers ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def nvidia_gpu() -> str | None:
    """Name of the first NVIDIA GPU, or None (asks nvidia-smi: no torch, no CUDA library import)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in listing.stdout.splitlines() if line.startswith("GPU ")]
    return lines[0] if listing.returncode == 0 and lines else None


def tensorrt_module() -> str | None:
    return next((m for m in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(m) is not None), None)


def skip_reason(markers: set[str], gpu: Callable[[], str | None], module: Callable[[], str | None]) -> str | None:
    """Why a test with these markers cannot run here (None: it runs). Each marker asks for one thing."""
    if "gpu" in markers and gpu() is None:
        return "needs an NVIDIA GPU; nvidia-smi finds none here"
    if "tensorrt" in markers and module() is None:
        return "needs the TensorRT or TensorRT-RTX Python module (pip install 'sdrt[tensorrt-rtx]')"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = skip_reason({m.name for m in item.iter_markers()}, nvidia_gpu, tensorrt_module)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


# -- cached models -----------------------------------------------------------------------------
def _cache_key(*parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode())
    for name in CACHE_INPUTS:
        digest.update(name.encode() + (ROOT / name).read_bytes())
    for lib in CACHE_LIBRARIES:
        try:
            digest.update(f"{lib}={importlib.metadata.version(lib)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def _model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("SDRT_TEST_CACHE", "1") == "0":
        return tmp_path_factory.mktemp("sdrt-models")
    shared = os.environ.get("SDRT_TEST_CACHE_DIR")  # several checkouts (worktrees) can share one cache
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        return Path(shared)
    return Path(request.config.cache.mkdir("sdrt-models"))


def _cached(folder: Path, marker: str, make: Callable[[Path], object]) -> Path:
    """`folder` if a complete one exists (its `marker` file), else made by `make`, atomically.

    Two pytest processes may race: both write private temporary folders and the loser of the
    final rename keeps the winner's folder.
    """
    if (folder / marker).is_file():
        return folder
    from sdrt.errors import SdrtError

    _prune_stale(folder)

    if folder.exists():  # a broken leftover (its marker missing): replace it
        shutil.rmtree(folder, ignore_errors=True)
    try:
        make(folder)
    except SdrtError:
        if not (folder / marker).is_file():
            raise
    return folder


def _prune_stale(folder: Path, max_age_s: float = 3600.0) -> None:
    """Drop cached folders of the same model under older keys (code or versions changed since),
    once they are an hour old: a concurrent run of older code may still be reading a newer one.
    A cache shared by several checkouts (SDRT_TEST_CACHE_DIR) is never pruned: their keys differ."""
    if os.environ.get("SDRT_TEST_CACHE_DIR"):
        return
    prefix = folder.name.rsplit("-", 1)[0] + "-"
    now = time.time()
    for old in folder.parent.glob(prefix + "*"):
        if old != folder and old.name.rsplit("-", 1)[0] + "-" == prefix and now - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def preset_source(_model_cache: Path) -> Callable[[str], Path]:
    """preset name -> its diffusers folder (written once per cache key)."""

    def source(name: str) -> Path:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sdrt.export.presets import write_preset

        folder = _model_cache / f"src-{name}-{_cache_key('src', name)}"
        return _cached(folder, "model_index.json", lambda out: write_preset(name, out))

    return source


@pytest.fixture(scope="session")
def onnx_export(_model_cache: Path, preset_source: Callable[[str], Path]) -> Callable[..., Path]:
    """(preset, precision, components) -> an ONNX model folder exported from the preset's folder."""

    def export(name: str, precision: str = "fp32", components: tuple[str, ...] | None = None,
               hidden_states: bool = False) -> Path:
        from sdrt.export.exporter import export_model

        src = preset_source(name)
        tag = ("-".join(components) if components else "all") + ("-hidden" if hidden_states else "")
        folder = _model_cache / f"onnx-{name}-{precision}-{tag}-{_cache_key('onnx', name, precision, tag)}"
        return _cached(folder, "sdrt.json", lambda out: export_model(
            str(src), out, precision=precision, components=components, hidden_states=hidden_states,
            log=lambda line: None))

    return export


@pytest.fixture(scope="session")
def tiny_src(preset_source: Callable[[str], Path]) -> Path:
    return preset_source("tiny")


@pytest.fixture(scope="session")
def tiny_sd21_src(preset_source: Callable[[str], Path]) -> Path:
    return preset_source("tiny-sd21")


@pytest.fixture(scope="session")
def tiny_inpaint_src(preset_source: Callable[[str], Path]) -> Path:
    return preset_source("tiny-inpaint")


@pytest.fixture(scope="session")
def tiny_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny")


@pytest.fixture(scope="session")
def tiny_sd21_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-sd21")


@pytest.fixture(scope="session")
def tiny_inpaint_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-inpaint")


@pytest.fixture(scope="session")
def tiny_sdxl_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-sdxl-refiner")


@pytest.fixture(scope="session")
def tiny_lcm_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-lcm")


@pytest.fixture(scope="session")
def tiny_sd3_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-sd3")


@pytest.fixture(scope="session")
def tiny_sd3_no_t5_onnx(onnx_export: Callable[..., Path]) -> Path:
    """tiny-sd3 exported without its T5 encoder (the runtime feeds zeros in its place, as diffusers does)."""
    return onnx_export("tiny-sd3", components=("text_encoder", "text_encoder_2", "transformer", "vae_decoder",
                                               "vae_encoder"))


@pytest.fixture(scope="session")
def tiny_flux_streamed_onnx(_model_cache: Path) -> Path:
    """tiny-flux written with fp16 weights, exported under --precision fp16 with its T5 (kept fp32: fp16 weights,
    fp32 compute) and its transformer (fp16, its time embedding fp32) streamed (sdrt.export.streamed)."""
    from sdrt.export.exporter import export_model
    from sdrt.export.presets import write_preset

    src = _cached(_model_cache / f"src-tiny-flux-fp16-{_cache_key('src', 'tiny-flux', 'fp16')}", "model_index.json",
                  lambda out: write_preset("tiny-flux", out, storage="fp16"))
    folder = _model_cache / f"onnx-tiny-flux-streamed-{_cache_key('onnx', 'tiny-flux', 'fp16', 'streamed')}"
    return _cached(folder, "sdrt.json", lambda out: export_model(
        str(src), out, precision="fp16", stream=("text_encoder_2", "transformer"), log=lambda line: None))


@pytest.fixture(scope="session")
def tiny_flux_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-flux")


@pytest.fixture(scope="session")
def tiny_flux_schnell_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-flux-schnell")


@pytest.fixture(scope="session")
def tiny_flux_fill_onnx(onnx_export: Callable[..., Path]) -> Path:
    return onnx_export("tiny-flux-fill")


@pytest.fixture(scope="session")
def tiny_sd3_streamed_onnx(_model_cache: Path) -> Path:
    """tiny-sd3 written with fp16 weights (as released SD3 folders are) and exported with its T5 and transformer
    streamed (sdrt.export.streamed: traced without weights, fp16 weights copied from the folder, fp32 compute)."""
    from sdrt.export.exporter import export_model
    from sdrt.export.presets import write_preset

    src = _cached(_model_cache / f"src-tiny-sd3-fp16-{_cache_key('src', 'tiny-sd3', 'fp16')}", "model_index.json",
                  lambda out: write_preset("tiny-sd3", out, storage="fp16"))
    folder = _model_cache / f"onnx-tiny-sd3-streamed-{_cache_key('onnx', 'tiny-sd3', 'fp16', 'streamed')}"
    return _cached(folder, "sdrt.json", lambda out: export_model(str(src), out, stream=("text_encoder_3", "transformer"),
                                                                 log=lambda line: None))


@pytest.fixture(scope="session")
def controlnet_export(_model_cache: Path) -> Callable[..., Path]:
    """(ControlNet preset, seed, precision) -> an exported ONNX ControlNet folder (its diffusers source
    folder beside it, what the reference loads), cached like the model exports."""

    def export(name: str, seed: int = 0, precision: str = "fp32") -> Path:
        from sdrt.export.controlnet_presets import write_controlnet
        from sdrt.export.exporter import export_model

        tag = f"{name}-{seed}"
        src = _cached(_model_cache / f"src-{tag}-{_cache_key('src', tag)}", "config.json",
                      lambda out: write_controlnet(name, out, seed=seed))
        folder = _model_cache / f"onnx-{tag}-{precision}-{_cache_key('onnx', tag, precision)}"
        return _cached(folder, "sdrt.json", lambda out: export_model(str(src), out, precision=precision,
                                                                     log=lambda line: None))

    return export


@pytest.fixture(scope="session")
def tiny_controlnet_onnx(controlnet_export: Callable[..., Path]) -> Path:
    """An exported ControlNet for ``tiny`` (and the tiny presets of its layout), seeded non-zero weights."""
    return controlnet_export("tiny-controlnet")


@pytest.fixture(scope="session")
def shapes_controlnet_onnx(controlnet_export: Callable[..., Path]) -> Path:
    """The exported trained ControlNet of the shapes preset (the control mask -> the shape lands there)."""
    return controlnet_export("shapes-controlnet")


@pytest.fixture(scope="session")
def ip_adapter_export(_model_cache: Path) -> Callable[..., Path]:
    """(IP-Adapter preset, seed, precision) -> an exported ONNX IP-Adapter folder (its diffusers-layout source
    folder beside it, what the reference loads), cached like the model exports."""

    def export(name: str, seed: int = 0, precision: str = "fp32") -> Path:
        from sdrt.export.exporter import export_model
        from sdrt.export.ip_adapter_presets import get_ip_adapter_preset, write_ip_adapter

        tag = f"{name}-{seed}"
        src = _cached(_model_cache / f"src-{tag}-{_cache_key('src', tag)}", get_ip_adapter_preset(name).weight_name,
                      lambda out: write_ip_adapter(name, out, seed=seed))
        folder = _model_cache / f"onnx-{tag}-{precision}-{_cache_key('onnx', tag, precision)}"
        return _cached(folder, "sdrt.json", lambda out: export_model(str(src), out, precision=precision,
                                                                     log=lambda line: None))

    return export


@pytest.fixture(scope="session")
def tiny_ip_adapter_onnx(ip_adapter_export: Callable[..., Path]) -> Path:
    """An exported IP-Adapter for ``tiny`` (seeded weights that visibly steer it)."""
    return ip_adapter_export("tiny-ip-adapter")


# -- loaded pipelines (sdrt and the diffusers reference) -----------------------------------------
@pytest.fixture(scope="session")
def pipelines(tiny_onnx, tiny_sd21_onnx, tiny_inpaint_onnx):
    """preset name -> sdrt Pipeline on ort-cpu (loaded once)."""
    from sdrt.runtime import Pipeline

    folders = {"tiny": tiny_onnx, "tiny-sd21": tiny_sd21_onnx, "tiny-inpaint": tiny_inpaint_onnx}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = Pipeline.load(folders[name], backend="ort-cpu")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def references(tiny_onnx, tiny_sd21_onnx, tiny_inpaint_onnx):
    """preset name -> sdrt.reference.Reference (diffusers, fp32, CPU; loaded once)."""
    from sdrt.reference import load_reference

    folders = {"tiny": tiny_onnx, "tiny-sd21": tiny_sd21_onnx, "tiny-inpaint": tiny_inpaint_onnx}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_reference(folders[name])
        return cache[name]

    return get
