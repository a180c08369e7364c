"""Presets: named Stable Diffusion pipelines built from configs (seeded random weights; `shapes` is trained).

They let the whole toolchain (export, engines, runtime, benchmarks) run with no download: `tiny`
for CI and the demo, `sd15` / `sd21` with the released architectures for real-size timings, and
small variants that keep SD 2.1's and the inpainting UNet's structural features for tests.
The configs below are the released model_index / config.json values (SD 1.5:
runwayml/stable-diffusion-v1-5, SD 2.1: stabilityai/stable-diffusion-2-1); keys left out are
diffusers' defaults, which match those files.

Weights are random but seeded: the modules are built with their parameters on the meta device
(no default init; that also gives sd15/sd21 skeletons for free, for tests), then every parameter
is drawn once from one seeded generator, in a fixed order, with a scale that keeps activations
in range (so fp16 exports and images stay finite). The global torch RNG is never touched.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sdrt import atomic
from sdrt.errors import SdrtError
from sdrt.export import presets_sd3 as sd3
from sdrt.export import presets_sdxl as xl
from sdrt.export.shapes_model import SHAPES_SCHEDULER, SHAPES_TEXT, SHAPES_UNET, SHAPES_VAE

SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
#: SD 1.x ships PNDM with these keys (model_index of runwayml/stable-diffusion-v1-5).
SD15_SCHEDULER = {**SD_SCHEDULE, "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False}
#: SD 2.1 (768-v) ships DDIM, v-prediction.
SD21_SCHEDULER = {
    **SD_SCHEDULE,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}
SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
#: what SD 1.x and 2.x UNets share; each preset adds its size, cross-attention width and heads
SD_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": SD_DOWN,
    "up_block_types": SD_UP,
    "layers_per_block": 2,
}
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
#: CLIP text configs as the SD repos ship them (eos_token_id 2 is the legacy value: pooling by argmax).
CLIP_IDS = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
TINY_VAE = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TINY_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
TINY_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
TINY_UNET = {
    "sample_size": 32,
    "block_out_channels": [32, 64, 64],
    "down_block_types": TINY_DOWN,
    "up_block_types": TINY_UP,
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 32,
}
TINY_TEXT = {**CLIP_IDS, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 32, "hidden_act": "quick_gelu"}


@dataclass(frozen=True)
class Preset:
    """One pipeline, as data: the configs of its components and the pipeline class that ties them."""

    name: str
    description: str
    unet: dict[str, Any] | None  # None: a transformer model (SD3)
    vae: dict[str, Any]
    text_encoder: dict[str, Any] | None  # None: the SDXL refiner (text_encoder_2 only)
    scheduler: dict[str, Any]
    scheduler_class: str = "PNDMScheduler"
    pipeline_class: str = "StableDiffusionPipeline"
    pad_token: str = "<|endoftext|>"  # SD 1.x; SD 2.x pads with "!"
    text_encoder_2: dict[str, Any] | None = None  # SDXL: CLIPTextModelWithProjection
    pad_token_2: str = "!"  # SDXL's second tokenizer (OpenCLIP) pads with "!"
    pipeline_options: dict[str, Any] = field(default_factory=dict)  # model_index keys (force_zeros_...)
    init_std: dict[str, float] = field(default_factory=lambda: {"embedding": 0.02, "bias": 0.02, "norm": 0.02})
    trained: bool = False  # weights shipped in sdrt/data/<name>/ (see shapes_model.py), not seeded
    text_encoder_class: str = "CLIPTextModel"  # SD3: CLIPTextModelWithProjection (pooled projection too)
    text_encoder_3: dict[str, Any] | None = None  # SD3: the T5 encoder (T5EncoderModel)
    transformer: dict[str, Any] | None = None  # SD3: the denoiser, a diffusers `transformer_class`
    transformer_class: str = "SD3Transformer2DModel"
    #: the dtype `write_preset` stores the weights in: fp32, or fp16 as the released folder has them
    #: (sd3.5-medium: 16 GB instead of 31; sdrt export reads them back as they are stored)
    storage: str = "fp32"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            "a tiny SD 1.x-style pipeline (64 px, 2-block VAE): exports and runs in seconds on a CPU",
            unet=TINY_UNET,
            vae=TINY_VAE,
            text_encoder=TINY_TEXT,
            scheduler=SD15_SCHEDULER,
        ),
        Preset(
            "tiny-sd21",
            "a tiny SD 2.1-style pipeline: v-prediction, linear projection, per-block heads, upcast attention",
            unet={
                **TINY_UNET,
                "attention_head_dim": [2, 4, 4],
                "use_linear_projection": True,
                "upcast_attention": True,
            },
            vae=TINY_VAE,
            text_encoder={**TINY_TEXT, "hidden_act": "gelu"},
            scheduler=SD21_SCHEDULER,
            scheduler_class="DDIMScheduler",
            pad_token="!",
        ),
        Preset(
            "tiny-inpaint",
            "a tiny inpainting pipeline: 9-channel UNet (latents + mask + masked-image latents)",
            unet={**TINY_UNET, "in_channels": 9},
            vae=TINY_VAE,
            text_encoder=TINY_TEXT,
            scheduler=SD15_SCHEDULER,
            pipeline_class="StableDiffusionInpaintPipeline",
        ),
        Preset(
            "shapes",
            "a tiny SD 1.x-style model TRAINED by sdrt on coloured shapes (32 px; try \"a red circle on a "
            "blue background\"): real images in seconds",
            unet=SHAPES_UNET,
            vae=SHAPES_VAE,
            text_encoder=SHAPES_TEXT,
            scheduler=SHAPES_SCHEDULER,
            scheduler_class="DDIMScheduler",
            trained=True,
        ),
        Preset(
            "sd15",
            "the SD 1.5 architecture (860M-parameter UNet, CLIP ViT-L/14 text encoder, 512 px), random weights",
            unet={**SD_UNET, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
            vae={**SD_VAE, "sample_size": 512},
            text_encoder={**CLIP_IDS, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
            scheduler=SD15_SCHEDULER,
        ),
        Preset(
            "sd21",
            "the SD 2.1 architecture (v-prediction, OpenCLIP-H text encoder, 768 px), random weights",
            unet={**SD_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                  "use_linear_projection": True, "upcast_attention": True},
            vae={**SD_VAE, "sample_size": 768},
            text_encoder={**CLIP_IDS, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                          "num_attention_heads": 16, "projection_dim": 512, "hidden_act": "gelu"},
            scheduler=SD21_SCHEDULER,
            scheduler_class="DDIMScheduler",
            pad_token="!",
        ),
        Preset(
            "tiny-sdxl",
            "a tiny SDXL-style pipeline: two text encoders, text_time added conditioning, 2 transformer layers",
            unet=xl.TINY_SDXL_UNET,
            vae={**TINY_VAE, **xl.SDXL_VAE_CHANGES},
            text_encoder=xl.TINY_CLIP,
            text_encoder_2=xl.TINY_CLIP_2,
            scheduler=xl.SDXL_SCHEDULER,
            scheduler_class="EulerDiscreteScheduler",
            pipeline_class="StableDiffusionXLPipeline",
            pipeline_options=xl.SDXL_BASE_OPTIONS,
        ),
        Preset(
            "tiny-sdxl-refiner",
            "a tiny SDXL refiner: text_encoder_2 only, aesthetic-score time ids (5), same latent space as tiny-sdxl",
            unet=xl.TINY_SDXL_REFINER_UNET,
            vae={**TINY_VAE, **xl.SDXL_VAE_CHANGES},
            text_encoder=None,
            text_encoder_2=xl.TINY_CLIP_2,
            scheduler=xl.SDXL_SCHEDULER,
            scheduler_class="EulerDiscreteScheduler",
            pipeline_class="StableDiffusionXLImg2ImgPipeline",
            pipeline_options=xl.SDXL_REFINER_OPTIONS,
        ),
        Preset(
            "tiny-lcm",
            "a tiny LCM-distilled SD 1.x-style pipeline: UNet with time_cond_proj_dim 256, LCMScheduler",
            unet={**TINY_UNET, "time_cond_proj_dim": 256},
            vae=TINY_VAE,
            text_encoder=TINY_TEXT,
            scheduler=xl.LCM_SCHEDULER,
            scheduler_class="LCMScheduler",
            pipeline_class="LatentConsistencyModelPipeline",
        ),
        Preset(
            "sdxl",
            "the SDXL 1.0 base architecture (2.6B-parameter UNet, CLIP ViT-L + OpenCLIP ViT-bigG, 1024 px), "
            "random weights",
            unet=xl.SDXL_UNET,
            vae={**SD_VAE, "sample_size": 1024, **xl.SDXL_VAE_CHANGES},
            text_encoder=xl.CLIP_L,
            text_encoder_2=xl.CLIP_BIG_G,
            scheduler=xl.SDXL_SCHEDULER,
            scheduler_class="EulerDiscreteScheduler",
            pipeline_class="StableDiffusionXLPipeline",
            pipeline_options=xl.SDXL_BASE_OPTIONS,
        ),
        Preset(
            "sdxl-refiner",
            "the SDXL 1.0 refiner architecture (OpenCLIP ViT-bigG only, aesthetic-score time ids), random weights",
            unet=xl.SDXL_REFINER_UNET,
            vae={**SD_VAE, "sample_size": 1024, **xl.SDXL_VAE_CHANGES},
            text_encoder=None,
            text_encoder_2=xl.CLIP_BIG_G,
            scheduler=xl.SDXL_SCHEDULER,
            scheduler_class="EulerDiscreteScheduler",
            pipeline_class="StableDiffusionXLImg2ImgPipeline",
            pipeline_options=xl.SDXL_REFINER_OPTIONS,
        ),
        Preset(
            "tiny-sd3",
            "a tiny SD3.5-style pipeline: MMDiT with qk RMS-norm and a dual-attention layer, two CLIPs with "
            "projection, a T5 encoder (sdrt's small vocabulary), 16-channel VAE with shift_factor; 64 px",
            unet=None, transformer=sd3.TINY_SD3_TRANSFORMER, vae=sd3.TINY_SD3_VAE,
            text_encoder=sd3.TINY_CLIP_L, text_encoder_class="CLIPTextModelWithProjection",
            text_encoder_2=sd3.TINY_CLIP_G, text_encoder_3=sd3.TINY_T5,
            scheduler=sd3.SD3_SCHEDULER, scheduler_class="FlowMatchEulerDiscreteScheduler",
            pipeline_class="StableDiffusion3Pipeline",
        ),
        Preset(
            "sd3.5-medium",
            "the SD3.5 Medium architecture (2.5B-parameter MMDiT-X, CLIP-L + OpenCLIP-bigG, T5-XXL encoder, "
            "1024 px), random weights (T5 with sdrt's small vocabulary)",
            unet=None, transformer=sd3.SD35_MEDIUM_TRANSFORMER, vae=sd3.SD3_VAE,
            text_encoder=sd3.CLIP_L, text_encoder_class="CLIPTextModelWithProjection",
            text_encoder_2=sd3.CLIP_G, text_encoder_3=sd3.T5_XXL,
            scheduler=sd3.SD3_SCHEDULER, scheduler_class="FlowMatchEulerDiscreteScheduler",
            pipeline_class="StableDiffusion3Pipeline", storage="fp16",
        ),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise SdrtError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device (buffers stay real, e.g. CLIP's position ids).

    The default initialization is skipped: its values would be overwritten anyway.
    It patches ``nn.Module.register_parameter`` while it is open: build in one thread at a time.
    """
    import torch

    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def _param_kind(module: Any, param_name: str) -> str:
    import torch

    if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        return "norm_" + param_name
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    return "bias" if param_name == "bias" else "weight"


