"""The family table: every model family sdrt runs, declared once.

A family entry says what a model of that family *is* — the diffusers pipeline classes it covers and
the diffusers class that runs each mode (the reference), the folder modules export loads, its
components and their tensors (for each variant), its tokenizers and which prompt feeds which text
encoder, its guidance mode, default scheduler and strengths, and the key prefixes LoRA files use for
its components. Export, the engines and the runtime derive everything family-specific from here;
adding a family is a new entry plus the code only it needs (its graph wrapper, its conditioning).

========================  ====================================================================
family ``sd``             SD 1.x / 2.x (and LCM-distilled SD): text_encoder, unet, vae_decoder,
                          vae_encoder
family ``sdxl``           SDXL base (and Turbo): text_encoder + text_encoder_2, a UNet that also
                          takes the pooled ``text_embeds`` and the micro-conditioning ``time_ids``
family ``sdxl-refiner``   SDXL refiner: text_encoder_2 only, ``time_ids`` of 5 (aesthetic score)
variant ``timestep_cond`` LCM-distilled UNets: the guidance embedding ``timestep_cond`` [B, G]
variant ``hidden_states`` SD text encoders also give their layer stack (for ``clip_skip``); SDXL's
                          always do
family ``sd3``            SD3 / SD3.5 (MMDiT): two CLIPs with projection (penultimate layer +
                          pooled projection), an optional T5 encoder, a transformer over
                          16-channel latents, a VAE with ``shift_factor``
variant ``t5``            SD3 with its T5 encoder (``text_encoder_3``); without it the runtime
                          feeds zeros in its place, as diffusers does
family ``flux``           Flux.1 (dev, schnell, Fill): CLIP (pooled) + T5 text encoders, a
                          transformer over packed 2x2 latent tokens with position ids, a VAE
                          with ``shift_factor``
variant ``guidance``      guidance-distilled Flux (dev): the transformer embeds ``guidance``
``controlnet``            a family that takes ControlNets (sd, sdxl): a ControlNet folder's only
                          component, and its UNet's residual inputs (``model_spec(...,
                          residuals=layout)``; see `sdrt.spec.residuals`)
========================  ====================================================================

Tensor names are Optimum's where Optimum has one (``text_embeds``, ``time_ids``,
``timestep_cond``). ``hidden_states`` is a stack ``[K, B, S, D]`` whose entry ``k`` is exactly what
the family's diffusers pipeline feeds the UNet for ``clip_skip = k`` (``text_layer`` "last": the
final layer norm of the ``k+1``-th last layer; "penultimate": the raw ``k+2``-th last layer, so entry
0 is SDXL's usual penultimate layer). An unknown family or variant is one line naming it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from sdrt.errors import SdrtError
from sdrt.spec.ip_adapter import IPAdapterLayout
from sdrt.spec.residuals import Residuals
from sdrt.spec.tensors import FLOAT, MODEL_SYMBOLS, N, ComponentSpec, TensorSpec, symbols_of

T = TensorSpec

# -- the tensors the UNet families are made of -----------------------------------------------------
#: rows per image (smallest, largest) with CFG / without: a text encoder sees a prompt's negative and
#: positive rows together (0: from one row per prompt), the UNet both halves of every image, the VAE
#: encoder one row per init image
TEXT_BATCH = ((0, 2), (0, 1))
UNET_BATCH = ((2, 2), (1, 1))
DECODER_BATCH = ((1, 1), (1, 1))
ENCODER_BATCH = ((0, 1), (0, 1))

INPUT_IDS = T(N.INPUT_IDS, "int32", ("B", "S"), draw="ids")
VAE_DECODER = ComponentSpec("vae_decoder", inputs=(T(N.LATENT_SAMPLE, FLOAT, ("B", "C", "h", "w")),),
                            outputs=(T(N.IMAGE, FLOAT, ("B", 3, "f*h", "f*w")),),
                            source="vae", graph="vae_decoder", batch=DECODER_BATCH, fp32_if_config="force_upcast")
VAE_ENCODER = ComponentSpec("vae_encoder", inputs=(T(N.IMAGE, FLOAT, ("B", 3, "f*h", "f*w"), draw="image"),),
                            outputs=(T(N.LATENT_PARAMETERS, FLOAT, ("B", "2*C", "h", "w")),),
                            source="vae", graph="vae_encoder", batch=ENCODER_BATCH, fp32_if_config="force_upcast")
UNET_INPUTS = (
    T(N.SAMPLE, FLOAT, ("B", "Cin", "h", "w")),
    T(N.TIMESTEP, "float32", ("B",), draw="timestep"),
    T(N.ENCODER_HIDDEN_STATES, FLOAT, ("B", "L", "D")),
)
UNET_OUTPUTS = (T(N.OUT_SAMPLE, FLOAT, ("B", "C", "h", "w")),)
#: the SDXL UNet's added conditioning (addition_embed_type "text_time")
ADDED_COND = (T(N.TEXT_EMBEDS, FLOAT, ("B", "P")), T(N.TIME_IDS, FLOAT, ("B", "T"), draw="pixels"))
#: LCM's guidance embedding (time_cond_proj_dim)
TIMESTEP_COND = T(N.TIMESTEP_COND, FLOAT, ("B", "G"))


def _unet(inputs: tuple[TensorSpec, ...], variants: tuple[str, ...]) -> ComponentSpec:
    if "timestep_cond" in variants:
        inputs += (TIMESTEP_COND,)
    return ComponentSpec("unet", inputs=inputs, outputs=UNET_OUTPUTS, source="unet", graph="unet", batch=UNET_BATCH)


def _text_encoder(name: str, outputs: tuple[TensorSpec, ...]) -> ComponentSpec:
    return ComponentSpec(name, inputs=(INPUT_IDS,), outputs=outputs, source=name, graph="text_encoder",
                         batch=TEXT_BATCH)


def _sd_components(variants: tuple[str, ...]) -> tuple[ComponentSpec, ...]:
    outputs = (T(N.LAST_HIDDEN_STATE, FLOAT, ("B", "S", "D")), T(N.POOLER_OUTPUT, FLOAT, ("B", "D"), optional=True))
    if "hidden_states" in variants:
        outputs += (T(N.HIDDEN_STATES, FLOAT, ("K1", "B", "S", "D")),)
    return (_text_encoder("text_encoder", outputs), _unet(UNET_INPUTS, variants), VAE_DECODER, VAE_ENCODER)


SDXL_TEXT_ENCODER = _text_encoder("text_encoder", (T(N.HIDDEN_STATES, FLOAT, ("K1", "B", "S", "D1")),))
SDXL_TEXT_ENCODER_2 = _text_encoder("text_encoder_2", (T(N.TEXT_EMBEDS, FLOAT, ("B", "P")),
                                                       T(N.HIDDEN_STATES, FLOAT, ("K2", "B", "S", "D2"))))


def _sdxl_components(variants: tuple[str, ...]) -> tuple[ComponentSpec, ...]:
    return (SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2, _unet(UNET_INPUTS + ADDED_COND, variants), VAE_DECODER,
            VAE_ENCODER)


def _refiner_components(variants: tuple[str, ...]) -> tuple[ComponentSpec, ...]:
    return (SDXL_TEXT_ENCODER_2, _unet(UNET_INPUTS + ADDED_COND, variants), VAE_DECODER, VAE_ENCODER)


# -- SD3 / SD3.5 (MMDiT) ---------------------------------------------------------------------------
#: T5's activations overflow fp16 (the released t5-v1_1-xxl: feed-forward outputs past 65504)
T5_FP32 = ("kept fp32 under --precision fp16: T5 encoders overflow in fp16 (their feed-forward activations "
           "pass 65504 on real weights; diffusers and the TensorRT demo keep T5 out of fp16 too)")
T5_ENCODER = ComponentSpec("text_encoder_3", inputs=(T(N.INPUT_IDS, "int32", ("B", "L"), draw="ids"),),
                           outputs=(T(N.LAST_HIDDEN_STATE, FLOAT, ("B", "L", "D")),), source="text_encoder_3",
                           graph="text_encoder", batch=TEXT_BATCH, fp32_always=T5_FP32)
SD3_TRANSFORMER = ComponentSpec(
    "transformer",
    inputs=(T(N.LATENTS, FLOAT, ("B", "C", "h", "w")), T(N.ENCODER_HIDDEN_STATES, FLOAT, ("B", "S+L", "D")),
            T(N.POOLED_PROJECTIONS, FLOAT, ("B", "P")), T(N.TIMESTEP, "float32", ("B",), draw="timestep")),
    outputs=(T(N.OUT_LATENTS, FLOAT, ("B", "C", "h", "w")),), source="transformer", graph="sd3_transformer",
    batch=UNET_BATCH)


def _sd3_components(variants: tuple[str, ...]) -> tuple[ComponentSpec, ...]:
    clip_l = _text_encoder("text_encoder", (T(N.TEXT_EMBEDS, FLOAT, ("B", "P1")),
                                            T(N.HIDDEN_STATES, FLOAT, ("K1", "B", "S", "D1"))))
    clip_g = _text_encoder("text_encoder_2", (T(N.TEXT_EMBEDS, FLOAT, ("B", "P2")),
                                              T(N.HIDDEN_STATES, FLOAT, ("K2", "B", "S", "D2"))))
    t5 = (T5_ENCODER,) if "t5" in variants else ()
    return (clip_l, clip_g, *t5, SD3_TRANSFORMER, VAE_DECODER, VAE_ENCODER)


# -- Flux.1 ----------------------------------------------------------------------------------------
class FluxName(N):
    """The spec's tensor names plus the Flux transformer's own (Optimum's names)."""

    IMG_IDS = "img_ids"     # [h/2*w/2, 3]: (0, row, column) of each image token
    TXT_IDS = "txt_ids"     # [L, 3]: zeros, one row per text token
    GUIDANCE = "guidance"   # [B]: the distilled guidance scale (Flux dev)


#: rows per image of the transformer: true CFG runs the negative prompt's rows beside the positive ones
FLUX_TRANSFORMER_BATCH = ((2, 2), (1, 1))
#: the CLIP encoder feeds only its pooled output; the T5 encoder (SD3's, as text_encoder_2) its hidden states
FLUX_TEXT_ENCODER = _text_encoder("text_encoder", (T(N.POOLER_OUTPUT, FLOAT, ("B", "P")),))
FLUX_TEXT_ENCODER_2 = dataclasses.replace(T5_ENCODER, name="text_encoder_2", source="text_encoder_2")


#: Flux's image tokens: each 2x2 patch of latent pixels is one (latent sizes are even)
FLUX_TOKENS = "h/2*w/2"


def _flux_components(variants: tuple[str, ...]) -> tuple[ComponentSpec, ...]:
    """The transformer reads the latents packed into tokens, each a 2x2 patch of latent pixels: ``h/2*w/2``
    tokens of ``Cin`` values (4C; Fill: 4C + 4C + 4·f·f)."""
    FN = FluxName
    inputs = (
        T(FN.LATENTS, FLOAT, ("B", FLUX_TOKENS, "Cin")),
        T(FN.ENCODER_HIDDEN_STATES, FLOAT, ("B", "L", "D")),
        T(FN.POOLED_PROJECTIONS, FLOAT, ("B", "P")),
        T(FN.TIMESTEP, "float32", ("B",), draw="timestep"),
        T(FN.IMG_IDS, "float32", (FLUX_TOKENS, 3), draw="positions"),
        T(FN.TXT_IDS, "float32", ("L", 3), draw="zeros"),
    )
    if "guidance" in variants:
        inputs += (T(FN.GUIDANCE, "float32", ("B",), draw="guidance"),)
    transformer = ComponentSpec("transformer", inputs=inputs,
                                outputs=(T(FN.OUT_LATENTS, FLOAT, ("B", FLUX_TOKENS, "4*C")),),
                                source="transformer", graph="flux_transformer", batch=FLUX_TRANSFORMER_BATCH)
    return (FLUX_TEXT_ENCODER, FLUX_TEXT_ENCODER_2, transformer, VAE_DECODER, VAE_ENCODER)


# -- the family record -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring); the fields are what the rest of sdrt reads."""

    name: str
    title: str                               # what users call it ("SD 1.x/2.x")
    #: diffusers pipeline class this family covers -> {mode: the diffusers class that runs that mode}
    pipelines: Mapping[str, Mapping[str, str]]
    #: diffusers folder module -> (library, class) export loads (model_index.json must name them)
    modules: Mapping[str, tuple[str, str]]
    components: Callable[[tuple[str, ...]], tuple[ComponentSpec, ...]]  # for these variants
    #: text encoder component -> (its tokenizer folder, the call argument that feeds it)
    text_encoders: Mapping[str, tuple[str, str]]
    denoiser: str                            # the component run once per step
    runtime: str                             # the runtime's pipeline class for it (sdrt.runtime.pipeline.RUNTIMES)
    default_scheduler: str                   # a preset's scheduler when it names none
    #: where the UNet's text conditioning comes from: "last" (last_hidden_state; clip_skip picks from
    #: the normed stack) or "penultimate" (always the raw stack, entry clip_skip)
    text_layer: str
    #: key prefix in a LoRA file -> the component it changes (kohya's and diffusers' spellings)
    lora_prefixes: Mapping[str, str]
    variants: tuple[str, ...] = ()           # the variants a model of this family may have
    absent: tuple[str, ...] = ()             # modules its folder must not have (a refiner has no text_encoder)
    guidance: str = "cfg"                    # "cfg": unconditional and conditional rows in one batch;
    #                                          "distilled": an embedded guidance scale (Flux), true CFG opt-in
    #: diffusers' default strength per mode (SDXL's img2img is meant for refining)
    default_strength: Mapping[str, float] = field(default_factory=lambda: {"img2img": 0.8, "inpaint": 0.8})
    txt2img: bool = True                     # False: it refines an image, never draws from a prompt alone
    size_conditioning: bool = False          # SDXL's micro-conditioning (time_ids, text_embeds) and arguments
    aesthetic_score: bool = False            # time_ids carry the aesthetic score (the refiner)
    #: the classes whose diffusers pipelines patch old scheduler configs when they load (SD 1.x/2.x's)
    scheduler_config_fixes: tuple[str, ...] = ()
    #: modules a folder may lack (then the variant needing them is off): SD3 runs without T5
    optional_modules: tuple[str, ...] = ()
    #: tokenizer folder -> its kind when it is not CLIP's ("t5": a SentencePiece Unigram tokenizer.json)
    tokenizer_kinds: Mapping[str, str] = field(default_factory=dict)
    #: components exported in fp32 when their fp16 graph fails the export check (`--precision fp16`),
    #: measured per export, the reason recorded: Flux's transformer
    fp16_fallback: tuple[str, ...] = ()
    #: component -> the original (non-diffusers) module tree kohya's files name its layers after:
    #: "ldm" (the SGM/LDM UNet of SDXL files), "mmdit" (Stability's SD3 MMDiT: fused q/k/v)
    lora_names: Mapping[str, str] = field(default_factory=dict)
    #: it takes ControlNets: mode -> the diffusers ControlNet pipeline class that runs it (the reference)
    controlnet: Mapping[str, str] = field(default_factory=dict)
    #: those pipelines' default controlnet_conditioning_scale per mode
    controlnet_scale: Mapping[str, float] = field(default_factory=dict)

    @property
    def component_names(self) -> tuple[str, ...]:
        """Its components (with every variant), in the order export and build handle them."""
        return tuple(c.name for c in self.components(self.variants))

    @property
    def lora_components(self) -> tuple[str, ...]:
        """The components a LoRA may change (export writes their weight maps), in switching order."""
        targets = set(self.lora_prefixes.values())
        return tuple(name for name in self.component_names if name in targets)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.pipelines)

    def mode_class(self, class_name: str, mode: str) -> str | None:
        """The diffusers class that runs `mode` for a model saved as `class_name` (None: no such mode)."""
        modes = self.pipelines.get(class_name) or next(iter(self.pipelines.values()))
        return modes.get(mode)


