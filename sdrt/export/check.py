"""The export check: run each exported graph in ONNX Runtime (CPU) against its PyTorch module.

Inputs are fresh random draws at shapes that differ from the trace (other batch sizes, non-square,
odd latent sizes), so a graph that baked in its trace shape fails here. The reference is always
the fp32 PyTorch module of the source (an fp16 graph is judged against fp32 truth, at a looser
threshold), fed the very same input values.

Error measure, per output: max |onnx - torch| (absolute) and that divided by max |torch|
(relative to the output's scale: random-weight models have arbitrary output scales, and an
element-wise ratio explodes near zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export.graphs import example_inputs, wrap

#: Largest relative error a graph may have, per precision. fp32 graphs differ from PyTorch only by
#: operation order and fused kernels (we measure ~1e-6); fp16 graphs carry fp16 rounding through
#: every layer (we measure ~1e-3 on the presets).
THRESHOLDS: dict[str, float] = {"fp32": 1e-3, "fp16": 3e-2}
DEFINITION = "max_rel_error = max|onnx - torch| / max|torch| over every output, fp32 PyTorch reference"
#: A deep random-weight model can amplify fp32 rounding past the threshold in PyTorch itself (the sd3.5-medium
#: preset's 24-layer T5-XXL: PyTorch fp32 is 5.1e-3 from the float64 answer, ONNX Runtime 4.5e-3). Where the
#: check has the float64 answer (`Case.exact`, streamed exports), a graph over the threshold still passes when
#: it is no farther from float64 than this many times PyTorch fp32 is.
EXACT_FACTOR = 2.0


class CheckFailed(SdrtError):
    """A graph outside its threshold against PyTorch (`measured`: the error, in words)."""

    def __init__(self, message: str, measured: str):
        super().__init__(message)
        self.measured = measured


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16}[precision]


def ort_session(path: Path, lean: bool = False) -> Any:
    """A CPU session on the exported graph. `lean`: weights stored in 16 bits stay so (no constant folding
    of their Casts, no arena keeping each layer's fp32 copy): a graph larger than memory in fp32 fits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs on the CPU log every inserted Cast otherwise
    extra = {}
    if lean:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.enable_cpu_mem_arena = False
        extra["disabled_optimizers"] = ["ConstantFolding"]
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], **extra)
    except Exception as error:  # onnxruntime's Fail/InvalidGraph: the exporter wrote a graph ORT refuses
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SdrtError(f"{path.parent.name} export check failed: ONNX Runtime cannot load the exported graph "
                        f"({first}); nothing was written. This is an exporter bug: please report it with "
                        f"the model's config") from None


@dataclass
class Case:
    """One shape of the check: the inputs and PyTorch's fp32 answer, kept as numpy arrays so the
    module can be freed before ONNX Runtime loads the graph."""

    dims: dict[str, int]
    feeds: dict[str, np.ndarray]
    want: list[np.ndarray]
    exact: list[np.ndarray] | None = None  # the float64 module's outputs for the same feeds, where computed


def torch_case(component: spec.ComponentSpec, reference: torch.nn.Module, dims: Mapping[str, int], *,
               precision: str, vocab_size: int, seed: int) -> Case:
    """Random inputs at one shape and the PyTorch module's outputs for them (ValueError: PyTorch refuses)."""
    comp = component
    inputs = example_inputs(comp, dims, vocab_size=vocab_size, seed=seed, dtype=torch_dtype(precision))
    with torch.no_grad():
        # Same values, fp32 compute: fp16 input rounding is not counted as error.
        want = reference(*(v.float() if v.is_floating_point() else v for v in inputs.values()))
    want = want if isinstance(want, tuple) else (want,)
    used = {"B", "h", "w"} | set(spec.used_symbols(component))
    return Case({k: int(dims[k]) for k in spec.DYNAMIC_SYMBOLS if k in used}, {name: value.numpy() for name, value in inputs.items()},
                [w.float().numpy() for w in want])


def judge(component: spec.ComponentSpec, session: Any, case: Case) -> dict[str, Any]:
    """Errors of the graph on one case: {"dims", "max_abs_error", "max_rel_error"}."""
    comp = component
    graph_outputs = [o.name for o in session.get_outputs()]
    got = dict(zip(graph_outputs, session.run(graph_outputs, case.feeds)))
    pairs = [(name, got[name], expected) for name, expected in zip(comp.output_names, case.want) if name in got]
    for name, actual, expected in pairs:
        if actual.shape != expected.shape:
            raise SdrtError(f"{comp.name} export check failed: output {name} has shape {actual.shape}, "
                            f"PyTorch gives {expected.shape} at {_describe(case.dims)}")
    max_abs, max_rel = _errors((actual, expected) for _, actual, expected in pairs)
    result = {"dims": dict(case.dims), "max_abs_error": max_abs, "max_rel_error": max_rel}
    if case.exact is not None:
        exact = dict(zip(comp.output_names, case.exact))
        result["vs_float64"] = {
            "onnx_rel_error": _errors((actual, exact[name]) for name, actual, _ in pairs)[1],
            "torch_fp32_rel_error": _errors((expected, exact[name]) for name, _, expected in pairs)[1]}
    return result


