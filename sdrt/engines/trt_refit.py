"""LoRA on TensorRT: refit a refittable engine's weights in place (`sdrt build --refit`), never rebuild.

A TensorRT engine built with the REFIT flag keeps the ONNX initializers' names for its weights;
`trt.Refitter` replaces them by name. The engine's merged weights (sdrt.runtime.lora) are kept on
the `TensorRTEngine`, so an engine loaded later (another profile's entry) gets them too, and
switching sends the new overrides plus the base values of the ones no longer overridden: the
weights after A -> B -> A are A's, value for value.

UNVERIFIED ON A GPU: the calls follow TensorRT 10's Python API and are unit-tested on fakes only.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sdrt.errors import SdrtError


def refit(trt: Any, engine: Any, weights: Mapping[str, np.ndarray], label: str) -> None:
    """Set `weights` (initializer name -> array) on a deserialized engine and refit it."""
    if not weights:
        return
    if not getattr(engine, "refittable", False):
        raise SdrtError(f"the TensorRT engine {label} is not refittable, so LoRA weights cannot be applied: "
                        f"rebuild it with `sdrt build --refit --force`")
    refitter = trt.Refitter(engine, trt.Logger(trt.Logger.WARNING))
    known = set(refitter.get_all_weights())
    unknown = [name for name in weights if name not in known]
    if unknown:
        raise SdrtError(f"the TensorRT engine {label} has no refittable weight {unknown[0]!r} "
                        f"({len(unknown)} of {len(weights)} LoRA weights unknown; TensorRT folded them into "
                        f"other layers): use an ONNX Runtime backend for this LoRA")
    kept = {name: np.ascontiguousarray(array) for name, array in weights.items()}  # alive until refit
    for name, array in kept.items():
        if not refitter.set_named_weights(name, trt.Weights(array)):
            raise SdrtError(f"TensorRT refused the weight {name!r} for {label} (shape or type differs)")
    missing = list(refitter.get_missing_weights())
    if missing:
        raise SdrtError(f"TensorRT needs more weights to refit {label} (first: {missing[0]!r}): rebuild "
                        f"the engine with `sdrt build --refit --force`")
    if not refitter.refit_cuda_engine():
        raise SdrtError(f"TensorRT could not refit {label}: rebuild it with `sdrt build --refit --force`")


def reweight(engine: Any, overrides: Mapping[str, np.ndarray], restore: Mapping[str, np.ndarray]) -> Any:
    """Record the overrides on a TensorRTEngine and refit its loaded engine (if any) in place."""
    engine.weights = dict(overrides)
    if engine._engine is not None:
        refit(engine.session.trt, engine._engine, {**restore, **overrides}, engine.entry.path.name)
        engine._drop_graph()  # a captured CUDA graph would replay the old kernels' arguments
    return engine
