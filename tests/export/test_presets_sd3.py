"""The SD3 presets: the released SD3.5 Medium architecture (parameter counts on the meta device) and a
tiny one with SD3.5's structural features, loadable by diffusers' StableDiffusion3Pipeline."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdrt.export import presets  # noqa: E402


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd35_medium_has_the_released_parameter_counts():
    """Counts of the released stabilityai/stable-diffusion-3.5-medium components (CLIP-L with projection,
    OpenCLIP-bigG with projection, t5-v1_1-xxl's encoder, the SD3 VAE: their published sizes), built
    here on the meta device: no weights in memory."""
    parts = presets.build_components("sd3.5-medium", device="meta")
    counts = {name: n_params(parts[name]) for name in ("transformer", "text_encoder", "text_encoder_2",
                                                       "text_encoder_3", "vae")}
    assert counts == {"transformer": 2_243_171_520, "text_encoder": 123_650_304, "text_encoder_2": 694_659_840,
                      "text_encoder_3": 4_762_310_656, "vae": 83_819_683}
    transformer = parts["transformer"]
    assert transformer.config.qk_norm == "rms_norm" and list(transformer.config.dual_attention_layers) == list(range(13))
    assert sum(block.attn2 is not None for block in transformer.transformer_blocks) == 13


def test_tiny_sd3_keeps_sd35s_features_and_runs_in_diffusers():
    pipe = presets.build_pipeline("tiny-sd3", seed=0)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    t = pipe.transformer
    assert t.config.qk_norm == "rms_norm" and t.transformer_blocks[0].attn2 is not None  # dual attention
    assert t.transformer_blocks[1].attn2 is None
    # the CLIPs do not fill the joint width: the zero padding is exercised
    assert pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size < t.config.joint_attention_dim
    assert pipe.text_encoder_3.config.d_model == t.config.joint_attention_dim
    assert pipe.tokenizer_3.convert_tokens_to_ids("</s>") == 1 and pipe.vae.config.shift_factor
    image = pipe("a cat", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and image.std() > 0.01


def test_write_preset_makes_a_diffusers_folder(tmp_path):
    out = presets.write_preset("tiny-sd3", tmp_path / "src")
    assert (out / "tokenizer_3" / "tokenizer.json").is_file() and (out / "text_encoder_3" / "config.json").is_file()
    loaded = diffusers.StableDiffusion3Pipeline.from_pretrained(out, local_files_only=True)
    assert loaded.tokenizer_3("a cat").input_ids[-1] == 1
