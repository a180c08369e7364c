"""The Flux.1 presets, as data (presets.py builds them).

`flux-dev` and `flux-schnell` are the released architectures (black-forest-labs/FLUX.1-dev and
FLUX.1-schnell: transformer, VAE, CLIP ViT-L/14 text_encoder, T5 v1.1 XXL text_encoder_2,
FlowMatchEulerDiscreteScheduler; keys left out are diffusers' and transformers' defaults, which
match those files). They differ in the transformer's guidance embedding (dev is guidance-distilled:
it takes the guidance scale as an input) and the scheduler (dev: resolution-dependent shift;
schnell: none, 4 steps). The tiny ones keep every structural feature: double- and single-stream
blocks, rotary position axes, 16 latent channels packed 2x2 into 64-wide tokens, a 4-block VAE
(8x: images are multiples of 16 px, as Flux's) with scaling and shift factors, a gated-GELU T5
with relative attention buckets.

Tokenizers: the CLIP one is the real vocabulary (as for every preset). The real T5 vocabulary
(SentencePiece, 32k pieces) cannot be downloaded here; the presets use the small T5-style
SentencePiece Unigram vocabulary sdrt ships (`sdrt.export.tokenizer_t5`: 4,000 pieces + 100
sentinels, T5's special tokens and normalisation). The real architectures' T5 keeps the released
vocabulary size (32128), so their parameter counts are the released ones; a tiny preset's embedding is
as large as its tokenizer.
"""

from __future__ import annotations

from typing import Any

from sdrt.export.tokenizer_t5 import EXTRA_IDS, VOCAB_SIZE

#: black-forest-labs/FLUX.1-dev transformer/config.json (schnell: guidance_embeds false)
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
#: vae/config.json: SD's architecture with 16 latent channels, no quant convs, scaling and shift factors
FLUX_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
    "use_post_quant_conv": False, "force_upcast": True, "mid_block_add_attention": True,
}
#: text_encoder: CLIP ViT-L/14 (the legacy eos id 2: pooled by argmax, as the released config has)
CLIP_L = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
          "pad_token_id": 1, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
#: text_encoder_2: google/t5-v1_1-xxl's encoder
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "is_encoder_decoder": False, "use_cache": False,
}
#: scheduler/scheduler_config.json of FLUX.1-dev (resolution-dependent shift) and FLUX.1-schnell
DEV_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                 "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
SCHNELL_SCHEDULER = {**DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}

TINY_FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 8,
    "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
    "axes_dims_rope": [2, 2, 4],
}
TINY_FLUX_VAE: dict[str, Any] = {
    **FLUX_VAE, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 128,
}
TINY_CLIP = {**CLIP_L, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 32}
TINY_T5: dict[str, Any] = {  # as many embeddings as the shipped tokenizer has ids
    **T5_XXL, "vocab_size": VOCAB_SIZE + EXTRA_IDS, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
}