_SD_MODES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
             "inpaint": "StableDiffusionInpaintPipeline"}
_LCM_MODES = {"txt2img": "LatentConsistencyModelPipeline", "img2img": "LatentConsistencyModelImg2ImgPipeline"}
_SDXL_MODES = {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"}
_CLIP = ("transformers", "CLIPTextModel")
_CLIP_PROJECTION = ("transformers", "CLIPTextModelWithProjection")
_UNET = ("diffusers", "UNet2DConditionModel")
_VAE = ("diffusers", "AutoencoderKL")
_SD3_MODES = {"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
              "inpaint": "StableDiffusion3InpaintPipeline"}
_FLUX_MODES = {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"}
#: Flux LoRA key prefixes: diffusers/PEFT (ai-toolkit, SimpleTuner), kohya sd-scripts (BFL layer names
#: underscored; lora_te1_ CLIP, lora_te3_ T5), BFL/ComfyUI (``diffusion_model.``, its CLIP-L keys), XLabs
#: (no prefix: BFL block names); sdrt.runtime.lora.flux_names maps BFL's names onto diffusers' modules
_FLUX_LORA = {"transformer.": "transformer", "lora_unet_": "transformer", "lora_transformer_": "transformer",
              "diffusion_model.": "transformer", "double_blocks.": "transformer", "single_blocks.": "transformer",
              "text_encoder.": "text_encoder", "lora_te1_": "text_encoder",
              "text_encoders.clip_l.transformer.": "text_encoder", "text_encoder_2.": "text_encoder_2",
              "lora_te3_": "text_encoder_2"}
#: SD3's: diffusers/PEFT (transformer., text_encoder., text_encoder_2.; PEFT's bare base_model.model.),
#: kohya sd-scripts (lora_unet_ = the MMDiT's original names, lora_te1_/2_/3_ = CLIP-L, CLIP-G, T5),
#: OneTrainer (lora_transformer_ = diffusers names, underscored), SimpleTuner's LyCORIS-LoRA
#: (lycoris_), ComfyUI's generic diffusion_model. (the MMDiT's original names)
_SD3_LORA = {"transformer.": "transformer", "base_model.model.": "transformer", "lora_unet_": "transformer",
             "lora_transformer_": "transformer", "lycoris_": "transformer", "diffusion_model.": "transformer",
             "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3",
             "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
_SDXL_LORA = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
              "unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}

#: the table (the order `sdrt info` and the docs list them in)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        "sd", "SD 1.x/2.x (and LCM-distilled SD)",
        pipelines={**dict.fromkeys(_SD_MODES.values(), _SD_MODES), "LatentConsistencyModelPipeline": _LCM_MODES},
        modules={"text_encoder": _CLIP, "unet": _UNET, "vae": _VAE},
        components=_sd_components, variants=("timestep_cond", "hidden_states"),
        text_encoders={"text_encoder": ("tokenizer", "prompt")}, denoiser="unet", runtime="unet",
        default_scheduler="PNDMScheduler", text_layer="last",
        lora_prefixes={"lora_unet_": "unet", "lora_te_": "text_encoder", "unet.": "unet",
                       "text_encoder.": "text_encoder"}, lora_names={"unet": "ldm"},
        scheduler_config_fixes=tuple(dict.fromkeys(_SD_MODES.values())),
        controlnet={"txt2img": "StableDiffusionControlNetPipeline",
                    "img2img": "StableDiffusionControlNetImg2ImgPipeline",
                    "inpaint": "StableDiffusionControlNetInpaintPipeline"},
        controlnet_scale={"txt2img": 1.0, "img2img": 0.8, "inpaint": 0.5},
    ),
    Family(
        "sdxl", "SDXL base (and Turbo)",
        pipelines=dict.fromkeys(_SDXL_MODES.values(), _SDXL_MODES),
        modules={"text_encoder": _CLIP, "text_encoder_2": _CLIP_PROJECTION, "unet": _UNET, "vae": _VAE},
        components=_sdxl_components, variants=("timestep_cond",),
        text_encoders={"text_encoder": ("tokenizer", "prompt"), "text_encoder_2": ("tokenizer_2", "prompt_2")},
        denoiser="unet", runtime="unet", default_scheduler="EulerDiscreteScheduler", text_layer="penultimate",
        lora_prefixes=_SDXL_LORA, lora_names={"unet": "ldm"}, default_strength={"img2img": 0.3, "inpaint": 0.9999},
        size_conditioning=True,
        controlnet={"txt2img": "StableDiffusionXLControlNetPipeline",
                    "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                    "inpaint": "StableDiffusionXLControlNetInpaintPipeline"},
        controlnet_scale={"txt2img": 1.0, "img2img": 0.8, "inpaint": 1.0},
    ),
    Family(
        "sdxl-refiner", "SDXL refiner",
        pipelines=dict.fromkeys(_SDXL_MODES.values(), _SDXL_MODES),
        modules={"text_encoder_2": _CLIP_PROJECTION, "unet": _UNET, "vae": _VAE}, absent=("text_encoder",),
        components=_refiner_components, variants=("timestep_cond",),
        # diffusers pairs the prompts with the encoders a pipeline has: the refiner's one gets `prompt`
        text_encoders={"text_encoder_2": ("tokenizer_2", "prompt")},
        denoiser="unet", runtime="unet", default_scheduler="EulerDiscreteScheduler", text_layer="penultimate",
        lora_prefixes=_SDXL_LORA, lora_names={"unet": "ldm"}, default_strength={"img2img": 0.3, "inpaint": 0.9999},
        txt2img=False,
        size_conditioning=True, aesthetic_score=True,
    ),
    Family(
        "sd3", "SD3 / SD3.5 (MMDiT)",
        pipelines=dict.fromkeys(_SD3_MODES.values(), _SD3_MODES),
        modules={"text_encoder": _CLIP_PROJECTION, "text_encoder_2": _CLIP_PROJECTION,
                 "text_encoder_3": ("transformers", "T5EncoderModel"),
                 "transformer": ("diffusers", "SD3Transformer2DModel"), "vae": _VAE},
        optional_modules=("text_encoder_3",),
        components=_sd3_components, variants=("t5",),
        text_encoders={"text_encoder": ("tokenizer", "prompt"), "text_encoder_2": ("tokenizer_2", "prompt_2"),
                       "text_encoder_3": ("tokenizer_3", "prompt_3")},
        tokenizer_kinds={"tokenizer_3": "t5"},
        denoiser="transformer", runtime="sd3", default_scheduler="FlowMatchEulerDiscreteScheduler",
        text_layer="penultimate",
        lora_prefixes=_SD3_LORA, lora_names={"transformer": "mmdit"},
        default_strength={"img2img": 0.6, "inpaint": 0.6},
    ),
    Family(
        "flux", "Flux.1 (dev, schnell and their fine-tunes)",
        pipelines={**dict.fromkeys(_FLUX_MODES.values(), _FLUX_MODES), "FluxFillPipeline": {"inpaint": "FluxFillPipeline"}},
        modules={"text_encoder": _CLIP, "text_encoder_2": ("transformers", "T5EncoderModel"),
                 "transformer": ("diffusers", "FluxTransformer2DModel"), "vae": _VAE},
        components=_flux_components, variants=("guidance",),
        text_encoders={"text_encoder": ("tokenizer", "prompt"), "text_encoder_2": ("tokenizer_2", "prompt_2")},
        tokenizer_kinds={"tokenizer_2": "t5"},
        denoiser="transformer", runtime="flux", default_scheduler="FlowMatchEulerDiscreteScheduler",
        text_layer="last", lora_prefixes=_FLUX_LORA, guidance="distilled",
        default_strength={"img2img": 0.6, "inpaint": 0.6}, fp16_fallback=("transformer",),
    ),
)}
#: every variant any family knows
VARIANTS = tuple(dict.fromkeys(v for f in FAMILIES.values() for v in f.variants))


def family(name: str) -> Family:
    """The family of that name; an unknown name is one line listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise SdrtError(f"unknown model family {name!r} (this sdrt knows {', '.join(FAMILIES)}): upgrade sdrt, "
                        f"or export the model again with this version") from None


def family_of_pipeline(class_name: str, model_index: Mapping[str, object]) -> Family | None:
    """The family of a diffusers folder saved as `class_name` (None: no family covers that class).

    Several families may cover one class (SDXL base and refiner): the first whose `absent` modules the
    folder lacks wins, families that require an absence tried first."""
    def lacks(module: str) -> bool:
        entry = model_index.get(module)
        return not entry or (isinstance(entry, (list, tuple)) and entry[1] is None)

    covering = [f for f in FAMILIES.values() if class_name in f.pipelines]
    for f in sorted(covering, key=lambda f: not f.absent):
        if all(lacks(m) for m in f.absent):
            return f
    return None


def lora_prefixes() -> dict[str, str]:
    """Every key prefix a family's LoRA files use -> the component it targets, for reading a file with no
    model at hand (a model reads with its own family's `lora_prefixes`: kohya's `lora_unet_` is the UNet
    of SD/SDXL but the transformer of SD3/Flux). A prefix two families map differently keeps the first
    family's meaning here."""
    found: dict[str, str] = {}
    for entry in FAMILIES.values():
        for prefix, component in entry.lora_prefixes.items():
            found.setdefault(prefix, component)
    return found


def supported_classes() -> tuple[str, ...]:
    """Every diffusers pipeline class some family covers."""
    return tuple(dict.fromkeys(c for f in FAMILIES.values() for c in f.pipelines))


# -- one model: family + variants -> its components --------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The components of one model (family + variants) and their tensors."""

    family: Family
    variants: tuple[str, ...]
    components: tuple[ComponentSpec, ...]

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def text_encoders(self) -> tuple[str, ...]:
        """The family's text encoders this model has (an SD3 without T5 lacks text_encoder_3)."""
        return tuple(name for name in self.family.text_encoders if self.has(name))

    @property
    def denoiser(self) -> ComponentSpec:
        return self.component(self.family.denoiser)

    def has(self, name: str) -> bool:
        return name in self.component_names

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"unknown component {name!r} for the {self.family.name} family; known: "
                       f"{', '.join(self.component_names)}")

    def symbols(self) -> tuple[str, ...]:
        """The model symbols this model's tensors use (what its manifest must give values for)."""
        found = {s for c in self.components for t in c.tensors for d in t.shape for s in symbols_of(d)}
        return tuple(s for s in MODEL_SYMBOLS if s in found)


