"""The SDXL-family and LCM presets, as data (presets.py builds them).

The `sdxl` configs are the released ones (stabilityai/stable-diffusion-xl-base-1.0: unet, text_encoder
= CLIP ViT-L/14, text_encoder_2 = OpenCLIP ViT-bigG/14 with projection, vae with scaling factor
0.13025 and force_upcast, EulerDiscreteScheduler; keys left out are diffusers' defaults, which match
those files). The tiny ones keep every structural feature SDXL adds to SD 1.x: two text encoders
whose hidden sizes add up to the cross-attention width, `addition_embed_type="text_time"` (pooled
text embeds + 6 micro-conditioning ids), more than one transformer layer in a block, linear
projections; the refiner has only the second encoder and 5 time ids (aesthetic score); the LCM
UNet has `time_cond_proj_dim` (the guidance embedding).
"""

from __future__ import annotations

from typing import Any

#: the CLIP vocabulary and special ids (the legacy eos id 2: pooling by argmax, as SDXL's configs have)
CLIP_IDS = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}

#: stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "interpolation_type": "linear", "prediction_type": "epsilon",
                  "steps_offset": 1, "timestep_spacing": "leading", "use_karras_sigmas": False}
#: latent-consistency/lcm-lora-sdv1-5 style LCMScheduler (LCM-distilled SD 1.5)
LCM_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "original_inference_steps": 50, "prediction_type": "epsilon",
                 "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "leading"}

SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + the 1280 pooled text embeds
}
#: stabilityai/stable-diffusion-xl-refiner-1.0 unet/config.json (text_encoder_2 only: 1280-wide cross-attention,
#: 5 time ids x 256 + the 1280 pooled text embeds)
SDXL_REFINER_UNET: dict[str, Any] = {
    "sample_size": 128,
    "block_out_channels": [384, 768, 1536, 1536],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": [6, 12, 24, 24],
    "transformer_layers_per_block": 4,
    "cross_attention_dim": 1280,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2560,
}
#: SDXL's VAE is SD's architecture with another scaling factor, marked to run in fp32 (presets.py)
SDXL_VAE_CHANGES: dict[str, Any] = {"scaling_factor": 0.13025, "force_upcast": True}
CLIP_L = {**CLIP_IDS, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_BIG_G = {**CLIP_IDS, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}

TINY_SDXL_UNET: dict[str, Any] = {
    "sample_size": 32,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4, 4],
    "transformer_layers_per_block": [1, 1, 2],
    "cross_attention_dim": 64,  # 32 (text_encoder) + 32 (text_encoder_2)
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 6 x 8 + 32
    "norm_num_groups": 32,
}
TINY_SDXL_REFINER_UNET: dict[str, Any] = {
    **TINY_SDXL_UNET,
    "attention_head_dim": [4, 4, 4],
    "cross_attention_dim": 32,  # text_encoder_2 only
    "projection_class_embeddings_input_dim": 72,  # 5 x 8 + 32
}
TINY_CLIP = {**CLIP_IDS, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "quick_gelu"}
TINY_CLIP_2 = {**CLIP_IDS, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
               "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "gelu"}

#: what diffusers' SDXL pipelines read from model_index.json
SDXL_BASE_OPTIONS = {"force_zeros_for_empty_prompt": True}
SDXL_REFINER_OPTIONS = {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}
