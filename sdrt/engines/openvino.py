"""OpenVINO engines: the exported ONNX compiled per component for a device, at a runtime precision.

- **Precision** is the CPU plugin's ``INFERENCE_PRECISION_HINT``: ``f32`` (the default; the same
  numbers as the ONNX graph), ``bf16`` (CPUs with AVX512-BF16 or AMX), ``f16`` (devices that list
  FP16). The graph's inputs and outputs stay float32: only the arithmetic inside changes.
- **Buffers**: one numpy array per tensor and shape set, wrapped without a copy in an ``ov.Tensor``
  (``shared_memory=True``) and bound to the infer request once (``set_tensor``); a step copies the
  latents into the bound array, ``infer()`` writes ``out_sample`` into its bound array. Nothing is
  allocated per step.
- **Shapes**: ``dynamic`` (default; one compile serves every size) or ``static`` (the graph is
  reshaped to the prepared dims and compiled for exactly them; a new size compiles again).
- **Cache**: OpenVINO's own compiled-model cache (``CACHE_DIR``), one folder per key under
  ``engines/openvino/`` (see ``openvino_cache``): a second load imports the blob instead of
  compiling.
- **LoRA**: a LoRA on Linear / 1x1 Conv layers goes in as side paths (``set_lora_factors``,
  sdrt.engines.openvino_lora): the branched model, the same for every LoRA, is compiled or imported
  from the cache once and a switch binds new inputs. Otherwise (``reweight``) the component is read
  again, the Constants of the changed initializers replaced by the merged weights
  (``openvino_weights``) and compiled **without the cache**: a merged model is never written to, nor
  served from, the compiled-model cache. Unloading compiles (or imports) the base again.

openvino is imported lazily; devices other than CPU (GPU, NPU, AUTO) are passed through to
OpenVINO unverified (the development machine has only a CPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt.engines import openvino_cache as cache
from sdrt.engines.base import Backend, Engine
from sdrt.engines.openvino_lora import add_branches, branch_tensors
from sdrt.engines.openvino_weights import replace_constants
from sdrt.engines.signal_stack import preserved_signal_stack
from sdrt.errors import BackendUnavailable, SdrtError

EXTRA = "sdrt[openvino]"
#: sdrt's precision names -> OpenVINO's INFERENCE_PRECISION_HINT, and the capability a device lists
PRECISIONS = {"f32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "f16": ("f16", "FP16")}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
SHAPE_POLICIES = ("dynamic", "static")


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise BackendUnavailable(f"backend openvino is not installed ({e}): pip install '{EXTRA}'") from None
    return openvino


def _one_line(error: BaseException, limit: int = 240) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.strip().startswith("Check ")]
    text = " ".join(lines) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def device_capabilities(core, device: str) -> list[str]:
    try:
        return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # AUTO/HETERO have none of their own
        return []


def check_device(core, device: str) -> None:
    """A device OpenVINO does not see is an error that lists the ones it does."""
    present = list(core.available_devices)
    base = device.split(":", 1)[0].split(".", 1)[0]
    if base in ("AUTO", "HETERO", "MULTI") or device in present:
        return
    raise SdrtError(f"OpenVINO device {device!r} is not present here; present: {', '.join(present) or 'none'}: "
                    f"pass --device {present[0] if present else 'CPU'}")


def check_precision(core, device: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise SdrtError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if device.startswith(("AUTO", "HETERO", "MULTI")):
        return
    capability = PRECISIONS[precision][1]
    caps = device_capabilities(core, device)
    if caps and capability not in caps:
        raise SdrtError(f"OpenVINO {device} has no {precision} support on this machine (it lists "
                        f"{', '.join(caps)}): use --precision f32")


class OpenVinoEngine(Engine):
    """One component on one compiled model and one infer request, bound once per shape set."""

    def __init__(self, backend: "OpenVinoBackend", manifest, component: str):
        super().__init__(component, manifest.values, manifest.precision(component),
                         component_spec=manifest.spec.component(component))  # the manifest's family
        self.backend = backend
        self.manifest = manifest
        self.compiled = None
        self.request = None
        self.loaded_from_cache: bool | None = None
        self.compile_seconds: float | None = None
        self.overrides: dict[str, np.ndarray] = {}  # LoRA-merged initializers (kept alive: shared memory)
        self.branched = False  # compiled with LoRA side paths (sdrt.engines.openvino_lora)
        self.factors: dict[str, np.ndarray] = {}  # their bound A/B inputs (kept alive: shared memory)
        self._host: dict[str, np.ndarray] = {}
        self._tensors: dict[str, Any] = {}
        self._outputs: list[str] = []
        if backend.shapes == "dynamic":
            self.compile(None)

    def compile(self, dims: Mapping[str, int] | None) -> None:
        """(Re)compile this component through the backend (dims: a static shape set, None: dynamic),
        with its current LoRA state (merged overrides or side paths), and bind a new infer request."""
        self.request = None
        self.compiled, self.loaded_from_cache, self.compile_seconds = self.backend.compile(
            self.manifest, self.component, None if dims is None else self.shapes_for(dims), self.overrides,
            branched=self.branched)
        self._outputs = [n for o in self.compiled.outputs for n in o.get_names()]
        self.request = self.compiled.create_infer_request()
        self.bind_factors()

    def bind_factors(self) -> None:
        """Bind the LoRA side paths' A/B arrays (no copy); they stay bound across calls."""
        if not self.factors:
            return
        ov = import_openvino()
        for name, array in self.factors.items():
            self.request.set_tensor(name, ov.Tensor(array, shared_memory=True))

    # -- buffers ---------------------------------------------------------------------------------
    def prepare(self, dims: Mapping[str, int]) -> None:
        dims = self.full_dims(dims)
        if self.dims == dims:
            return
        if self.backend.shapes == "static":
            self.compile(dims)
        ov = import_openvino()
        from sdrt import spec

        shapes = spec.shapes(self.spec, {**self.model_values, **dims}, include_optional=True)
        names = list(self.spec.input_names) + [n for n in self.spec.output_names if n in self._outputs]
        self._host, self._tensors = {}, {}
        for name in names:
            host = np.zeros(shapes[name], dtype=self.dtype(name))
            tensor = ov.Tensor(host, shared_memory=True)  # wraps `host`: OpenVINO reads/writes it in place
            self.request.set_tensor(name, tensor)
            self._host[name], self._tensors[name] = host, tensor
        self.dims = dims

    def set_input(self, name: str, array: np.ndarray) -> None:
        host = self._host[name]
        if np.shape(array) != host.shape:
            raise ValueError(f"{self.component}.{name}: got shape {np.shape(array)}, bound {host.shape}")
        np.copyto(host, array, casting="same_kind")

    def execute(self) -> dict[str, np.ndarray]:
        if self.dims is None:
            raise RuntimeError(f"{self.component}: prepare(dims) before execute()")
        self.request.infer()
        return {n: self._host[n] for n in self.spec.output_names if n in self._host}

    @property
    def buffers(self) -> Mapping[str, Any]:
        """Bound ``ov.Tensor``s by tensor name (each wraps the engine's host array)."""
        return dict(self._tensors)

    def close(self) -> None:
        self.request, self.compiled, self._tensors, self._host, self.dims = None, None, {}, {}, None


