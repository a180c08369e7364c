"""Tensors and their shapes: the vocabulary every family's table entry is written in.

A component's tensors are `TensorSpec`s whose shapes are tuples of expressions over symbols:

====== ==========================================================
``B``  batch (under classifier-free guidance the UNet batch is 2x)
``h``  latent height          ``w``  latent width
``C``  latent channels        ``Cin`` UNet input channels (C, or 9 for inpainting)
``S``  a text encoder's token length (77)
``L``  the per-call text length: the tokens a UNet attends to (77: one CLIP chunk; more for long
       prompts), or a T5 encoder's ``max_sequence_length`` (SD3's transformer attends to ``S+L``)
``D``  the UNet's cross-attention width (sd: text hidden size)
``f``  VAE scale factor (image size = f * latent size)
``D1`` text_encoder hidden    ``D2`` text_encoder_2 hidden (sdxl)
``K1`` text_encoder layers    ``K2`` text_encoder_2 layers selectable by clip_skip
``P``  pooled text_embeds     ``T``  time_ids length (6, refiner 5)
``G``  timestep_cond width (LCM's time_cond_proj_dim)
``P1`` text_encoder's pooled (projected) width, ``P2`` text_encoder_2's (sd3: P = P1 + P2)
====== ==========================================================

An expression is an int, a symbol, a product such as ``"f*h"`` or ``"2*C"``, or a sum of those
such as ``"S+L"`` (SD3's joint text: 77 CLIP tokens, then the T5 ones); a factor may be divided by a
whole number, rounded up (``"h/2"``: what a stride-2 convolution leaves of ``h``). ``B``, ``h``, ``w``
and ``L`` change from call to call (the dynamic axes of every graph); the others are fixed by the
model and recorded in its manifest. An engine prepared without ``L`` takes ``S`` tokens (one chunk). This module is pure Python: the lean runtime imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

Dim = Union[int, str]

#: Symbols whose value changes from call to call (the rest come from the model).
DYNAMIC_SYMBOLS = ("B", "h", "w", "L")
#: Symbols fixed by the model (read from the manifest).
MODEL_SYMBOLS = ("C", "Cin", "S", "D", "f", "D1", "D2", "K1", "K2", "P", "T", "G", "P1", "P2")

#: "float" follows the component's precision (fp32 or fp16); the others are fixed.
FLOAT = "float"

#: CLIP's context length; every released SD text encoder uses it.
TOKEN_LENGTH = 77


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float" (component precision), "float32" or "int32"
    shape: tuple[Dim, ...]
    optional: bool = False  # an output some exports lack (pooler_output)
    #: the range realistic values of an input lie in (export checks draw from it): "normal",
    #: "ids" (token ids), "timestep" ([0, 1000)), "image" ([-1, 1]), "pixels" (sizes in [0, 1024)),
    #: "scale" ([0, 2): a ControlNet's conditioning scale)
    draw: str = "normal"


#: rows of a component per image, (smallest, largest), (with CFG, without): TensorRT's profiles.
#: A smallest of 0 means "from a batch of 1" (the text encoder sees one row per prompt, not per image)
BatchHint = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph: its tensors, and how export and the engines treat it.

    `source` is the diffusers folder module it is traced from (both VAE halves come from "vae"),
    `graph` the export wrapper that traces it, `batch` its rows per image (what TensorRT profiles
    derive from), `fp32_if_config` the config key that keeps it fp32 under --precision fp16,
    `fp32_always` the reason a component is never exported in fp16 (T5's activations overflow it).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: str
    graph: str
    batch: BatchHint
    fp32_if_config: str | None = None
    #: why this component stays fp32 under --precision fp16 whatever its config says (None: it may not)
    fp32_always: str | None = None

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

    def batch_per_image(self, guidance: bool) -> tuple[int, int]:
        """(smallest, largest) rows per image, with or without classifier-free guidance."""
        return self.batch[0] if guidance else self.batch[1]


class Name:
    """Tensor names, for the modules that feed or read a tensor (so none of them spells one)."""

    INPUT_IDS = "input_ids"
    LAST_HIDDEN_STATE = "last_hidden_state"
    POOLER_OUTPUT = "pooler_output"
    HIDDEN_STATES = "hidden_states"
    TEXT_EMBEDS = "text_embeds"
    SAMPLE = "sample"
    TIMESTEP = "timestep"
    ENCODER_HIDDEN_STATES = "encoder_hidden_states"
    TIME_IDS = "time_ids"
    TIMESTEP_COND = "timestep_cond"
    OUT_SAMPLE = "out_sample"
    LATENT_SAMPLE = "latent_sample"
    IMAGE = "sample"  # the VAE's pixel tensor, in and out
    LATENT_PARAMETERS = "latent_parameters"
    #: the transformers' (Optimum's names): latents in, the velocity out, the pooled text
    LATENTS = "hidden_states"
    OUT_LATENTS = "out_hidden_states"
    POOLED_PROJECTIONS = "pooled_projections"
    CONTROLNET_COND = "controlnet_cond"  # a ControlNet's control image, [0, 1]
    CONDITIONING_SCALE = "conditioning_scale"  # a ControlNet's scale per residual (guess mode: a ramp)
    MID_BLOCK_RESIDUAL = "mid_block_residual"
    DOWN_BLOCK_RESIDUAL = "down_block_residual"  # + "_<i>": the i-th down-block residual

    @staticmethod
    def down_block_residual(index: int) -> str:
        return f"{Name.DOWN_BLOCK_RESIDUAL}_{index}"


N = Name


def _factors(dim: str) -> list[list[str]]:
    """``"S+2*L"`` -> ``[["S"], ["2", "L"]]``: a sum of products."""
    return [[f.strip() for f in term.split("*")] for term in dim.split("+")]


def _term(term: str, values: Mapping[str, int]) -> int:
    """One factor: a number, a symbol, or either divided by a whole number and rounded up (``"h/4"``)."""
    base, _, divisor = (part.strip() for part in term.partition("/"))
    if base.isdigit():
        value = int(base)
    elif base not in values:
        raise KeyError(f"shape symbol {base!r} has no value (have: {sorted(values)})")
    else:
        value = int(values[base])
    return -(-value // int(divisor)) if divisor else value


def evaluate(dim: Dim, values: Mapping[str, int]) -> int:
    """Value of one shape expression (``3``, ``"h"``, ``"f*h"``, ``"2*C"``, ``"S+L"``, ``"h/2"``) for given
    symbols."""
    if isinstance(dim, int):
        return dim
    total = 0
    for factors in _factors(dim):
        result = 1
        for term in factors:
            result *= _term(term, values)
        total += result
    return total


def symbols_of(dim: Dim) -> tuple[str, ...]:
    """The symbols an expression uses: ``"f*h"`` -> ``("f", "h")``, ``"S+L"`` -> ``("S", "L")``,
    ``"h/2"`` -> ``("h",)``."""
    if isinstance(dim, int):
        return ()
    bases = (t.split("/")[0].strip() for factors in _factors(dim) for t in factors)
    return tuple(b for b in bases if not b.isdigit())


def shape_of(tensor: TensorSpec, values: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, values) for d in tensor.shape)


def _has_values(tensor: TensorSpec, values: Mapping[str, int]) -> bool:
    return all(s in values for d in tensor.shape for s in symbols_of(d))


def _component(component: ComponentSpec) -> ComponentSpec:
    if not isinstance(component, ComponentSpec):
        raise TypeError(f"expected a ComponentSpec (the model's own: manifest.spec.component(name)), "
                        f"got {component!r}")
    return component


def shapes(component: ComponentSpec, values: Mapping[str, int],
           include_optional: bool = False) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every tensor of a component, for the given symbol values.

    An optional tensor whose model symbols have no value (an old manifest) is left out."""
    return {t.name: shape_of(t, values) for t in _component(component).tensors
            if not t.optional or (include_optional and _has_values(t, values))}


