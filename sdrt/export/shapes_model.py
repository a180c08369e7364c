"""The `shapes` preset: a tiny latent-diffusion model trained by this project (see train_shapes.py).

Architecture (SD 1.x layout, small): 32 px RGB images, an AutoencoderKL with 3 blocks
(vae_scale_factor 4, 8x8x4 latents), a 2-layer CLIPTextModel on the real CLIP vocabulary and
tokenizer, and a UNet2DConditionModel with cross-attention. The trained weights ship in
``sdrt/data/shapes/`` as fp16 safetensors (Apache-2.0, the project's own); the VAE's latent
scaling factor measured after its training travels in the VAE file's metadata.
"""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

from sdrt.errors import SdrtError

SHAPES_VAE = {
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
    "scaling_factor": 1.0,  # replaced by the measured value shipped with the weights
}
SHAPES_UNET = {
    "sample_size": 8,
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
SHAPES_TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
               "pad_token_id": 1, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "projection_dim": 32, "hidden_act": "quick_gelu"}
#: SD's training schedule; DDIM samples it (PNDM and the rest work too)
SHAPES_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                    "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False,
                    "steps_offset": 1}
WEIGHT_FILES = {"text_encoder": "text_encoder.safetensors", "unet": "unet.safetensors", "vae": "vae.safetensors"}
SCALING_KEY = "scaling_factor"


def weights_folder() -> Any:
    return importlib.resources.files("sdrt") / "data" / "shapes"


def load_shipped_weights(models: dict[str, Any], dtype: Any) -> None:
    """Load the shipped fp16 weights into meta-built models (every parameter must be present)."""
    from safetensors.torch import load as load_bytes

    folder = weights_folder()
    for name, filename in WEIGHT_FILES.items():
        resource = folder / filename
        if not resource.is_file():
            raise SdrtError(f"the shapes preset's weights are missing ({resource}): reinstall sdrt, or "
                            f"train them with: python -m sdrt.export.train_shapes --out sdrt/data/shapes")
        data = resource.read_bytes()
        state = {k: v.to(dtype) for k, v in load_bytes(data).items()}
        model = models[name]
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise SdrtError(f"the shapes preset's {filename} does not fit the model ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected tensors): retrain it with sdrt.export.train_shapes")
        for param in model.parameters():
            param.requires_grad_(False)
        if name == "vae":
            model.register_to_config(scaling_factor=float(file_metadata(data).get(SCALING_KEY, 1.0)))


def file_metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (its header: 8-byte little-endian length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + length]).get("__metadata__", {}))