def model_spec(family_name: str, variants: Iterable[str] = (), residuals: Residuals | None = None,
               ip_adapter: IPAdapterLayout | None = None) -> ModelSpec:
    """The spec of a model of this family with these variants (one line for an unknown one).

    `residuals`: the denoiser also takes ControlNet residuals of this layout (after its other inputs);
    `ip_adapter`: it also takes an IP-Adapter's keys and values (after those; `sdrt.spec.ip_adapter`)."""
    entry = family(family_name)
    given = tuple(variants)
    unknown = [v for v in given if v not in entry.variants]
    if unknown:
        raise SdrtError(f"unknown model variant {unknown[0]!r} for the {entry.name} family (it knows "
                        f"{', '.join(entry.variants) or 'none'}): upgrade sdrt, or export the model again")
    if residuals is not None and not entry.controlnet:
        raise SdrtError(f"a {entry.title} model takes no ControlNet: leave controlnet out")
    if ip_adapter is not None and not entry.controlnet:
        raise SdrtError(f"a {entry.title} model takes no IP-Adapter: leave ip_adapter out")
    return _model_spec(entry.name, tuple(v for v in entry.variants if v in given), residuals, ip_adapter)


@functools.lru_cache(maxsize=None)
def _model_spec(family_name: str, variants: tuple[str, ...], residuals: Residuals | None = None,
                ip_adapter: IPAdapterLayout | None = None) -> ModelSpec:
    entry = FAMILIES[family_name]
    components = entry.components(variants)
    extra = (residuals.tensors() if residuals is not None else ()) + (
        ip_adapter.unet_tensors() if ip_adapter is not None else ())
    if extra:
        components = tuple(dataclasses.replace(c, inputs=c.inputs + extra) if c.name == entry.denoiser
                           else c for c in components)
    return ModelSpec(entry, variants, components)