def _scaled(kind: str, shape: Any, std: dict[str, float]) -> tuple[float, float]:
    """(std, mean) of a parameter: weights N(0, 1/fan_in) keep activations O(1); norms ~1."""
    if kind == "weight":
        fan_in = 1
        for d in shape[1:]:
            fan_in *= int(d)
        return fan_in**-0.5, 0.0
    if kind == "norm_weight":
        return std["norm"], 1.0
    return std["norm" if kind == "norm_bias" else kind], 0.0


def _fill_seeded(models: list[Any], seed: int, preset: Preset, dtype: Any) -> None:
    """Draw every (meta) parameter from one seeded generator, in the models' named order."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for model in models:
        _fill(model, generator, preset, dtype)


def _fill(model: Any, generator: Any, preset: Preset, dtype: Any) -> None:
    """Draw `model`'s (meta) parameters from `generator` (fp32 draws, stored in `dtype` one at a time)."""
    import torch

    for module in model.modules():
        for pname, param in list(module._parameters.items()):
            if param is None:
                continue
            std, mean = _scaled(_param_kind(module, pname), param.shape, preset.init_std)
            values = torch.empty(param.shape, dtype=torch.float32).normal_(mean, std, generator=generator)
            module._parameters[pname] = torch.nn.Parameter(values.to(dtype), requires_grad=False)


