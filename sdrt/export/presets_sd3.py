"""The SD3-family presets, as data (presets.py builds them).

`sd3.5-medium` has the released architecture (stabilityai/stable-diffusion-3.5-medium: the MMDiT-X
transformer with qk RMS-norm and dual-attention layers 0-12, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14
with projection, T5-v1.1-XXL's encoder, the 16-channel VAE with shift_factor, FlowMatchEuler with
shift 3). `tiny-sd3` keeps every structural feature SD3.5 has — qk RMS-norm, a dual-attention layer,
CLIP widths that do not fill the joint attention width (the zero padding), a T5 encoder, a VAE
without quant convs — at sizes that export and run in seconds. The T5 encoders use sdrt's own small
SentencePiece vocabulary (see sdrt/export/tokenizer_t5.py): the real one cannot be downloaded here.
"""

from __future__ import annotations

from typing import Any

from sdrt.export.tokenizer_t5 import EXTRA_IDS, VOCAB_SIZE

#: stabilityai/stable-diffusion-3.5-medium scheduler/scheduler_config.json
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
CLIP_IDS = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
            "pad_token_id": 1}
#: what SD3's 16-channel VAE adds to SD's (no quant convs; latents are shifted, then scaled)
SD3_VAE_CHANGES = {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609,
                   "use_quant_conv": False, "use_post_quant_conv": False}

SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm",
}
CLIP_L = {**CLIP_IDS, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_G = {**CLIP_IDS, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
          "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}
#: google/t5-v1_1-xxl's encoder, as SD3's text_encoder_3/config.json has it (vocabulary: 32128)
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
          "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
          "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "is_encoder_decoder": False, "use_cache": False}
SD3_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
           "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "norm_num_groups": 32,
           "sample_size": 1024, "force_upcast": True, **SD3_VAE_CHANGES}

TINY_SD3_TRANSFORMER: dict[str, Any] = {
    "sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 112, "caption_projection_dim": 16,
    "pooled_projection_dim": 64, "pos_embed_max_size": 32, "dual_attention_layers": [0], "qk_norm": "rms_norm",
}
TINY_CLIP_L = {**CLIP_IDS, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "quick_gelu"}
TINY_CLIP_G = {**CLIP_IDS, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
               "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "gelu"}
TINY_T5 = {**T5_XXL, "vocab_size": VOCAB_SIZE + EXTRA_IDS, "d_model": 112, "d_kv": 8, "d_ff": 64, "num_layers": 2,
           "num_heads": 2, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}
TINY_SD3_VAE = {"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 32,
                "sample_size": 64, **SD3_VAE_CHANGES}
