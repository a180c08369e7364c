"""ONNX Runtime backends: `ort-cpu` and `ort-cuda`, their options, and their engines' life (load, reweight).

The engines (IO binding on buffers allocated once per shape) are `sdrt.engines.ort_engine.OrtEngine`;
building a session and its caches is `sdrt.engines.ort_sessions`. On CUDA an optional CUDA graph
(``cuda_graph=True``) replays the denoiser for a fixed shape. Only the denoiser's session gets the
graph: a CPU-fallback node in the text encoder or the VAE would break the capture, and they run once
per image anyway.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt.engines import cuda_driver, ort_engine
from sdrt.engines.attention_memory import unfused_attention_bytes
from sdrt.engines.base import SHARED_OPTIONS, Backend, Engine
from sdrt.engines.ort_engine import OrtEngine
from sdrt.engines.ort_sessions import EXECUTION_MODES, OPT_LEVELS, OrtSessions
from sdrt.engines.quantized import is_quantized
from sdrt.errors import BackendUnavailable, SdrtError


class OrtCpuBackend(OrtSessions, Backend):
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
        self._branches: dict[tuple[str, str], tuple[Path, dict]] = {}  # LoRA side paths of quantized components

    @classmethod
    def check_available(cls) -> None:
        ort_engine.import_ort()

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

    def load(self, manifest, component: str, overrides: Mapping[str, np.ndarray] | None = None,
             external: frozenset[str] = frozenset()) -> OrtEngine:
        ort = ort_engine.import_ort()
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

    # -- LoRA side paths: quantized components only (a float one merges: sdrt.engines.ort_lora_graph) ---
    @property
    def lora_branches(self) -> bool:
        return True

    def branchable(self, manifest, component: str) -> frozenset[str]:
        """A quantized component's Linear and 1x1 Conv weights (sdrt.engines.ort_lora_branches); none of a
        float component's: its LoRAs are merged, as they always were."""
        if not is_quantized(manifest.components[component]):
            return frozenset()
        return frozenset(self._branched(manifest, component)[1])

    def _branched(self, manifest, component: str) -> tuple[Path, dict]:
        key = (str(manifest.folder), component)
        if key not in self._branches:
            from sdrt.engines.ort_lora_branches import branched_model
            from sdrt.engines.ort_tuning import rewritten_model
            from sdrt.weight_map import WeightMap, linear_initializers

            path, content = manifest.onnx_path(component), manifest.component_hash(component)
            if self.graph_rewrites:
                path = rewritten_model(path, self.graph_rewrites, manifest.engines_dir(self.name), content)
            targets = linear_initializers(WeightMap.load(manifest, component).parameters)
            self._branches[key] = branched_model(path, "|".join([content, *self.graph_rewrites]), targets,
                                                 manifest.engines_dir(self.name))
        return self._branches[key]

    def set_lora_factors(self, manifest, component: str, engine: Engine,
                         factors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Engine:
        """The LoRAs as side-path inputs: the branched session built once, then each switch binds new A/B."""
        from sdrt.engines.ort_lora_branches import branch_tensors, branched_engine

        path, branches = self._branched(manifest, component)
        tensors = branch_tensors(branches, factors)
        if hasattr(engine, "set_factors") and engine.session is not None:
            engine.set_factors(tensors)
            return engine
        self.release_for_reweight(engine)
        disabled = self.quantized_fixes(manifest, component)
        session = self._session(path, self.session_options(), self.providers(), disabled_optimizers=disabled)
        return branched_engine(session, manifest, component, tensors, **self.engine_kwargs())

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
        ort = ort_engine.import_ort()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("backend ort-cuda needs onnxruntime-gpu (this onnxruntime has no CUDA "
                                     "execution provider): pip uninstall onnxruntime && pip install 'sdrt[gpu]'")
        if cuda_driver.device_count() < 1:
            raise BackendUnavailable("backend ort-cuda: no CUDA GPU is visible here (no driver or no device): "
                                     "use --backend ort-cpu")

    @property
    def lora_branches(self) -> bool:
        return False  # LoRA side paths on quantized components: CPU only (unverified on CUDA)

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
