"""The model spec: the one place that names the exported graphs' tensors and their shapes.

A model is described by its *family* and its *variants*; together they fix which components it
has and what each one's tensors are. Export derives its dynamic axes and I/O names from it, the
engines derive optimization profiles and buffer sizes from it, and the runtime derives its buffer
shapes from it. No other module spells a tensor name or a shape.

========================  ====================================================================
family ``sd``             SD 1.x / 2.x: text_encoder, unet, vae_decoder, vae_encoder
family ``sdxl``           SDXL base (and Turbo): text_encoder + text_encoder_2, a UNet that also
                          takes the pooled ``text_embeds`` and the micro-conditioning ``time_ids``
family ``sdxl-refiner``   SDXL refiner: text_encoder_2 only, ``time_ids`` of 5 (aesthetic score)
variant ``timestep_cond`` LCM-distilled UNets: the guidance embedding ``timestep_cond`` [B, G]
variant ``hidden_states`` SD text encoders also give their layer stack (for ``clip_skip``); SDXL's
                          always do
========================  ====================================================================

Tensor names are Optimum's where Optimum has one (``text_embeds``, ``time_ids``,
``timestep_cond``). ``hidden_states`` is a stack ``[K, B, S, D]`` whose entry ``k`` is exactly what
the family's diffusers pipeline feeds the UNet for ``clip_skip = k`` (``sd``: the final layer norm of
the ``k+1``-th last layer; ``sdxl``: the raw ``k+2``-th last layer, so entry 0 is SDXL's usual
penultimate layer).

Shapes are tuples of expressions over symbols:

====== ==========================================================
``B``  batch (under classifier-free guidance the UNet batch is 2x)
``h``  latent height          ``w``  latent width
``C``  latent channels        ``Cin`` UNet input channels (C, or 9 for inpainting)
``S``  token length (77)      ``D``  the UNet's cross-attention width (sd: text hidden size)
``f``  VAE scale factor (image size = f * latent size)
``D1`` text_encoder hidden    ``D2`` text_encoder_2 hidden (sdxl)
``K1`` text_encoder layers    ``K2`` text_encoder_2 layers selectable by clip_skip
``P``  pooled text_embeds     ``T``  time_ids length (6, refiner 5)
``G``  timestep_cond width (LCM's time_cond_proj_dim)
====== ==========================================================

An expression is an int, a symbol, or a product such as ``"f*h"`` or ``"2*C"``.
This module is pure Python: the lean runtime imports it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

Dim = Union[int, str]

#: Symbols whose value changes from call to call (the rest come from the model).
DYNAMIC_SYMBOLS = ("B", "h", "w")
#: Symbols fixed by the model (read from the manifest).
MODEL_SYMBOLS = ("C", "Cin", "S", "D", "f", "D1", "D2", "K1", "K2", "P", "T", "G")

#: "float" follows the component's precision (fp32 or fp16); the others are fixed.
FLOAT = "float"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float" (component precision), "float32" or "int32"
    shape: tuple[Dim, ...]
    optional: bool = False  # an output some exports lack (pooler_output)
    #: the range realistic values of an input lie in (export checks draw from it): "normal",
    #: "ids" (token ids), "timestep" ([0, 1000)), "image" ([-1, 1]), "pixels" (sizes in [0, 1024))
    draw: str = "normal"


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


N = Name

# -- the table: every tensor of every family, in one place --------------------------------------
INPUT_IDS = T(N.INPUT_IDS, "int32", ("B", "S"), draw="ids")
VAE_DECODER = ComponentSpec("vae_decoder", inputs=(T(N.LATENT_SAMPLE, FLOAT, ("B", "C", "h", "w")),),
                            outputs=(T(N.IMAGE, FLOAT, ("B", 3, "f*h", "f*w")),))
VAE_ENCODER = ComponentSpec("vae_encoder", inputs=(T(N.IMAGE, FLOAT, ("B", 3, "f*h", "f*w"), draw="image"),),
                            outputs=(T(N.LATENT_PARAMETERS, FLOAT, ("B", "2*C", "h", "w")),))
UNET_INPUTS = (
    T(N.SAMPLE, FLOAT, ("B", "Cin", "h", "w")),
    T(N.TIMESTEP, "float32", ("B",), draw="timestep"),
    T(N.ENCODER_HIDDEN_STATES, FLOAT, ("B", "S", "D")),
)
UNET_OUTPUTS = (T(N.OUT_SAMPLE, FLOAT, ("B", "C", "h", "w")),)
#: the SDXL UNet's added conditioning (addition_embed_type "text_time")
ADDED_COND = (T(N.TEXT_EMBEDS, FLOAT, ("B", "P")), T(N.TIME_IDS, FLOAT, ("B", "T"), draw="pixels"))
#: LCM's guidance embedding (time_cond_proj_dim)
TIMESTEP_COND = T(N.TIMESTEP_COND, FLOAT, ("B", "G"))


def _sd_text_encoder(hidden_states: bool) -> ComponentSpec:
    outputs = (T(N.LAST_HIDDEN_STATE, FLOAT, ("B", "S", "D")), T(N.POOLER_OUTPUT, FLOAT, ("B", "D"), optional=True))
    if hidden_states:
        outputs += (T(N.HIDDEN_STATES, FLOAT, ("K1", "B", "S", "D")),)
    return ComponentSpec("text_encoder", inputs=(INPUT_IDS,), outputs=outputs)


SDXL_TEXT_ENCODER = ComponentSpec("text_encoder", inputs=(INPUT_IDS,),
                                  outputs=(T(N.HIDDEN_STATES, FLOAT, ("K1", "B", "S", "D1")),))
SDXL_TEXT_ENCODER_2 = ComponentSpec("text_encoder_2", inputs=(INPUT_IDS,),
                                    outputs=(T(N.TEXT_EMBEDS, FLOAT, ("B", "P")),
                                             T(N.HIDDEN_STATES, FLOAT, ("K2", "B", "S", "D2"))))

#: family -> the diffusers pipeline classes it covers (txt2img first), the text encoders it has
FAMILIES: dict[str, tuple[str, ...]] = {
    "sd": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sdxl-refiner": ("text_encoder_2",),
}
VARIANTS = ("timestep_cond", "hidden_states")
#: every component name any family has, in the order export and build handle them
ALL_COMPONENT_NAMES: tuple[str, ...] = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")


@dataclass(frozen=True)
class ModelSpec:
    """The components of one model (family + variants) and their tensors."""

    family: str
    variants: tuple[str, ...]
    components: tuple[ComponentSpec, ...]

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return FAMILIES[self.family]

    def has(self, name: str) -> bool:
        return name in self.component_names

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"unknown component {name!r} for the {self.family} family; known: "
                       f"{', '.join(self.component_names)}")

    def symbols(self) -> tuple[str, ...]:
        """The model symbols this model's tensors use (what its manifest must give values for)."""
        found = {s for c in self.components for t in c.tensors for d in t.shape for s in symbols_of(d)}
        return tuple(s for s in MODEL_SYMBOLS if s in found)


