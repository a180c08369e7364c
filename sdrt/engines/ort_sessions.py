"""How the ONNX Runtime backends build a component's session, and the three caches that make it fast.

- **Rewritten graphs** (`graph_rewrites`, sdrt.engines.ort_tuning): written once under
  `engines/<backend>/rewrites-<key>/`, keyed by the manifest's component hash.
- **The optimized-model cache** (`optimized_model_cache=DIR`, on request): ONNX Runtime writes the
  graph it optimized into DIR once (staged, so it appears whole), later loads skip optimization.
- **The LoRA-ready graph** (sdrt.engines.ort_lora_graph): a LoRA session loads a graph optimized once
  with the LoRA-able weights kept open, with optimization off and the merged weights shared.

`OrtSessions` is mixed into the backends (`sdrt.engines.ort`): it reads their session options.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Mapping

from sdrt import atomic
from sdrt.engines import ort_engine
from sdrt.engines.ort_lora_graph import DATA_NAME, lora_ready_model
from sdrt.errors import SdrtError

#: names accepted for `graph_optimization_level`, mapped to onnxruntime's enum member names.
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


_NOTED: set[str] = set()


def _note_once(text: str) -> None:
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"sdrt: {text}", file=sys.stderr)



def stored_narrow(manifest, component: str) -> bool:
    """Whether the component's weights are stored narrower than it computes (a streamed export: fp16
    weights, each followed by a Cast to float; `components.<name>.storage` in sdrt.json)."""
    entry = manifest.components.get(component, {})
    return entry.get("storage", entry.get("precision", "fp32")) != entry.get("precision", "fp32")


def lean(so, extra: dict) -> None:
    """Keep 16-bit stored weights 16-bit in memory: no constant folding of their Casts (it would make an
    fp32 copy of every weight: T5-XXL's 19 GB instead of 9.5) and no arena holding each layer's fp32
    cast after its use (measured: 8 fp16 matrices of 32 MB cost +265 MB this way, +521 MB folded)."""
    ort = ort_engine.import_ort()
    level = ort.GraphOptimizationLevel
    if int(so.graph_optimization_level) > int(level.ORT_ENABLE_BASIC):
        so.graph_optimization_level = level.ORT_ENABLE_BASIC
    so.enable_cpu_mem_arena = False
    extra["disabled_optimizers"] = [*extra.get("disabled_optimizers", []), "ConstantFolding"]


class OrtSessions:
    """Session building for an ONNX Runtime backend (its options are the backend's attributes)."""

    name: str
    providers_label: str
    lora_graph_cache: bool
    graph_rewrites: tuple[str, ...]
    optimized_model_cache: Path | None

    def providers(self, graphed: bool = False) -> list:
        raise NotImplementedError

    def graphed(self, manifest, component: str) -> bool:
        raise NotImplementedError

    def session_options(self):
        ort = ort_engine.import_ort()
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
        ort = ort_engine.import_ort()
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
        ort = ort_engine.import_ort()
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
        disabled = (["NchwcTransformer"] if inline else []) + self.quantized_fixes(manifest, component)
        extra = {"disabled_optimizers": disabled} if disabled else {}
        if stored_narrow(manifest, component):
            lean(so, extra)
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

    @staticmethod
    def quantized_fixes(manifest, component: str) -> list[str]:
        """Optimizers left out for a Q/DQ graph (`sdrt quantize`). ONNX Runtime 1.31's QDQS8ToU8Transformer,
        after its Q/DQ propagation, writes opset-21+ QuantizeLinear nodes whose `output_dtype` (int8)
        contradicts the uint8 zero point it gives them, and the session fails to load; without it the
        int8 kernels run signed activations (VNNI and AMX take them as they are). An fp8 graph (scored on the
        CPU by `sdrt quantize`'s gate, which runs its Q/DQ pairs in float) also keeps its Q/DQ pairs unfused:
        the fused int8 kernels (QLinearConv, ...) take no fp8 input."""
        from sdrt.engines.quantized import quantized_components

        scheme = quantized_components(manifest.components).get(component)
        if scheme is None:
            return []
        return ["QDQS8ToU8Transformer"] + (["QDQSelectorActionTransformer"] if scheme == "fp8" else [])

    def _session(self, model: Path, so, providers: list, **extra: Any):
        ort = ort_engine.import_ort()
        try:
            return ort.InferenceSession(str(model), sess_options=so, providers=providers, **extra)
        except Exception as e:  # onnxruntime raises its own pybind classes for bad files
            raise SdrtError(f"{model} could not be loaded by onnxruntime ({ort_engine.one_line(e)}): "
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
        ort = ort_engine.import_ort()
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
            _note_once(f"no LoRA-ready graph for {component} ({ort_engine.one_line(e)}): this switch optimizes the whole graph")
            return None
        return ready if names <= ready[1] else None
