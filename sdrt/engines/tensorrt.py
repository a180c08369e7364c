"""The `tensorrt` and `tensorrt_rtx` backends: engines from `sdrt build`, loaded only when they match.

A backend holds what its engines share (the TensorRT module, one Runtime, one CUDA stream, one
activation block). `load(manifest, component)` finds the component's engines in the store and
deserializes one at once (a corrupt engine fails at load, not mid-call); `prepare(dims)` switches
to another stored engine when that one's profile does not cover the dims. An engine built from another
ONNX, by another TensorRT or for another GPU is never loaded: the error says how to rebuild. With
``auto_build=True`` a missing engine is built on the spot, static for the dims asked.

TensorRT-RTX engines are portable across RTX GPUs (their kernels are compiled just in time on the
user's GPU), so their identity records "portable" instead of one GPU, and `get_engine_validity`
refuses one that cannot run here.

UNVERIFIED ON A GPU: see trt_runtime. tensorrt, polygraphy and cuda-python are imported lazily.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from sdrt import spec
from sdrt.engines import trt_api, trt_buffers, trt_cache, trt_profiles
from sdrt.engines.base import SHARED_OPTIONS, Backend
from sdrt.engines.trt_runtime import Cuda, Session, TensorRTEngine
from sdrt.errors import EngineMissing, SdrtError

#: what a TensorRT-RTX engine's identity records instead of one GPU
PORTABLE = "portable (TensorRT-RTX default compute capabilities)"


def open_toolkit(flavor_name: str, need_gpu: bool, device: int = 0) -> tuple[Any, trt_api.Features, Cuda | None]:
    """Import the TensorRT flavor (and cuda-python and a GPU when needed), or raise the one-line error."""
    trt = trt_api.import_trt(flavor_name)
    features = trt_api.detect(trt, flavor_name)
    trt_api.require_runtime_api(features)
    if not need_gpu:
        return trt, features, None
    cuda = Cuda(trt_api.import_cudart(flavor_name.replace('_', '-')))
    cuda.require_gpu(trt_api.FLAVORS[flavor_name].label, device)
    return trt, features, cuda


def target_of(features: trt_api.Features, cuda: Cuda | None, device: int = 0) -> str:
    """The GPU part of an engine's identity: this GPU for TensorRT, portable for TensorRT-RTX."""
    if not features.needs_gpu_to_build:
        return PORTABLE
    if cuda is None:
        raise SdrtError("TensorRT needs a GPU to build and load engines")
    return cuda.device_target(device)


def guidance_of(component: spec.ComponentSpec, dims: Mapping[str, int]) -> bool:
    """An odd batch of a component that guidance doubles (the UNet) can only be a run without it."""
    doubled = component.batch_per_image(True)[0] == 2
    return not (doubled and int(dims.get("B", 2)) % 2)


def no_engine_error(folder: Path, backend: str, comp: spec.ComponentSpec, choice: trt_cache.Choice,
                    dims: Mapping[str, int] | None, vae_scale_factor: int) -> EngineMissing:
    """Why no engine can be loaded, and the `sdrt build` command that makes one."""
    component = comp.name
    root = trt_cache.store_root(folder, backend)
    if dims:
        guidance = guidance_of(comp, dims)
        request = trt_profiles.request_for(comp, dims, vae_scale_factor, guidance)
    else:
        guidance, request = True, trt_profiles.ProfileRequest()
    if choice.fresh and dims:
        wanted = trt_profiles.describe(comp, trt_profiles.DimRange(dict(dims), dict(dims), dict(dims)),
                                       vae_scale_factor, guidance)
        built = "; ".join(trt_profiles.describe(comp, e.profile, vae_scale_factor, guidance)
                          for e in choice.fresh)
        cmd = trt_profiles.build_command(str(folder), backend, request, (component,))
        return EngineMissing(f"no {backend} engine for {component} covers {wanted} (built: {built}): "
                         f"build one with `{cmd}`")
    if choice.stale:
        entry, reasons = choice.stale[0]
        cmd = trt_profiles.build_command(str(folder), backend, request, (component,), force=True)
        return EngineMissing(f"the {backend} engine {entry.path.name} for {component} was built from "
                         f"{', '.join(reasons)}; a stale engine is never loaded: rebuild with `{cmd}`")
    cmd = trt_profiles.build_command(str(folder), backend, request, (component,))
    return EngineMissing(f"no {backend} engine for {component} in {root}: build it with `{cmd}`")


def default_request(manifest) -> trt_profiles.ProfileRequest:
    """The build request of the model's default call: one image at its default size, with guidance
    (Flux: without its opt-in true CFG), its text tokens (a T5 model's default max_sequence_length: SD3's
    as recorded at export, else the most the export allows, Flux's 512; else one CLIP chunk)."""
    pipeline = manifest.pipeline
    tokens = int(pipeline.get("default_max_sequence_length") or pipeline.get("max_sequence_length")
                 or spec.TOKEN_LENGTH)
    return trt_profiles.ProfileRequest(tokens=tokens, guidance=manifest.family_spec.guidance == "cfg")


