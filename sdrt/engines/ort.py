"""ONNX Runtime engines: `ort-cpu` and `ort-cuda`, with IO binding on buffers allocated once per shape.

Why IO binding on the CPU too: `session.run(feeds)` copies every input and allocates every output on
each call; binding preallocated `OrtValue`s lets a denoising loop write the new latents into the same
memory and read `out_sample` from the same memory on every step. On the CPU the `OrtValue`s wrap our
own numpy arrays (no copy at all); on CUDA they live on the device, inputs are overwritten in place
(`update_inplace`), outputs are copied into preallocated host arrays (sdrt.engines.cuda_driver: no
`OrtValue.numpy()`, which allocates per call), and an optional CUDA graph (``cuda_graph=True``)
replays the UNet for a fixed shape. Only the UNet session gets the graph: a CPU-fallback node in
the text encoder or the VAE would break the capture, and they run once per image anyway.

onnxruntime is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt import atomic, spec
from sdrt.engines import cuda_driver
from sdrt.engines.attention_memory import unfused_attention_bytes
from sdrt.engines.base import SHARED_OPTIONS, Backend, Engine
from sdrt.engines.ort_lora_graph import DATA_NAME, lora_ready_model
from sdrt.errors import BackendUnavailable, SdrtError

#: names accepted for `graph_optimization_level`, mapped to onnxruntime's enum member names.
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime is not installed ({e}): pip install sdrt") from None
    return onnxruntime


_NOTED: set[str] = set()


def _note_once(text: str) -> None:
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"sdrt: {text}", file=sys.stderr)


def _one_line(error: BaseException, limit: int = 200) -> str:
    """onnxruntime's message without its preamble and C++ source location."""
    text = " ".join(str(error).split()).split("failed:", 1)[-1].strip()
    if text.startswith("/") and ") " in text:
        text = text.rsplit(") ", 1)[1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OrtEngine(Engine):
    """One component on one ONNX Runtime session, bound once per shape set."""

    def __init__(self, session, component: str, model_values: Mapping[str, int], precision: str,
                 *, device: str = "cpu", device_id: int = 0, cuda_graph: bool = False,
                 to_host: cuda_driver.DeviceToHost | None = None,
                 component_spec: spec.ComponentSpec):
        super().__init__(component, model_values, precision, component_spec)
        self.session = session
        self.device = device
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        if device != "cpu" and to_host is None:
            to_host = cuda_driver.DeviceToHost(device_id)
        self.to_host = to_host
        self._outputs = [o.name for o in session.get_outputs()]
        self._host: dict[str, np.ndarray] = {}
        self._values: dict[str, Any] = {}
        self._binding = None
        #: (OrtValues given to the session as initializers, their arrays): LoRA-merged weights
        self.weights: tuple[dict[str, Any], dict[str, np.ndarray]] = ({}, {})

    # -- buffers ---------------------------------------------------------------------------------
    def prepare(self, dims: Mapping[str, int]) -> None:
        dims = {k: int(v) for k, v in dims.items()}
        if self.dims == dims:
            return
        if self.cuda_graph and self.dims is not None:
            raise SdrtError(f"{self.component}: the CUDA graph was captured for {self.dims}; it cannot run "
                            f"{dims}: create the backend again, or turn cuda_graph off")
        ort = _import_ort()
        shapes = spec.shapes(self.spec, {**self.model_values, **dims}, include_optional=True)
        names = list(self.spec.input_names) + [n for n in self.spec.output_names if n in self._outputs]
        self._host, self._values = {}, {}
        binding = self.session.io_binding()
        for name in names:
            host = np.zeros(shapes[name], dtype=self.dtype(name))
            if self.device == "cpu":
                value = ort.OrtValue.ortvalue_from_numpy(host, "cpu", 0)  # wraps `host`, no copy
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], host.dtype, "cuda", self.device_id)
            bind = binding.bind_ortvalue_input if name in self.spec.input_names else binding.bind_ortvalue_output
            bind(name, value)
            self._host[name], self._values[name] = host, value
        self._binding = binding
        self.dims = dims

    def set_input(self, name: str, array: np.ndarray) -> None:
        host = self._host[name]
        if np.shape(array) != host.shape:
            raise ValueError(f"{self.component}.{name}: got shape {np.shape(array)}, bound {host.shape}")
        np.copyto(host, array, casting="same_kind")
        if self.device != "cpu":
            self._values[name].update_inplace(host)

    def execute(self) -> dict[str, np.ndarray]:
        if self._binding is None:
            raise RuntimeError(f"{self.component}: prepare(dims) before execute()")
        self.session.run_with_iobinding(self._binding)
        outputs = {n: self._host[n] for n in self.spec.output_names if n in self._host}
        if self.device != "cpu":
            for name, host in outputs.items():  # into our host array: nothing allocated per call
                self.to_host.copy(host, self._values[name].data_ptr())
        return outputs

    @property
    def buffers(self) -> Mapping[str, Any]:
        """Bound `OrtValue`s by tensor name (the objects ONNX Runtime reads and writes)."""
        return dict(self._values)

    def close(self) -> None:
        self._binding, self._values, self._host, self.dims = None, {}, {}, None


