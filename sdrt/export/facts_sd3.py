"""What an SD3 / SD3.5 folder's manifest records (`pipeline.*`), read from its configs, never assumed.

The components must fit together as StableDiffusion3Pipeline joins them: CLIP-L's and CLIP-G's
penultimate layers side by side, zero-padded to the transformer's joint_attention_dim, then T5's
last hidden state (as wide as that) after them; their two pooled projections side by side are the
transformer's pooled_projections.
"""

from __future__ import annotations

from typing import Any

from sdrt import spec
from sdrt.errors import SdrtError

#: transformers' T5 tokenizer limit; StableDiffusion3Pipeline refuses a max_sequence_length above it
T5_MAX_SEQUENCE_LENGTH = 512
#: StableDiffusion3Pipeline's default max_sequence_length (what a call uses unless it says otherwise)
DEFAULT_MAX_SEQUENCE_LENGTH = 256


def sd3_facts(src: Any) -> dict[str, Any]:
    transformer, vae = src.config("transformer"), src.config("vae")
    clip_l, clip_g = src.config("text_encoder"), src.config("text_encoder_2")
    t5 = src.config("text_encoder_3") if src.has("text_encoder_3") else None
    latent_channels = int(vae.latent_channels)
    joint = int(transformer.joint_attention_dim)
    widths = int(clip_l.hidden_size) + int(clip_g.hidden_size)
    pooled = int(clip_l.projection_dim) + int(clip_g.projection_dim)

    def mismatch(what: str) -> SdrtError:
        return SdrtError(f"{what}: the pipeline's components do not match")

    if int(transformer.in_channels) != latent_channels or int(transformer.out_channels) != latent_channels:
        raise mismatch(f"the transformer takes {transformer.in_channels} and gives {transformer.out_channels} "
                       f"channels but the VAE has {latent_channels} latent channels")
    if widths > joint:
        raise mismatch(f"the CLIP encoders' hidden sizes ({clip_l.hidden_size} + {clip_g.hidden_size}) exceed "
                       f"the transformer's joint_attention_dim {joint}")
    if int(transformer.pooled_projection_dim) != pooled:
        raise mismatch(f"the transformer's pooled_projection_dim {transformer.pooled_projection_dim} is not the "
                       f"CLIP projections' {clip_l.projection_dim} + {clip_g.projection_dim}")
    if t5 is not None and int(t5.d_model) != joint:
        raise mismatch(f"T5's d_model {t5.d_model} is not the transformer's joint_attention_dim {joint}")
    tokenizer_3 = src.tokenizers.get("tokenizer_3")
    t5_limit = T5_MAX_SEQUENCE_LENGTH
    if tokenizer_3 is not None and 0 < int(tokenizer_3.model_max_length) < 1_000_000:
        t5_limit = min(t5_limit, int(tokenizer_3.model_max_length))
    return {
        "family": "sd3",
        "variants": ["t5"] if t5 is not None else [],
        "dims": {"D1": int(clip_l.hidden_size), "D2": int(clip_g.hidden_size),
                 "K1": int(clip_l.num_hidden_layers), "K2": int(clip_g.num_hidden_layers),
                 "P1": int(clip_l.projection_dim), "P2": int(clip_g.projection_dim), "P": pooled},
        "class_name": src.class_name,
        "prediction_type": "flow",  # the transformer predicts the velocity noise - x0
        "scaling_factor": float(vae.scaling_factor),
        "shift_factor": vae.get("shift_factor"),
        "vae_scale_factor": 2 ** (len(vae.block_out_channels) - 1),
        "latent_channels": latent_channels,
        "unet_in_channels": int(transformer.in_channels),
        "text_hidden_size": joint,
        "token_length": spec.TOKEN_LENGTH,
        "max_sequence_length": t5_limit,
        "default_max_sequence_length": min(DEFAULT_MAX_SEQUENCE_LENGTH, t5_limit),
        "patch_size": int(transformer.patch_size),
        "sample_size": int(transformer.sample_size),
        "vae_sample_size": vae_sample_size(vae),
        "inpainting": False,
        "vae_decoder_input": "latents divided by scaling_factor, plus shift_factor (diffusers' pipeline does "
                             "both before vae.decode)",
        "vae_encoder_output": "raw diagonal-Gaussian parameters (mean, logvar) on channels; subtract "
                              "shift_factor from the sampled latents, then multiply by scaling_factor",
    }


def vae_sample_size(vae: Any) -> int | None:
    size = vae.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) if size else None
