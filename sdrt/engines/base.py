"""The surface every engine backend offers, and the backend registry.

One engine runs one component (text_encoder, unet, vae_decoder, vae_encoder). Its life:

1. ``prepare(dims)`` — allocate one buffer per tensor for these dynamic dims (``{"B", "h", "w", "L"}``)
   and bind them once. Calling it again with the same dims does nothing (no allocation); new dims
   re-allocate and re-bind.
2. ``set_input(name, array)`` — copy a host array into the bound input buffer (in place).
   An input that is not set again keeps its value (text embeddings stay bound for a whole loop).
3. ``run(feeds=None)`` — ``set_input`` for each feed, execute, return the outputs as host arrays.
   The returned arrays are the engine's own preallocated host buffers, overwritten by the next
   run: copy what you keep.
4. ``buffers`` — the bound buffer objects by tensor name (tests check they are the same objects
   on every step), ``close()`` frees them.

Backend options are one vocabulary: each backend declares the keywords it takes in ``options``
(name -> what it does), the same word means the same thing everywhere (``cuda_graph``,
``device_id``), and an option a backend does not take is a one-line error naming the ones it does.
With ``auto``, options narrow the choice to the usable backends that take all of them.

Backends are imported lazily, each only with its own library.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, ClassVar, Mapping

import numpy as np

from sdrt import spec
from sdrt.errors import BackendUnavailable, SdrtError

#: name -> (module, class, pip extra that installs it). "auto" tries them in this order.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "tensorrt": ("sdrt.engines.tensorrt", "TensorRTBackend", "sdrt[tensorrt]"),
    "tensorrt_rtx": ("sdrt.engines.tensorrt", "TensorRTRTXBackend", "sdrt[tensorrt-rtx]"),
    "ort-cuda": ("sdrt.engines.ort", "OrtCudaBackend", "sdrt[gpu]"),
    "ort-cpu": ("sdrt.engines.ort", "OrtCpuBackend", "sdrt"),
    "openvino": ("sdrt.engines.openvino", "OpenVinoBackend", "sdrt[openvino]"),
}
#: GPU backends first; the CPU backends' order comes from sdrt.engines.auto (a measured table)
AUTO_ORDER = ("tensorrt", "tensorrt_rtx", "ort-cuda", "ort-cpu", "openvino")
#: runtime precisions ("f32": the exported graph's own arithmetic; bf16/f16 converted at compile)
RUNTIME_PRECISIONS = ("f32", "bf16", "f16")


class Engine(abc.ABC):
    """One component's engine: bound buffers reused across calls."""

    component: str
    precision: str

    def __init__(self, component: str, model_values: Mapping[str, int], precision: str,
                 component_spec: spec.ComponentSpec):
        self.component = component
        self.spec = component_spec  # the model's own (its family's tensors: manifest.spec.component(name))
        self.model_values = dict(model_values)
        self.precision = precision
        self.dims: dict[str, int] | None = None

    def full_dims(self, dims: Mapping[str, int]) -> dict[str, int]:
        """The dims as ints, with ``L`` (the text tokens the denoiser attends to) defaulting to the
        model's token length ``S`` where the component uses it and the caller left it out."""
        full = {k: int(v) for k, v in dims.items()}
        if "L" not in full and "L" in spec.used_symbols(self.spec):
            full["L"] = int(self.model_values["S"])
        return full

    def shapes_for(self, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return spec.shapes(self.spec, {**self.model_values, **self.full_dims(dims)})

    def dtype(self, tensor: str) -> np.dtype:
        return np.dtype(spec.dtype_of(self.spec.tensor(tensor), self.precision))

    @abc.abstractmethod
    def prepare(self, dims: Mapping[str, int]) -> None: ...

    @abc.abstractmethod
    def set_input(self, name: str, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def execute(self) -> dict[str, np.ndarray]:
        """Run on the bound buffers; return the outputs as host arrays."""

    def run(self, feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        for name, array in (feeds or {}).items():
            self.set_input(name, array)
        return self.execute()

    @property
    @abc.abstractmethod
    def buffers(self) -> Mapping[str, Any]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


#: what the options shared by several backends mean (a backend's own table reuses these words)
SHARED_OPTIONS: dict[str, str] = {
    "cuda_graph": "replay the UNet step as a CUDA graph (one fixed shape per capture)",
    "device_id": "the CUDA device to run on (default 0)",
}


class Backend(abc.ABC):
    """Creates engines for a model folder. One instance per pipeline; ``close()`` frees what it shares."""

    name: str
    #: the keyword options the constructor takes -> what each does (see SHARED_OPTIONS)
    options: ClassVar[Mapping[str, str]] = {}

    @property
    def runtime_precision(self) -> str | None:
        """The precision it computes in, when it converts at run time (None: the exported graph's)."""
        return None

    @classmethod
    @abc.abstractmethod
    def check_available(cls) -> None:
        """Raise BackendUnavailable (one line, naming the pip extra) when it cannot run here."""

    @classmethod
    def check_options(cls, given: Mapping[str, Any]) -> None:
        """One line naming the valid options when ``given`` holds one this backend does not take."""
        unknown = [k for k in given if k not in cls.options]
        if unknown:
            others = offering(unknown[0])
            where = f" ({unknown[0]} is an option of {', '.join(others)})" if others else ""
            raise SdrtError(f"backend {cls.name} has no option {unknown[0]!r}{where}; its options: "
                            f"{', '.join(cls.options) or 'none'}")

    @abc.abstractmethod
    def load(self, manifest, component: str) -> Engine:
        """The component's engine, ready to prepare: a broken or missing engine fails here, not later."""

    def attention_bytes(self, denoiser_config: Mapping[str, Any], batch: int, h: int, w: int) -> int | None:
        """Peak bytes of the largest attention buffer one denoiser call materializes at this latent
        size and batch, for a backend that computes attention unfused (the runtime's memory guard
        refuses a call that cannot fit); None: no estimate (memory-efficient attention, or unknown)."""
        return None

    # -- LoRA as side paths (a backend that adds x @ A @ B beside each layer; see sdrt.runtime.lora) ---
    @property
    def lora_branches(self) -> bool:
        """Whether this backend takes LoRAs as side paths (`set_lora_factors`) instead of merged weights."""
        return False

    def branchable(self, manifest, component: str) -> frozenset[str]:
        """The initializers that get a side path (a LoRA on others is merged instead)."""
        return frozenset()

    def set_lora_factors(self, manifest, component: str, engine: Engine,
                         factors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Engine:
        """The component's engine with these low-rank factors (initializer -> (A, B)) as side paths."""
        raise SdrtError(f"backend {self.name} has no LoRA side paths: the LoRA is merged instead")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the backend's engines share (streams, memory); engines are closed by their owner."""

    def release_for_reweight(self, engine: Engine) -> None:  # noqa: B027 - optional hook
        """Free the weights `reweight` is about to rebuild, before the merged ones are computed, so the
        old and the new copy of a UNet never coexist (backends that rebuild: ORT, OpenVINO). Default:
        nothing (TensorRT refits the live engine in place)."""

    def reweight(self, manifest, component: str, engine: Engine, overrides: Mapping[str, np.ndarray],
                 restore: Mapping[str, np.ndarray], external: frozenset[str] = frozenset()) -> Engine:
        """The component's engine with these initializers replaced (LoRA; sdrt.runtime.lora).

        `overrides`: initializer name -> new value, the full set that differs from the export;
        `restore`: base values of initializers overridden before and not now; `external`: the
        overrides whose initializers live in an external-data file. Returns the engine to
        use from now on (a new one, or `engine` itself updated in place).
        """
        raise SdrtError(f"backend {self.name} cannot change weights at run time (LoRA): use ort-cpu, ort-cuda "
                        f"or tensorrt")


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise SdrtError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    module, cls, extra = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(f"backend {name} is not installed ({e}): pip install '{extra}'") from None
    return getattr(mod, cls)


def available_backends() -> list[str]:
    """Backends that are installed and usable on this machine, fastest first (the CPU ones in the
    order sdrt.engines.auto measured)."""
    from sdrt.engines.auto import cpu_order

    found = []
    for name in [n for n in AUTO_ORDER if n not in ("ort-cpu", "openvino")] + cpu_order():
        try:
            backend_class(name).check_available()
        except SdrtError:
            continue
        found.append(name)
    return found


def offering(option: str) -> list[str]:
    """The backends that take an option (by their declared tables; a backend whose module cannot be
    imported here is left out)."""
    found = []
    for name in BACKENDS:
        try:
            if option in backend_class(name).options:
                found.append(name)
        except SdrtError:
            continue
    return found


def candidates(name: str = "auto", options: Mapping[str, Any] | None = None) -> list[str]:
    """The backends to try, in order: a named one (checked), or for 'auto' every usable one that
    takes all the options (the caller falls back along the list when one has no engine)."""
    options = dict(options or {})
    if name != "auto":
        cls = backend_class(name)
        cls.check_options(options)
        cls.check_available()
        return [name]
    found = available_backends()
    if not found:
        raise BackendUnavailable("no engine backend is usable here: pip install sdrt (onnxruntime)")
    fitting = [b for b in found if all(k in backend_class(b).options for k in options)]
    if not fitting:
        missing = next(k for k in options if not all(k in backend_class(b).options for b in found))
        offered = offering(missing)
        where = f"it is an option of {', '.join(offered)}" if offered else "no backend has it"
        raise BackendUnavailable(f"no backend usable here takes the option {missing!r} ({where}; usable "
                                 f"here: {', '.join(found)}): drop the option or install a backend that has it")
    return fitting


def resolve_backend(name: str = "auto", options: Mapping[str, Any] | None = None) -> str:
    """'auto' -> the fastest usable backend that takes the options; a named one is checked and returned."""
    return candidates(name, options)[0]


def with_precision(precision: str | None, options: Mapping[str, Any],
                   cls: type[Backend] | None = None) -> dict[str, Any]:
    """Backend options with the run-time precision (f32 | bf16 | f16) in them where it belongs.

    bf16/f16 are an option of the backends that convert at run time (openvino), so 'auto' picks
    among those and a backend without it refuses in one line; f32 runs everywhere, and is passed
    only to a backend (``cls``) that takes the option."""
    if precision is not None and precision not in RUNTIME_PRECISIONS:
        raise SdrtError(f"precision {precision!r} is not one of: {', '.join(RUNTIME_PRECISIONS)}")
    if precision in ("bf16", "f16") or (precision == "f32" and cls is not None and "precision" in cls.options):
        return {**options, "precision": precision}
    return dict(options)


def create_backend(name: str = "auto", precision: str | None = None, **options: Any) -> Backend:
    """A backend instance; options (its declared ones only) go to its constructor."""
    options = with_precision(precision, options)
    cls = backend_class(resolve_backend(name, options))
    return cls(**with_precision(precision, options, cls))