class OrtCpuBackend(Backend):
    """ONNX Runtime on the CPU. Every keyword is a session option (None keeps onnxruntime's default)."""

    name = "ort-cpu"
    providers_label = "cpu"
    #: opset-23 Attention on the CPU materializes every [S, S] score matrix (the tiny preset at 256 px
    #: fails under an 8 GB limit); com.microsoft.MultiHeadAttention does not (README, "memory")
    default_rewrites: tuple[str, ...] = ("attention_to_mha",)
    #: LoRA sessions load a graph optimized once with the LoRA-able weights kept open (ort_lora_graph)
    lora_graph_cache = True
    options = {
        "intra_op_num_threads": "threads inside one operator (default: onnxruntime's, the physical cores)",
        "inter_op_num_threads": "threads across operators (parallel execution mode)",
        "graph_optimization_level": f"one of {', '.join(OPT_LEVELS)} (default all)",
        "execution_mode": f"one of {', '.join(EXECUTION_MODES)} (default sequential)",
        "enable_mem_pattern": "onnxruntime's memory pattern planner (default on)",
        "enable_cpu_mem_arena": "onnxruntime's CPU memory arena (default on)",
        "optimized_model_cache": "folder for optimized graphs, written once and loaded later",
        "session_config": "extra session config entries (key -> value)",
        "log_severity_level": "onnxruntime's log level (default 3: errors)",
        "graph_rewrites": "CPU graph rewrites by name (sdrt.engines.ort_tuning; default: attention_to_mha, () for none)",
    }

    def __init__(self, *, intra_op_num_threads: int | None = None, inter_op_num_threads: int | None = None,
                 graph_optimization_level: str = "all", execution_mode: str = "sequential",
                 enable_mem_pattern: bool = True, enable_cpu_mem_arena: bool = True,
                 optimized_model_cache: str | os.PathLike | None = None,
                 session_config: Mapping[str, str] | None = None, log_severity_level: int = 3,
                 graph_rewrites: tuple[str, ...] | None = None):
        for label, value, table in (("graph_optimization_level", graph_optimization_level, OPT_LEVELS),
                                    ("execution_mode", execution_mode, EXECUTION_MODES)):
            if value not in table:
                raise SdrtError(f"{label} {value!r} is not one of: {', '.join(table)}")
        self.intra_op_num_threads = intra_op_num_threads
        self.inter_op_num_threads = inter_op_num_threads
        self.graph_optimization_level = graph_optimization_level
        self.execution_mode = execution_mode
        self.enable_mem_pattern = enable_mem_pattern
        self.enable_cpu_mem_arena = enable_cpu_mem_arena
        self.optimized_model_cache = Path(optimized_model_cache) if optimized_model_cache else None
        self.session_config = dict(session_config or {})
        self.log_severity_level = log_severity_level
        # CPU speed levers (sdrt.engines.ort_tuning): graphs rewritten once, cached under engines/.
        # None: the backend's default (ort-cpu: attention_to_mha where the onnx package is installed)
        if graph_rewrites is None:
            graph_rewrites = self.default_rewrites if importlib.util.find_spec("onnx") is not None else ()
        self.graph_rewrites = tuple(graph_rewrites)

    @classmethod
    def check_available(cls) -> None:
        _import_ort()

    def attention_bytes(self, denoiser_config: Mapping[str, Any], batch: int, h: int, w: int) -> int | None:
        """ONNX Runtime's CPU Attention op computes whole [S, S] score matrices (the estimate); after the
        MultiHeadAttention rewrite it does not (no estimate)."""
        if "attention_to_mha" in self.graph_rewrites:
            return None
        return unfused_attention_bytes(denoiser_config, batch, h, w)

    # -- what a subclass changes -----------------------------------------------------------------
    def providers(self, graphed: bool = False) -> list:
        return ["CPUExecutionProvider"]

    def engine_kwargs(self, graphed: bool = False) -> dict[str, Any]:
        return {"device": "cpu"}

    def graphed(self, manifest, component: str) -> bool:
        """Whether this component's session is captured as a CUDA graph (ort-cuda's denoiser only)."""
        return False

    # -- sessions --------------------------------------------------------------------------------
    def session_options(self):
        ort = _import_ort()
        so = ort.SessionOptions()
        if self.intra_op_num_threads is not None:
            so.intra_op_num_threads = int(self.intra_op_num_threads)
        if self.inter_op_num_threads is not None:
            so.inter_op_num_threads = int(self.inter_op_num_threads)
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[self.graph_optimization_level])
        so.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODES[self.execution_mode])
        so.enable_mem_pattern = self.enable_mem_pattern
        so.enable_cpu_mem_arena = self.enable_cpu_mem_arena
        so.log_severity_level = self.log_severity_level
        for key, value in self.session_config.items():
            so.add_session_config_entry(str(key), str(value))
        return so

    def _cached_model(self, manifest, component: str, path: Path) -> tuple[Path, bool]:
        """(model to load, whether it is an already optimized cache entry)."""
        ort = _import_ort()
        key_text = "|".join([manifest.component_hash(component), ort.__version__,
                             self.name, self.providers_label, self.graph_optimization_level,
                             *self.graph_rewrites])
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        cached = self.optimized_model_cache / f"{component}-{key}.onnx"
        return cached, cached.is_file()

    def create_session(self, manifest, component: str, weights: Mapping[str, Any] | None = None,
                       external: frozenset[str] = frozenset()):
        """A session on the component's graph; `weights` (initializer name -> OrtValue) replace initializers.

        External-data initializers are replaced when the graph loads (`add_external_initializers`),
        before any graph optimization. Inline ones can only be replaced after (`add_initializer`),
        and ONNX Runtime's NCHWc layout pass reorders Conv weights from the file's values before
        that (measured: a LoRA on a Conv had no effect), so it is turned off for such a session.
        Where every overridden weight is one a LoRA-ready graph keeps open (`lora_graph_cache`), the
        session loads that graph, optimized once, with optimization off (sdrt.engines.ort_lora_graph).
        """
        ort = _import_ort()
        path = manifest.onnx_path(component)
        if self.graph_rewrites:
            from sdrt.engines.ort_tuning import rewritten_model

            try:
                path = rewritten_model(path, self.graph_rewrites, manifest.engines_dir(self.name),
                                       manifest.component_hash(component))
            except SdrtError:
                raise
            except Exception:  # an unreadable or missing graph: onnxruntime's load below says what is wrong
                pass
        weights = weights or {}
        if weights and self.lora_graph_cache:
            ready = self._lora_graph(manifest, component, path, set(weights))
            if ready is not None:
                so = self.session_options()
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done once already
                # nothing is optimized after load, so every override can be shared, not copied
                # (`add_initializer`: ONNX Runtime reads the caller's buffer, here the scratch file;
                # measured on sd15's UNet: 1.6 s instead of 3.1 s, the same output)
                self._override(so, weights, frozenset())
                return self._session(ready[0], so, self.providers(self.graphed(manifest, component)))
        so = self.session_options()
        model = path
        inline = self._override(so, weights, external)
        extra = {"disabled_optimizers": ["NchwcTransformer"]} if inline else {}
        with contextlib.ExitStack() as stack:
            if self.optimized_model_cache is not None and not weights:  # the cache holds base weights only
                cached, hit = self._cached_model(manifest, component, path)
                if hit:
                    model = cached
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                else:  # ORT writes the cache entry into a staging folder: it appears whole or not at all
                    stage = stack.enter_context(atomic.staged_files(cached.parent, last=cached.name))
                    so.optimized_model_filepath = str(stage / cached.name)
                    if manifest.components[component].get("external_data"):
                        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                    cached.name + ".data")
            return self._session(model, so, self.providers(self.graphed(manifest, component)), **extra)

    @staticmethod
    def _override(so, weights: Mapping[str, Any], external: frozenset[str]) -> list[str]:
        """Give `weights` to the session options: external-data ones replaced at load, the others
        after load (`add_initializer`: ONNX Runtime reads the buffer, the caller keeps it alive);
        the names of the latter."""
        outside = [name for name in weights if name in external]
        if outside:
            so.add_external_initializers(outside, [weights[name] for name in outside])
        inline = [name for name in weights if name not in external]
        for name in inline:
            so.add_initializer(name, weights[name])
        return inline

    def _session(self, model: Path, so, providers: list, **extra: Any):
        ort = _import_ort()
        try:
            return ort.InferenceSession(str(model), sess_options=so, providers=providers, **extra)
        except Exception as e:  # onnxruntime raises its own pybind classes for bad files
            raise SdrtError(f"{model} could not be loaded by onnxruntime ({_one_line(e)}): "
                            f"export the model again with --force") from None

    def _lora_graph(self, manifest, component: str, path: Path, names: set[str]):
        """The component's LoRA-ready graph (sdrt.engines.ort_lora_graph) if `names` are all weights it
        keeps open, written on first use; None: the full path (optimize with the overrides)."""
        from sdrt.weight_map import WeightMap, linear_initializers

        targets = linear_initializers(WeightMap.load(manifest, component).parameters)
        if not names <= targets:
            return None  # e.g. a LoRA on a 3x3 Conv
        if importlib.util.find_spec("onnx") is None:
            _note_once("the onnx package is not installed: each LoRA switch optimizes the whole graph again "
                       "(pip install onnx makes switching faster)")
            return None
        ort = _import_ort()
        labels = [ort.__version__, self.name, self.providers_label, self.graph_optimization_level, *self.graph_rewrites]

        def optimize(graph: Path, out: Path) -> None:
            so = self.session_options()
            so.optimized_model_filepath = str(out)
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA_NAME)
            ort.InferenceSession(str(graph), sess_options=so, providers=self.providers(self.graphed(manifest, component)))

        try:
            ready = lora_ready_model(path, manifest.component_hash(component), targets, manifest.engines_dir(self.name),
                                     labels, optimize)
        except Exception as e:  # a full disk, a read-only folder: this switch still works, only slower
            _note_once(f"no LoRA-ready graph for {component} ({_one_line(e)}): this switch optimizes the whole graph")
            return None
        return ready if names <= ready[1] else None

    def load(self, manifest, component: str, overrides: Mapping[str, np.ndarray] | None = None,
             external: frozenset[str] = frozenset()) -> OrtEngine:
        ort = _import_ort()
        weights = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cpu", 0)
                   for name, array in (overrides or {}).items()}
        session = self.create_session(manifest, component, weights, external)
        component_spec = manifest.spec.component(component)
        spec_inputs = set(component_spec.input_names)
        got = {i.name for i in session.get_inputs()}
        if got != spec_inputs:
            raise SdrtError(f"{manifest.onnx_path(component)} has inputs {sorted(got)}, expected "
                            f"{sorted(spec_inputs)}: export the model again with sdrt")
        engine = OrtEngine(session, component, manifest.values, manifest.precision(component),
                           component_spec=component_spec, **self.engine_kwargs(self.graphed(manifest, component)))
        engine.weights = (weights, dict(overrides or {}))  # alive as long as the session
        return engine

    def release_for_reweight(self, engine: Engine) -> None:
        """Drop the session and the overrides it reads (a new session replaces it in `reweight`)."""
        engine.close()
        engine.session = None
        engine.weights = None

    def reweight(self, manifest, component: str, engine: Engine, overrides: Mapping[str, np.ndarray],
                 restore: Mapping[str, np.ndarray], external: frozenset[str] = frozenset()) -> OrtEngine:
        """A new session with `overrides` as initializers (ONNX Runtime cannot change a live session's
        weights). The old session is released first: never two UNets in memory. `restore` is not
        needed: a session without an override reads the export's own weights."""
        self.release_for_reweight(engine)
        return self.load(manifest, component, overrides, external)


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime, CUDA execution provider, device buffers; unverified here (no GPU on the dev machine)."""

    name = "ort-cuda"
    providers_label = "cuda"
    default_rewrites: tuple[str, ...] = ()
    lora_graph_cache = False  # unverified on CUDA: LoRA sessions there optimize the whole graph
    options = {
        **OrtCpuBackend.options,
        "cuda_graph": SHARED_OPTIONS["cuda_graph"] + "; the UNet session only",
        "device_id": SHARED_OPTIONS["device_id"],
        "cuda_provider_options": "extra CUDA execution provider options (key -> value)",
    }

    def __init__(self, *, device_id: int = 0, cuda_graph: bool = False,
                 cuda_provider_options: Mapping[str, Any] | None = None, **session_options: Any):
        super().__init__(**session_options)
        self.device_id = int(device_id)
        self.cuda_graph = bool(cuda_graph)
        self.cuda_provider_options = dict(cuda_provider_options or {})
        self._to_host: cuda_driver.DeviceToHost | None = None

    @classmethod
    def check_available(cls) -> None:
        ort = _import_ort()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("backend ort-cuda needs onnxruntime-gpu (this onnxruntime has no CUDA "
                                     "execution provider): pip uninstall onnxruntime && pip install 'sdrt[gpu]'")
        if cuda_driver.device_count() < 1:
            raise BackendUnavailable("backend ort-cuda: no CUDA GPU is visible here (no driver or no device): "
                                     "use --backend ort-cpu")

    def attention_bytes(self, denoiser_config: Mapping[str, Any], batch: int, h: int, w: int) -> int | None:
        return None  # GPU memory: not estimated (an allocation failure is still one line)

    def graphed(self, manifest, component: str) -> bool:
        """Only the family's denoiser (the one component run once per step) may be a CUDA graph."""
        return self.cuda_graph and component == manifest.family_spec.denoiser

    def providers(self, graphed: bool = False) -> list:
        options = {"device_id": str(self.device_id), **{k: str(v) for k, v in self.cuda_provider_options.items()}}
        if graphed:
            options["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]

    def engine_kwargs(self, graphed: bool = False) -> dict[str, Any]:
        if self._to_host is None:
            self._to_host = cuda_driver.DeviceToHost(self.device_id)
        return {"device": "cuda", "device_id": self.device_id, "cuda_graph": graphed, "to_host": self._to_host}