def initial_entry(manifest, component: spec.ComponentSpec,
                  fresh: tuple[trt_cache.Entry, ...]) -> trt_cache.Entry | None:
    """The engine deserialized at load: the one covering the model's default call (one image at its
    default size, with guidance), else the widest; None when nothing is built yet (auto_build)."""
    if not fresh:
        return None
    default = trt_profiles.dim_range(component, default_request(manifest), manifest.sizes,
                                     manifest.default_image_size).opt
    covering = trt_cache.choose(list(fresh), dict(fresh[0].identity), default).entry
    if covering is not None:
        return covering
    return max(fresh, key=lambda e: tuple(e.profile.max[k] - e.profile.min[k] for k in sorted(e.profile.max)))


def _stderr(msg: str) -> None:
    print(f"sdrt: {msg}", file=sys.stderr, flush=True)


class TensorRTBackend(Backend):
    """TensorRT engines, one stream and one shared activation block for the whole pipeline."""

    name = "tensorrt"
    options = {
        "cuda_graph": SHARED_OPTIONS["cuda_graph"],
        "device_id": SHARED_OPTIONS["device_id"],
        "share_activations": "one activation block for all engines, sized to the largest (default on)",
        "auto_build": "build a missing engine on the spot, static for the dims asked (default off)",
        "build_options": "trt_build.BuildOptions for auto_build (optimization level, workspace)",
        "log": "callable receiving one-line progress messages (default: stderr)",
    }

    def __init__(self, *, cuda_graph: bool = False, device_id: int = 0, share_activations: bool = True,
                 auto_build: bool = False, build_options: Any = None, log: Callable[[str], None] | None = None):
        self.cuda_graph = bool(cuda_graph)
        self.device_id = device_id
        self.share_activations = share_activations
        self.auto_build = auto_build
        self.build_options = build_options
        self.log = log or _stderr
        self._session: Session | None = None
        self._target: str | None = None

    @classmethod
    def check_available(cls) -> None:
        open_toolkit(cls.name, need_gpu=True)

    def session(self) -> Session:
        if self._session is None:
            trt, features, cuda = open_toolkit(self.name, need_gpu=True, device=self.device_id)
            cuda.set_device(self.device_id)
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            shared = trt_buffers.SharedActivations(cuda.malloc, cuda.free) if self.share_activations else None
            self._session = Session(trt, features, runtime, cuda, cuda.stream_create(), shared, self.log)
            self._target = target_of(features, cuda, self.device_id)
        return self._session

    def load(self, manifest, component: str) -> TensorRTEngine:
        s = self.session()
        root = trt_cache.store_root(manifest.folder, self.name)
        ident = trt_cache.identity(component, manifest.component_hash(component),
                                   s.features.library, self._target, manifest.precision(component))
        f = manifest.sizes.vae_scale_factor
        comp = manifest.spec.component(component)
        first = trt_cache.choose(trt_cache.read_entries(root, component), ident, {})
        if not first.fresh and not self.auto_build:
            raise no_engine_error(manifest.folder, self.name, comp, first, None, f)
        for entry, reasons in first.stale:
            self.log(f"ignoring stale engine {entry.path.name} (built from {', '.join(reasons)})")
        initial = initial_entry(manifest, comp, first.fresh)

        def find(dims: Mapping[str, int]) -> trt_cache.Entry:
            choice = trt_cache.choose(trt_cache.read_entries(root, component), ident, dims)
            if choice.entry is not None:
                return choice.entry
            if not self.auto_build:
                raise no_engine_error(manifest.folder, self.name, comp, choice, dims, f)
            return self._build_for(manifest, component, dims)

        return TensorRTEngine(component, manifest.values, manifest.precision(component), session=s, find=find,
                              component_spec=comp,
                              cuda_graph=self.cuda_graph and component == manifest.family_spec.denoiser,
                              entry=initial)

    def reweight(self, manifest, component: str, engine: TensorRTEngine, overrides, restore,
                 external=frozenset()) -> TensorRTEngine:
        """LoRA: refit the engine in place (engines built with `sdrt build --refit`); see trt_refit."""
        from sdrt.engines import trt_refit

        return trt_refit.reweight(engine, overrides, restore)

    def _build_for(self, manifest, component: str, dims: Mapping[str, int]) -> trt_cache.Entry:
        from sdrt.engines import trt_build

        s = self.session()
        comp = manifest.spec.component(component)
        request = trt_profiles.request_for(comp, dims, manifest.sizes.vae_scale_factor, guidance_of(comp, dims))
        self.log(f"no {self.name} engine for {component} at {dict(dims)}: building one (once; it is cached)")
        return trt_build.build_component(manifest, component, self.name, request,
                                         self.build_options or trt_build.BuildOptions(), trt=s.trt,
                                         features=s.features, target=self._target, log=self.log)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


class TensorRTRTXBackend(TensorRTBackend):
    """TensorRT-RTX: the same code path; portable engines, validity checked before loading."""

    name = "tensorrt_rtx"