def model_spec(family: str = "sd", variants: Iterable[str] = ()) -> ModelSpec:
    """The spec of a model of this family with these variants ("sd", () is SD 1.x/2.x as before)."""
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    given = tuple(variants)
    unknown = set(given) - set(VARIANTS)
    if unknown:
        raise KeyError(f"unknown model variant {sorted(unknown)[0]!r}; known: {', '.join(VARIANTS)}")
    return _model_spec(family, tuple(v for v in VARIANTS if v in given))


@functools.lru_cache(maxsize=None)
def _model_spec(family: str, variants: tuple[str, ...]) -> ModelSpec:
    unet_inputs = UNET_INPUTS + (ADDED_COND if family != "sd" else ())
    if "timestep_cond" in variants:
        unet_inputs += (TIMESTEP_COND,)
    unet = ComponentSpec("unet", inputs=unet_inputs, outputs=UNET_OUTPUTS)
    if family == "sd":
        text: tuple[ComponentSpec, ...] = (_sd_text_encoder("hidden_states" in variants),)
    elif family == "sdxl":
        text = (SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2)
    else:
        text = (SDXL_TEXT_ENCODER_2,)
    return ModelSpec(family, variants, text + (unet, VAE_DECODER, VAE_ENCODER))


#: SD 1.x/2.x as every manifest without a family means (the default everywhere a name is given)
SD = model_spec("sd")
COMPONENTS: dict[str, ComponentSpec] = {c.name: c for c in SD.components}
COMPONENT_NAMES: tuple[str, ...] = SD.component_names

#: CLIP's context length; every released SD text encoder uses it.
TOKEN_LENGTH = 77

ComponentRef = Union[str, ComponentSpec]


def component(name: ComponentRef) -> ComponentSpec:
    """A component's spec: a ComponentSpec as is, a name as the `sd` family has it."""
    if isinstance(name, ComponentSpec):
        return name
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


def _has_values(tensor: TensorSpec, values: Mapping[str, int]) -> bool:
    return all(s in values for d in tensor.shape for s in symbols_of(d))


def shapes(name: ComponentRef, values: Mapping[str, int], include_optional: bool = False) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every tensor of a component, for the given symbol values.

    An optional tensor whose model symbols have no value (an old manifest) is left out."""
    spec = component(name)
    return {t.name: shape_of(t, values) for t in spec.tensors
            if not t.optional or (include_optional and _has_values(t, values))}


def dynamic_axes(name: ComponentRef) -> dict[str, dict[int, str]]:
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
    token_length: int = TOKEN_LENGTH, extra: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The fixed symbols of one model (what the manifest records); `extra` holds the family's own
    (D1, D2, K1, K2, P, T, G)."""
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