def build_components(name: str, *, seed: int = 0, dtype: Any = None, device: str = "cpu") -> dict[str, Any]:
    """The pipeline's parts, keyed as diffusers names them. ``device="meta"`` skips the weights
    (configs and parameter counts of sd15/sd21 without 4 GB of memory); weights are drawn on
    the CPU, so another device gets the same bits."""
    import diffusers
    import torch
    import transformers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sdrt.export.tokenizer_files import build_clip_tokenizer

    preset = get_preset(name)
    dtype = dtype or torch.float32
    models: dict[str, Any] = {}
    with _parameters_on_meta():  # deep copies: a model's config must not share lists with the table
        if preset.text_encoder is not None:
            models["text_encoder"] = getattr(transformers, preset.text_encoder_class)(
                CLIPTextConfig(**copy.deepcopy(preset.text_encoder)))
        if preset.text_encoder_2 is not None:
            models["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(**copy.deepcopy(preset.text_encoder_2)))
        if preset.text_encoder_3 is not None:
            models["text_encoder_3"] = transformers.T5EncoderModel(
                transformers.T5Config(**copy.deepcopy(preset.text_encoder_3)))
        if preset.unet is not None:
            models["unet"] = diffusers.UNet2DConditionModel(**copy.deepcopy(preset.unet))
        if preset.transformer is not None:
            models["transformer"] = getattr(diffusers, preset.transformer_class)(**copy.deepcopy(preset.transformer))
        models["vae"] = diffusers.AutoencoderKL(**copy.deepcopy(preset.vae))
    if device != "meta" and preset.trained:
        from sdrt.export.shapes_model import load_shipped_weights

        load_shipped_weights(models, dtype)
    elif device != "meta":
        # A fixed order (text encoders, unet, vae): the same seed gives the same bits.
        _fill_seeded(list(models.values()), seed, preset, dtype)
        for model in models.values():
            model.eval().to(device)
    scheduler = getattr(diffusers, preset.scheduler_class)(**copy.deepcopy(preset.scheduler))
    tokenizers: dict[str, Any] = {}
    if preset.text_encoder is not None:
        tokenizers["tokenizer"] = build_clip_tokenizer(preset.pad_token)
    if preset.text_encoder_2 is not None:
        tokenizers["tokenizer_2"] = build_clip_tokenizer(preset.pad_token_2)
    if preset.text_encoder_3 is not None:
        from sdrt.export.tokenizer_t5 import build_t5_tokenizer

        tokenizers["tokenizer_3"] = build_t5_tokenizer()
    return {**models, "scheduler": scheduler, **tokenizers}


def build_pipeline(name: str, seed: int = 0, dtype: Any = None, device: str = "cpu") -> Any:
    """A diffusers pipeline with the preset's seeded random weights (no safety checker; `device="meta"`:
    no weights)."""
    return _assemble(get_preset(name), build_components(name, seed=seed, dtype=dtype, device=device))


def _assemble(preset: Preset, parts: dict[str, Any]) -> Any:
    """The preset's diffusers pipeline around its parts."""
    import diffusers

    pipeline_class = getattr(diffusers, preset.pipeline_class)
    # every optional module off (no safety checker, no watermarker, no IP-adapter image encoder)
    optional = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
                "image_encoder": None, "add_watermarker": False, "text_encoder": None, "tokenizer": None,
                "text_encoder_3": None, "tokenizer_3": None, **preset.pipeline_options}
    accepted = inspect.signature(pipeline_class.__init__).parameters
    return pipeline_class(**parts, **{k: v for k, v in optional.items() if k in accepted and k not in parts})


