"""Which TensorRT is installed and what it can do: one code path, small adapters where APIs differ.

`tensorrt` (8.5+, 10, 11) and `tensorrt_rtx` share most of their Python API. Where they differ, a
feature flag read from the module (never from a version string alone) picks the call:

====================  ======================================================================
feature               why it matters
====================  ======================================================================
strongly_typed        NetworkDefinitionCreationFlag.STRONGLY_TYPED: an fp16 ONNX builds as fp16
fp16_flag             BuilderFlag.FP16: the fallback on versions without strong typing (gone in
                      TensorRT 11 and TensorRT-RTX, where every network is strongly typed)
io_tensor_api         set_tensor_address / execute_async_v3 (TensorRT >= 8.5): sdrt's only runtime path
user_managed_memory   ExecutionContextAllocationStrategy.USER_MANAGED: engines share one activation block
device_memory_v2      ICudaEngine.device_memory_size_v2 (the only spelling left in TensorRT 11)
engine_validity       Runtime.get_engine_validity (TensorRT-RTX): a foreign engine is refused before load
timing_cache          TensorRT's tactic timing cache; TensorRT-RTX ignores it and it would force a GPU
needs_gpu_to_build    TensorRT times tactics on the GPU; TensorRT-RTX builds ahead of time on a CPU
====================  ======================================================================

The modules are imported lazily, only by the functions below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sdrt.errors import BackendUnavailable, SdrtError


@dataclass(frozen=True)
class Flavor:
    name: str          # sdrt backend name
    module: str        # Python module
    label: str         # what users call it
    install: str       # how to get it, for the one-line error
    polygraphy_env: str  # POLYGRAPHY_USE_TENSORRT_RTX value that makes polygraphy import `module`


FLAVORS: dict[str, Flavor] = {
    "tensorrt": Flavor(
        "tensorrt", "tensorrt", "TensorRT",
        "pip install 'sdrt[tensorrt]' (the tensorrt wheels fetch their libraries from NVIDIA's "
        "package server, which must be reachable)", "0"),
    "tensorrt_rtx": Flavor(
        "tensorrt_rtx", "tensorrt_rtx", "TensorRT-RTX",
        "pip install 'sdrt[tensorrt-rtx]' (NVIDIA's TensorRT-RTX wheels)", "1"),
}

#: The oldest TensorRT whose runtime API sdrt uses (named IO tensors, execute_async_v3).
MIN_TENSORRT = (8, 5)


def flavor(name: str) -> Flavor:
    if name not in FLAVORS:
        raise SdrtError(f"unknown TensorRT backend {name!r}; choose one of: {', '.join(FLAVORS)}")
    return FLAVORS[name]


def import_module(name: str, what: str, install: str) -> ModuleType:
    """Import an optional module or raise the one-line 'not installed' error."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendUnavailable(f"{what} is not installed ({e}): {install}") from None


def import_trt(flavor_name: str) -> ModuleType:
    fl = flavor(flavor_name)
    return import_module(fl.module, f"{fl.label} (Python module {fl.module})", fl.install)


def import_cudart(extra: str = "tensorrt") -> ModuleType:
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (12.6+) or the older `cuda.cudart`."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable(f"cuda-python is not installed (no cuda.bindings.runtime): "
                             f"pip install 'sdrt[{extra}]'")


def parse_version(text: str) -> tuple[int, ...]:
    """'10.8.0.43' -> (10, 8, 0, 43); non-numeric tails ('10.0.0b6') keep their leading digits."""
    parts = []
    for piece in str(text).split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class Features:
    flavor: str
    version: str
    strongly_typed: bool
    fp16_flag: bool
    io_tensor_api: bool
    user_managed_memory: bool
    device_memory_v2: bool
    engine_validity: bool
    timing_cache: bool
    needs_gpu_to_build: bool

    @property
    def major(self) -> int:
        v = parse_version(self.version)
        return v[0] if v else 0

    @property
    def library(self) -> str:
        """What the engine cache key records: module and exact version."""
        return f"{FLAVORS[self.flavor].module} {self.version}"