class OpenVinoBackend(Backend):
    """OpenVINO on one device. ``precision``: f32 | bf16 | f16; ``shapes``: dynamic | static;
    ``num_threads`` / ``num_streams`` / ``performance_hint``: the plugin's own properties
    (None keeps OpenVINO's default); ``cache``: keep compiled models under engines/openvino/;
    ``config``: any further OpenVINO properties, passed as they are."""

    name = "openvino"
    options = {
        "device": "OpenVINO device: CPU (default), GPU, NPU, AUTO (only CPU verified)",
        "precision": f"run-time precision, one of {', '.join(PRECISIONS)} (default f32; bf16 needs AVX512-BF16 or AMX)",
        "shapes": f"one of {', '.join(SHAPE_POLICIES)}: one compile for every size, or one per prepared size",
        "num_threads": "INFERENCE_NUM_THREADS (default: OpenVINO's, the physical cores)",
        "num_streams": "NUM_STREAMS (default: OpenVINO's for the hint)",
        "performance_hint": f"one of {', '.join(PERFORMANCE_HINTS)} (default LATENCY)",
        "cache": "keep compiled models under engines/openvino/ (default on)",
        "config": "further OpenVINO properties, passed as they are (key -> value)",
        "log": "where cache messages go (default: stderr)",
    }

    def __init__(self, *, device: str = "CPU", precision: str = "f32", shapes: str = "dynamic",
                 num_threads: int | None = None, num_streams: int | None = None,
                 performance_hint: str | None = "LATENCY", cache: bool = True,
                 config: Mapping[str, Any] | None = None, log=None):
        if shapes not in SHAPE_POLICIES:
            raise SdrtError(f"shapes {shapes!r} is not one of: {', '.join(SHAPE_POLICIES)}")
        if performance_hint is not None and performance_hint not in PERFORMANCE_HINTS:
            raise SdrtError(f"performance_hint {performance_hint!r} is not one of: {', '.join(PERFORMANCE_HINTS)}")
        ov = import_openvino()
        self.device = str(device).upper()
        with preserved_signal_stack():  # see sdrt/engines/signal_stack.py
            self.core = ov.Core()
            check_device(self.core, self.device)
            check_precision(self.core, self.device, precision)
        self.precision = precision
        self.shapes = shapes
        self.num_threads = num_threads
        self.num_streams = num_streams
        self.performance_hint = performance_hint
        self.cache = bool(cache)
        self.extra_config = {str(k): v for k, v in (config or {}).items()}
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.library = ov.get_version()
        self._branches: dict[tuple[str, str], dict] = {}  # (folder, component) -> its LoRA side paths

    @classmethod
    def check_available(cls) -> None:
        import_openvino()

    @property
    def runtime_precision(self) -> str:
        return self.precision

    def properties(self) -> dict[str, Any]:
        """The compile properties (what goes into the cache key, with the device and precision)."""
        props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision][0]}
        if self.performance_hint is not None:
            props["PERFORMANCE_HINT"] = self.performance_hint
        if self.num_threads is not None:
            props["INFERENCE_NUM_THREADS"] = int(self.num_threads)
        if self.num_streams is not None:
            props["NUM_STREAMS"] = int(self.num_streams)
        props.update(self.extra_config)
        if self.device.startswith(("AUTO", "HETERO", "MULTI")):
            props.pop("INFERENCE_PRECISION_HINT", None)
        return props

    def identity(self, manifest, component: str, shapes: Mapping[str, tuple[int, ...]] | None,
                 branched: bool = False) -> dict[str, Any]:
        onnx_hash = manifest.component_hash(component)
        try:
            device_name = str(self.core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception:
            device_name = self.device
        policy = "dynamic" if shapes is None else "static:" + ";".join(
            f"{k}={'x'.join(map(str, v))}" for k, v in sorted(shapes.items()))
        if branched:
            policy += "+lora-branches"
        return cache.identity(component, onnx_hash, self.library, self.device, device_name, self.precision,
                              policy, {k: str(v) for k, v in self.properties().items()})

    def compile(self, manifest, component: str, shapes: Mapping[str, tuple[int, ...]] | None,
                overrides: Mapping[str, np.ndarray] | None = None, *, branched: bool = False):
        """(compiled model, whether it came from the cache, seconds) for one component.

        `overrides` (LoRA, merged weights): initializer -> new value; such a model bypasses the cache.
        `branched`: the model with LoRA side paths (sdrt.engines.openvino_lora), the same for every
        LoRA, so it is cached like the base (its own entry)."""
        ov = import_openvino()
        path = manifest.onnx_path(component)
        props = self.properties()
        if overrides:
            start = time.perf_counter()
            try:
                with preserved_signal_stack():
                    compiled = self._compile_unguarded(ov, path, shapes, props, overrides)
            except SdrtError:
                raise
            except Exception as e:
                raise SdrtError(f"OpenVINO could not compile {path} with LoRA weights for {self.device} "
                                f"({_one_line(e)}): try --precision f32") from None
            return compiled, False, time.perf_counter() - start
        entry = None
        if self.cache:
            entry = cache.entry_dir(manifest.folder, self.identity(manifest, component, shapes, branched))
            try:
                entry.mkdir(parents=True, exist_ok=True)
                props["CACHE_DIR"] = str(entry)
            except OSError:
                entry = None  # a read-only model folder: compile without a cache
        was_complete = entry is not None and cache.is_complete(entry)
        start = time.perf_counter()
        try:
            compiled = self._compile_once(ov, path, shapes, props, (manifest, component) if branched else None)
        except Exception as e:
            if not was_complete:
                raise SdrtError(f"OpenVINO could not compile {path} for {self.device} ({_one_line(e)}): "
                                f"export the model again with --force, or try --precision f32") from None
            self.log(f"openvino: the cached compiled model {entry} could not be loaded ({_one_line(e, 120)}); "
                     f"rebuilding it")
            cache.discard(entry)
            entry.mkdir(parents=True, exist_ok=True)
            compiled = self._compile_once(ov, path, shapes, props, (manifest, component) if branched else None)
            was_complete = False
        seconds = time.perf_counter() - start
        from_cache = _loaded_from_cache(compiled)
        if entry is not None:
            if was_complete and from_cache is False:
                self.log(f"openvino: the cached compiled model in {entry} was unreadable; rebuilt it")
            if not was_complete or from_cache is False:
                cache.mark_complete(entry, self.identity(manifest, component, shapes, branched),
                                    {"compile_seconds": round(seconds, 3)})
        return compiled, from_cache, seconds

    def _compile_once(self, ov, path: Path, shapes, props: dict[str, Any], branched: tuple | None = None):
        """`branched`: (manifest, component) to compile that component's model with LoRA side paths."""
        with preserved_signal_stack():  # see sdrt/engines/signal_stack.py
            if branched is not None:
                return self.core.compile_model(self.branched_model(*branched)[0], self.device, props)
            return self._compile_unguarded(ov, path, shapes, props)

    def branched_model(self, manifest, component: str):
        """(the component's model with LoRA side paths, initializer -> branch); the names are kept."""
        from sdrt.weight_map import WeightMap, linear_initializers

        ov = import_openvino()
        model = self.core.read_model(str(manifest.onnx_path(component)))
        branches = add_branches(ov, model, linear_initializers(WeightMap.load(manifest, component).parameters))
        self._branches[(str(manifest.folder), component)] = branches
        return model, branches

    @property
    def lora_branches(self) -> bool:
        """Whether LoRAs go in as side paths (dynamic shapes only: a static compile has fixed inputs)."""
        return self.shapes == "dynamic"

    def branchable(self, manifest, component: str) -> frozenset[str]:
        """Initializers that get a side path in the branched model (read once per component)."""
        key = (str(manifest.folder), component)
        if key not in self._branches:
            with preserved_signal_stack():
                self.branched_model(manifest, component)
        return frozenset(self._branches[key])

    def set_lora_factors(self, manifest, component: str, engine: "OpenVinoEngine",
                         factors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> "OpenVinoEngine":
        """The LoRAs as side-path inputs: the branched model compiled (or imported) once, then each
        switch binds new A/B arrays to the same infer request."""
        tensors = branch_tensors(self._branches[(str(manifest.folder), component)], factors)
        if engine.branched and engine.compiled is not None:
            engine.factors = tensors
            engine.bind_factors()
            return engine
        engine.close()  # the base (or merged) compiled model goes before the branched one comes
        engine.overrides, engine.branched, engine.factors = {}, True, tensors
        with preserved_signal_stack():
            engine.compile(None)
        return engine

    def _compile_unguarded(self, ov, path: Path, shapes, props: dict[str, Any],
                           overrides: Mapping[str, np.ndarray] | None = None):
        if shapes is None and not overrides:  # from the file: on a cache hit OpenVINO skips reading the ONNX
            return self.core.compile_model(str(path), self.device, props)
        model = self.core.read_model(str(path))
        replace_constants(ov, model, overrides or {}, str(path))
        if shapes is None:
            return self.core.compile_model(model, self.device, props)
        wanted = {}
        for port in model.inputs:
            name = next((n for n in port.get_names() if n in shapes), None)
            if name is not None:
                wanted[port] = ov.PartialShape(list(shapes[name]))
        model.reshape(wanted)
        return self.core.compile_model(model, self.device, props)

    def release_for_reweight(self, engine: OpenVinoEngine) -> None:
        """Drop the compiled model and the merged arrays its Constants share (recompiled in `reweight`)."""
        engine.close()
        engine.overrides = {}

    def reweight(self, manifest, component: str, engine: OpenVinoEngine, overrides: Mapping[str, np.ndarray],
                 restore: Mapping[str, np.ndarray], external: frozenset[str] = frozenset()) -> OpenVinoEngine:
        """The same engine recompiled with `overrides` replacing those initializers' Constants (none: the
        export's own model, from the cache). The old compiled model is released first, so two of
        them never coexist; `restore` is not needed: every compile starts from the file."""
        engine.close()
        engine.overrides = {name: np.ascontiguousarray(value) for name, value in overrides.items()}
        engine.branched, engine.factors = False, {}
        if self.shapes == "dynamic":
            with preserved_signal_stack():
                engine.compile(None)
        return engine

    def load(self, manifest, component: str) -> OpenVinoEngine:
        with preserved_signal_stack():
            engine = OpenVinoEngine(self, manifest, component)
        if engine.compiled is not None:
            got = {n for port in engine.compiled.inputs for n in port.get_names()}
            want = set(manifest.spec.component(component).input_names)
            if not want <= got:
                raise SdrtError(f"{manifest.onnx_path(component)} has inputs {sorted(got)}, expected "
                                f"{sorted(want)}: export the model again with sdrt")
        return engine


def _loaded_from_cache(compiled) -> bool | None:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:
        return None