STORAGE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def write_preset(name: str, out: str | Path, *, seed: int = 0, force: bool = False,
                 storage: str | None = None) -> Path:
    """Write the preset as an ordinary diffusers folder, atomically (temporary sibling, then rename).

    In fp32 the pipeline is built whole and saved. In a 16-bit `storage` (default: the preset's; fp16
    for sd3.5-medium, as released) one module at a time: drawn (the same draws as `build_pipeline`'s,
    the generator running on from module to module), saved, freed; so a preset larger than the
    machine's memory is written with about one module's (sd3.5-medium: T5-XXL's 9.5 GB)."""
    import torch

    from sdrt.export.staging import check_target
    from sdrt.export.tokenizer_files import write_tokenizer
    from sdrt.export.tokenizer_t5 import write_t5_tokenizer

    preset = get_preset(name)
    storage = storage or preset.storage
    if storage not in STORAGE:
        raise SdrtError(f"unknown storage dtype {storage!r}: choose one of {', '.join(STORAGE)}")
    dtype = getattr(torch, STORAGE[storage])
    out = Path(out)
    check_target(out, force)
    with atomic.staged_folder(out, if_exists="replace" if force else "fail") as tmp:
        if storage == "fp32" or preset.trained:  # small enough to build whole (sdxl's 14 GB included)
            pipeline = build_pipeline(name, seed=seed)
            pipeline.save_pretrained(tmp)
        else:
            parts = build_components(name, seed=seed, device="meta")  # configs, scheduler, tokenizers
            pipeline = _assemble(preset, parts)
            pipeline.save_config(tmp)
            generator = torch.Generator().manual_seed(seed)
            for part, value in parts.items():
                if isinstance(value, torch.nn.Module):  # the build order: the same draws as build_pipeline
                    _fill(value, generator, preset, dtype)
                    value.eval().save_pretrained(tmp / part)
                    for module in value.modules():  # back to meta: the next module's draws fit beside it
                        for pname in [n for n, p in module._parameters.items() if p is not None]:
                            module._parameters[pname] = torch.nn.Parameter(
                                module._parameters[pname].to("meta"), requires_grad=False)
                else:
                    value.save_pretrained(tmp / part)
        # Also vocab.json / merges.txt, as released SD folders have them (older transformers read those).
        for folder in ("tokenizer", "tokenizer_2"):
            if getattr(pipeline, folder, None) is not None:
                write_tokenizer(getattr(pipeline, folder), tmp / folder)
        if getattr(pipeline, "tokenizer_3", None) is not None:
            write_t5_tokenizer(pipeline.tokenizer_3, tmp / "tokenizer_3")
    return out