def _has(obj: Any, *path: str) -> bool:
    for name in path:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def detect(trt: Any, flavor_name: str) -> Features:
    """Read what this TensorRT module offers. Works on any object with TensorRT's attribute names."""
    rtx = flavor_name == "tensorrt_rtx"
    return Features(
        flavor=flavor_name,
        version=str(getattr(trt, "__version__", "0")),
        strongly_typed=_has(trt, "NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
        fp16_flag=_has(trt, "BuilderFlag", "FP16"),
        io_tensor_api=_has(trt, "ICudaEngine", "num_io_tensors")
        and _has(trt, "IExecutionContext", "execute_async_v3"),
        user_managed_memory=_has(trt, "ExecutionContextAllocationStrategy", "USER_MANAGED"),
        device_memory_v2=_has(trt, "ICudaEngine", "device_memory_size_v2"),
        engine_validity=_has(trt, "Runtime", "get_engine_validity"),
        timing_cache=not rtx and _has(trt, "IBuilderConfig", "create_timing_cache"),
        needs_gpu_to_build=not rtx,
    )


def require_runtime_api(features: Features) -> None:
    """sdrt drives engines only through named IO tensors; older TensorRT gets a clear upgrade line."""
    if not features.io_tensor_api:
        want = ".".join(map(str, MIN_TENSORRT))
        raise BackendUnavailable(
            f"{FLAVORS[features.flavor].label} {features.version} is too old: sdrt needs {want} or newer "
            f"(set_tensor_address, execute_async_v3): pip install -U 'sdrt[tensorrt]'")


@dataclass(frozen=True)
class Typing:
    """How a network is typed for the builder."""

    strongly_typed: bool  # the ONNX's own dtypes decide each layer's precision
    fp16_flag: bool       # weakly typed: the builder may pick fp16 kernels


def network_typing(features: Features, precision: str) -> Typing:
    """fp16 policy: strongly typed from an fp16 ONNX; the FP16 builder flag where that is missing."""
    if features.strongly_typed:
        return Typing(strongly_typed=True, fp16_flag=False)
    if precision == "fp16":
        if not features.fp16_flag:
            raise SdrtError(f"{FLAVORS[features.flavor].label} {features.version} offers neither strongly "
                            f"typed networks nor the FP16 builder flag: upgrade to TensorRT 10")
        return Typing(strongly_typed=False, fp16_flag=True)
    return Typing(strongly_typed=False, fp16_flag=False)


def device_memory_size(engine: Any, features: Features) -> int:
    """Activation memory one context of this engine needs (the v2 name is the only one in TRT 11)."""
    return int(engine.device_memory_size_v2 if features.device_memory_v2 else engine.device_memory_size)


def create_context(trt: Any, engine: Any, features: Features, shared_memory: bool) -> Any:
    """One execution context; without its own activation memory when engines share one block."""
    if shared_memory and features.user_managed_memory:
        return engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if shared_memory and hasattr(engine, "create_execution_context_without_device_memory"):
        return engine.create_execution_context_without_device_memory()  # TensorRT 8.x
    return engine.create_execution_context()


def shares_memory(engine: Any, features: Features) -> bool:
    """Whether contexts of this API can run on a block sdrt hands them (set_device_memory)."""
    return features.user_managed_memory or hasattr(engine, "create_execution_context_without_device_memory")


#: EngineValidity member name -> whether sdrt loads the engine.
VALIDITY_LOADS = {"VALID": True, "SUBOPTIMAL": True, "INVALID": False}


def engine_is_valid(runtime: Any, data: bytes, features: Features) -> bool:
    """TensorRT-RTX can say from the header whether an engine runs here; TensorRT cannot (True)."""
    if not features.engine_validity:
        return True
    result = runtime.get_engine_validity(data)
    validity = result[0] if isinstance(result, tuple) else result
    return VALIDITY_LOADS.get(getattr(validity, "name", str(validity)), False)