def dynamic_axes(component: ComponentSpec) -> dict[str, dict[int, str]]:
    """Which axes of each tensor vary between calls, named by their expression.

    ``{"sample": {0: "B", 2: "h", 3: "w"}, ...}`` for the UNet; ``{..., 2: "f*h"}`` for images.
    """
    axes: dict[str, dict[int, str]] = {}
    for t in _component(component).tensors:
        dyn = {i: str(d) for i, d in enumerate(t.shape) if any(s in DYNAMIC_SYMBOLS for s in symbols_of(d))}
        if dyn:
            axes[t.name] = dyn
    return axes


def used_symbols(component: ComponentSpec) -> tuple[str, ...]:
    """The dynamic symbols a component's tensors use, in DYNAMIC_SYMBOLS order (text encoder: only B)."""
    found = {s for t in _component(component).tensors for d in t.shape for s in symbols_of(d)}
    return tuple(s for s in DYNAMIC_SYMBOLS if s in found)


def dtype_of(tensor: TensorSpec, precision: str) -> str:
    """numpy dtype name of a tensor in a graph of the given precision ("fp32" or "fp16")."""
    if tensor.dtype == FLOAT:
        return {"fp32": "float32", "fp16": "float16"}[precision]
    return tensor.dtype


def model_values(
    *, latent_channels: int, unet_in_channels: int, text_hidden_size: int, vae_scale_factor: int,
    token_length: int = TOKEN_LENGTH, extra: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The fixed symbols of one model (what the manifest records); `extra` holds the family's own
    (D1, D2, K1, K2, P, T, G, P1, P2)."""
    values = {"C": latent_channels, "Cin": unet_in_channels, "S": token_length,
              "D": text_hidden_size, "f": vae_scale_factor}
    for key, value in (extra or {}).items():
        if key not in MODEL_SYMBOLS:
            raise KeyError(f"unknown model symbol {key!r}; known: {', '.join(MODEL_SYMBOLS)}")
        values[key] = int(value)
    return values


def unet_batch(num_images: int, guidance: bool) -> int:
    """UNet batch: classifier-free guidance runs the unconditional and conditional halves together."""
    return 2 * num_images if guidance else num_images
