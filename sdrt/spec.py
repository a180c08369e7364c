"""The component spec: the one place that names the exported graphs' tensors and their shapes.

Export derives its dynamic axes from it, the engines derive optimization profiles and buffer
sizes from it, and the runtime derives its buffer shapes from it. No other module spells a
tensor name or a shape.

Shapes are tuples of expressions over a few symbols:

====== ==========================================================
``B``  batch (under classifier-free guidance the UNet batch is 2x)
``h``  latent height          ``w``  latent width
``C``  latent channels        ``Cin`` UNet input channels (C, or 9 for inpainting)
``S``  token length (77)      ``D``  text hidden size
``f``  VAE scale factor (image size = f * latent size)
====== ==========================================================

An expression is an int, a symbol, or a product such as ``"f*h"`` or ``"2*C"``.
This module is pure Python: the lean runtime imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

Dim = Union[int, str]

#: Symbols whose value changes from call to call (the rest come from the model).
DYNAMIC_SYMBOLS = ("B", "h", "w")
#: Symbols fixed by the model (read from the manifest).
MODEL_SYMBOLS = ("C", "Cin", "S", "D", "f")

#: "float" follows the component's precision (fp32 or fp16); the others are fixed.
FLOAT = "float"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float" (component precision), "float32" or "int32"
    shape: tuple[Dim, ...]
    optional: bool = False  # an output some exports lack (pooler_output)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.inputs + self.outputs

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


T = TensorSpec

COMPONENTS: dict[str, ComponentSpec] = {
    "text_encoder": ComponentSpec(
        "text_encoder",
        inputs=(T("input_ids", "int32", ("B", "S")),),
        outputs=(
            T("last_hidden_state", FLOAT, ("B", "S", "D")),
            T("pooler_output", FLOAT, ("B", "D"), optional=True),
        ),
    ),
    "unet": ComponentSpec(
        "unet",
        inputs=(
            T("sample", FLOAT, ("B", "Cin", "h", "w")),
            T("timestep", "float32", ("B",)),
            T("encoder_hidden_states", FLOAT, ("B", "S", "D")),
        ),
        outputs=(T("out_sample", FLOAT, ("B", "C", "h", "w")),),
    ),
    "vae_decoder": ComponentSpec(
        "vae_decoder",
        inputs=(T("latent_sample", FLOAT, ("B", "C", "h", "w")),),
        outputs=(T("sample", FLOAT, ("B", 3, "f*h", "f*w")),),
    ),
    "vae_encoder": ComponentSpec(
        "vae_encoder",
        inputs=(T("sample", FLOAT, ("B", 3, "f*h", "f*w")),),
        outputs=(T("latent_parameters", FLOAT, ("B", "2*C", "h", "w")),),
    ),
}

COMPONENT_NAMES: tuple[str, ...] = tuple(COMPONENTS)

#: CLIP's context length; every released SD text encoder uses it.
TOKEN_LENGTH = 77


def component(name: str) -> ComponentSpec:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENT_NAMES)}") from None


def evaluate(dim: Dim, values: Mapping[str, int]) -> int:
    """Value of one shape expression (``3``, ``"h"``, ``"f*h"``, ``"2*C"``) for given symbols."""
    if isinstance(dim, int):
        return dim
    result = 1
    for term in dim.split("*"):
        term = term.strip()
        if term.isdigit():
            result *= int(term)
        else:
            if term not in values:
                raise KeyError(f"shape symbol {term!r} has no value (have: {sorted(values)})")
            result *= int(values[term])
    return result


def symbols_of(dim: Dim) -> tuple[str, ...]:
    """The symbols an expression uses: ``"f*h"`` -> ``("f", "h")``."""
    if isinstance(dim, int):
        return ()
    return tuple(t.strip() for t in dim.split("*") if not t.strip().isdigit())


def shape_of(tensor: TensorSpec, values: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, values) for d in tensor.shape)


def shapes(name: str, values: Mapping[str, int], include_optional: bool = False) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every tensor of a component, for the given symbol values."""
    spec = component(name)
    return {t.name: shape_of(t, values) for t in spec.tensors if include_optional or not t.optional}


def dynamic_axes(name: str) -> dict[str, dict[int, str]]:
    """Which axes of each tensor vary between calls, named by their expression.

    ``{"sample": {0: "B", 2: "h", 3: "w"}, ...}`` for the UNet; ``{..., 2: "f*h"}`` for images.
    """
    spec = component(name)
    axes: dict[str, dict[int, str]] = {}
    for t in spec.tensors:
        dyn = {
            i: str(d)
            for i, d in enumerate(t.shape)
            if any(s in DYNAMIC_SYMBOLS for s in symbols_of(d))
        }
        if dyn:
            axes[t.name] = dyn
    return axes


def dtype_of(tensor: TensorSpec, precision: str) -> str:
    """numpy dtype name of a tensor in a graph of the given precision ("fp32" or "fp16")."""
    if tensor.dtype == FLOAT:
        return {"fp32": "float32", "fp16": "float16"}[precision]
    return tensor.dtype


def model_values(
    *, latent_channels: int, unet_in_channels: int, text_hidden_size: int, vae_scale_factor: int,
    token_length: int = TOKEN_LENGTH,
) -> dict[str, int]:
    """The fixed symbols of one model (what the manifest records)."""
    return {"C": latent_channels, "Cin": unet_in_channels, "S": token_length,
            "D": text_hidden_size, "f": vae_scale_factor}


def unet_batch(num_images: int, guidance: bool) -> int:
    """UNet batch: classifier-free guidance runs the unconditional and conditional halves together."""
    return 2 * num_images if guidance else num_images