def _errors(pairs: Any) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|) over (actual, expected) array pairs."""
    max_abs = max_rel = 0.0
    for actual, expected in pairs:
        expected, actual = expected.astype(np.float64), actual.astype(np.float64)
        err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
        err = err if np.isfinite(err) else float("inf")
        scale = float(np.max(np.abs(expected))) or 1.0
        max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale)
    return max_abs, max_rel


def within(result: Mapping[str, Any], threshold: float) -> bool:
    """Within the threshold against PyTorch fp32, or (given the float64 answer) no farther from it than
    EXACT_FACTOR times PyTorch fp32 is."""
    if result["max_rel_error"] <= threshold:
        return True
    exact = result.get("vs_float64")
    return bool(exact) and exact["onnx_rel_error"] <= max(threshold, EXACT_FACTOR * exact["torch_fp32_rel_error"])


def compare(component: spec.ComponentSpec, session: Any, reference: torch.nn.Module, dims: Mapping[str, int], *,
            precision: str, vocab_size: int, seed: int) -> dict[str, Any]:
    """Errors of one call at one shape: {"dims", "max_abs_error", "max_rel_error"}."""
    return judge(component, session, torch_case(component, reference, dims, precision=precision,
                                                vocab_size=vocab_size, seed=seed))


def reference_cases(component: spec.ComponentSpec, module: Any, model_values: Mapping[str, int],
                    shapes: list[dict[str, int]], *, precision: str, vocab_size: int,
                    model: spec.ModelSpec) -> list[Case]:
    """The PyTorch side of the check at every shape (run it, then free the module, then `judge_cases`)."""
    reference = wrap(component, module, model)
    return [torch_case(component, reference, {**model_values, **shape}, precision=precision, vocab_size=vocab_size,
                       seed=1000 + i) for i, shape in enumerate(shapes)]


def judge_cases(component: spec.ComponentSpec, path: Path, cases: list[Case], *, precision: str,
                lean: bool = False) -> dict[str, Any]:
    """The ONNX Runtime side: every case within the threshold, or a one-line error (`lean`: see ort_session)."""
    comp = component
    session = ort_session(path, lean=lean)
    threshold = THRESHOLDS[precision]
    results = []
    for case in cases:
        result = judge(comp, session, case)
        if not within(result, threshold):
            raise CheckFailed(f"{comp.name} export check failed: max relative error {result['max_rel_error']:.3g} "
                              f"(max abs {result['max_abs_error']:.3g}) > {threshold:g} at {_describe(case.dims)} "
                              f"against PyTorch: the exported graph is wrong, nothing was written",
                              measured=f"max relative error {result['max_rel_error']:.3g} > {threshold:g} at "
                                       f"{_describe(case.dims)}")
        results.append(result)
    del session
    return {
        "passed": True,
        "max_abs_error": max(r["max_abs_error"] for r in results),
        "max_rel_error": max(r["max_rel_error"] for r in results),
        "threshold": {"max_rel": threshold, "definition": DEFINITION,
                      **({"or_vs_float64": f"onnx no farther from float64 than {EXACT_FACTOR:g} x torch fp32"}
                         if any("vs_float64" in r for r in results) else {})},
        "shapes": results,
    }


def check_component(component: spec.ComponentSpec, module: Any, path: Path, model_values: Mapping[str, int],
                    shapes: list[dict[str, int]], *, precision: str, vocab_size: int,
                    model: spec.ModelSpec) -> dict[str, Any]:
    """Check one exported graph at several shapes; raise a one-line error above the threshold."""
    cases = reference_cases(component, module, model_values, shapes, precision=precision, vocab_size=vocab_size,
                            model=model)
    return judge_cases(component, path, cases, precision=precision)


def check_dims(component: spec.ComponentSpec, trace: Mapping[str, int], size_rule: Mapping[str, int]) -> list[dict[str, int]]:
    """Two shapes off the trace: batch 1 and 3 (the trace uses 2), non-square latent sizes that
    the size rule admits but the trace did not use (odd ones where the rule allows)."""
    m, low = size_rule["latent_multiple"], size_rule["min_latent"]
    h, w, tokens = trace["h"], trace["w"], trace.get("L", spec.TOKEN_LENGTH)
    if "h" not in spec.used_symbols(component):  # text encoders: the batch varies (and T5's length)
        other = tokens // 2 + 3 if "L" in spec.used_symbols(component) else tokens
        return [{"B": 1, "h": h, "w": w, "L": tokens}, {"B": 3, "h": h, "w": w, "L": other}]
    # the second shape also attends to two chunks of text where the graph takes L (long prompts)
    return [{"B": 1, "h": max(3 * m, low), "w": max(5 * m, low), "L": tokens},
            {"B": 3, "h": max(h // 2 // m * m + m, low), "w": max(w // 3 // m * m + 2 * m, low), "L": 2 * tokens}]


def _describe(dims: Mapping[str, int]) -> str:
    return f"batch {dims['B']}, latent {dims['h']}x{dims['w']}"
