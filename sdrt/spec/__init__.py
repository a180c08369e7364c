"""The model spec: the one place that names model families, their graphs' tensors and their shapes.

`sdrt.spec.tensors` is the vocabulary (tensors, shape expressions over symbols); `sdrt.spec.families`
is the family table written in it. Export derives its dynamic axes and I/O names from a model's spec,
the engines their optimization profiles and buffer sizes, the runtime its buffer shapes and its
family behaviour. No other module spells a tensor name, a shape or a family fact. Pure Python: the
lean runtime imports it.
"""

from sdrt.spec.families import (FAMILIES, VARIANTS, Family, FluxName, ModelSpec, component_names, controlnet_spec,
                                family, family_of_pipeline, ip_adapter_spec, lora_prefixes, model_spec,
                                supported_classes)
from sdrt.spec.ip_adapter import IPAdapterLayout
from sdrt.spec.residuals import Residuals
from sdrt.spec.tensors import (DYNAMIC_SYMBOLS, FLOAT, MODEL_SYMBOLS, TOKEN_LENGTH, ComponentSpec, Dim, N, Name,
                               TensorSpec, dtype_of, dynamic_axes, evaluate, model_values, shape_of, shapes,
                               symbols_of, unet_batch, used_symbols)

__all__ = [
    "FAMILIES", "VARIANTS", "Family", "FluxName", "ModelSpec", "Residuals", "component_names", "controlnet_spec", "family", "IPAdapterLayout", "ip_adapter_spec", "family_of_pipeline", "lora_prefixes", "model_spec",
    "supported_classes", "DYNAMIC_SYMBOLS", "FLOAT", "MODEL_SYMBOLS", "TOKEN_LENGTH", "ComponentSpec", "Dim", "N",
    "Name", "TensorSpec", "dtype_of", "dynamic_axes", "evaluate", "model_values", "shape_of", "shapes", "symbols_of",
    "unet_batch", "used_symbols",
]