def ip_adapter_spec(family_name: str, layout: IPAdapterLayout) -> ModelSpec:
    """The spec of an exported IP-Adapter folder: its image encoder and its projection (`sdrt.spec.ip_adapter`)."""
    return _ip_adapter_spec(family(family_name).name, layout)


@functools.lru_cache(maxsize=None)
def _ip_adapter_spec(family_name: str, layout: IPAdapterLayout) -> ModelSpec:
    return ModelSpec(FAMILIES[family_name], (), layout.components())


#: rows of a ControlNet per image: guess mode runs it on the conditional half only
CONTROLNET_BATCH = ((1, 2), (1, 1))


def controlnet_component(entry: Family, residuals: Residuals, conditioning_channels: int) -> ComponentSpec:
    """A ControlNet graph: the UNet's per-step inputs, the control image and one scale per residual (a
    plain scale repeated, or guess mode's ramp) -> its residuals, already scaled."""
    inputs = (
        T(N.SAMPLE, FLOAT, ("B", "C", "h", "w")), UNET_INPUTS[1], UNET_INPUTS[2],
        T(N.CONTROLNET_COND, FLOAT, ("B", conditioning_channels, "f*h", "f*w"), draw="image"),
        T(N.CONDITIONING_SCALE, "float32", (residuals.count,), draw="scale"),
    )
    if entry.size_conditioning:
        inputs += ADDED_COND
    return ComponentSpec("controlnet", inputs=inputs, outputs=residuals.tensors(), source="controlnet",
                         graph="controlnet", batch=CONTROLNET_BATCH)


def controlnet_spec(family_name: str, residuals: Residuals, conditioning_channels: int) -> ModelSpec:
    """The spec of a ControlNet folder made for bases of this family (its one component: controlnet)."""
    entry = family(family_name)
    if not entry.controlnet:
        raise SdrtError(f"the {entry.title} family takes no ControlNet (families that do: "
                        f"{', '.join(f.name for f in FAMILIES.values() if f.controlnet)})")
    return _controlnet_spec(entry.name, residuals, int(conditioning_channels))


@functools.lru_cache(maxsize=None)
def _controlnet_spec(family_name: str, residuals: Residuals, conditioning_channels: int) -> ModelSpec:
    entry = FAMILIES[family_name]
    return ModelSpec(entry, (), (controlnet_component(entry, residuals, conditioning_channels),))


def component_names() -> tuple[str, ...]:
    """Every component name any family has, in the order export and build handle them (each family's
    order kept: a name first seen in a later family goes right after its predecessor there)."""
    merged: list[str] = []
    for entry in FAMILIES.values():
        previous = None
        for name in entry.component_names:
            if name not in merged:
                merged.insert(merged.index(previous) + 1 if previous else 0, name)
            previous = name
    return tuple(merged)
