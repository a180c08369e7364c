"""Flux.1 presets and exports: released architectures, the tiny ones' structure, the folder's facts,
the size rule, the fp16 policy, and what export refuses (one line, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sdrt.export import presets  # noqa: E402
from sdrt.manifest import Manifest  # noqa: E402
from tests.export._fakes import leftovers  # noqa: E402
from tests.export.test_bad_input import assert_one_line_error, run_export  # noqa: E402


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# Released parameter counts: black-forest-labs/FLUX.1-dev and FLUX.1-schnell (transformer; the same
# CLIP ViT-L/14 text encoder as SD 1.5, T5 v1.1 XXL's encoder, the 16-channel VAE), as published.
REAL_COUNTS = {
    "flux-dev": {"transformer": 11_901_408_320, "text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656,
                 "vae": 83_819_683},
    "flux-schnell": {"transformer": 11_891_178_560, "text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656,
                     "vae": 83_819_683},
}


@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_flux_architectures_on_the_meta_device(name):
    parts = presets.build_components(name, device="meta")  # no 67 GB of weights
    assert all(p.device.type == "meta" for k in REAL_COUNTS[name] for p in parts[k].parameters())
    assert {k: n_params(parts[k]) for k in REAL_COUNTS[name]} == REAL_COUNTS[name]
    transformer, vae = parts["transformer"].config, parts["vae"].config
    assert transformer.guidance_embeds is (name == "flux-dev")
    assert (transformer.num_layers, transformer.num_single_layers, transformer.joint_attention_dim) == (19, 38, 4096)
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 0.3611, 0.1159)
    sched = parts["scheduler"].config
    assert sched.use_dynamic_shifting is (name == "flux-dev") and sched.shift == (3.0 if name == "flux-dev" else 1.0)
    assert type(parts["tokenizer_2"]).__name__.startswith("T5Tokenizer")
    assert parts["tokenizer_2"].model_max_length == 512


def test_tiny_flux_keeps_flux_structure():
    parts = presets.build_components("tiny-flux")
    transformer, vae, t5 = parts["transformer"], parts["vae"], parts["text_encoder_2"]
    assert transformer.config.guidance_embeds and transformer.config.in_channels == 4 * vae.config.latent_channels
    assert len(transformer.transformer_blocks) >= 2 and len(transformer.single_transformer_blocks) >= 2
    assert len(vae.config.block_out_channels) == 4  # f = 8: images are multiples of 16 px, as Flux's
    assert vae.config.shift_factor == 0.1159 and not vae.config.use_quant_conv
    assert t5.config.is_gated_act and t5.config.vocab_size == len(parts["tokenizer_2"])
    assert transformer.config.joint_attention_dim == t5.config.d_model
    assert transformer.config.pooled_projection_dim == parts["text_encoder"].config.hidden_size
    assert n_params(transformer) < 1e6 and n_params(t5) < 1e6
    schnell = presets.build_components("tiny-flux-schnell", device="meta")
    assert not schnell["transformer"].config.guidance_embeds and not schnell["scheduler"].config.use_dynamic_shifting
    fill = presets.build_components("tiny-flux-fill", device="meta")["transformer"].config
    assert fill.in_channels == 64 + 64 + 4 * 8 * 8 and fill.out_channels == 64
    # norms of the transformer families start near 1, like torch's own (seeded RMS norms are not random signs)
    q_norm = transformer.transformer_blocks[0].attn.norm_q.weight
    assert 0.9 < float(q_norm.mean()) < 1.1


def test_tiny_flux_export_records_what_the_runtime_needs(tiny_flux_onnx, tiny_flux_schnell_onnx, tiny_flux_fill_onnx):
    dev = Manifest.load(tiny_flux_onnx)
    p = dev.pipeline
    assert (dev.family, p["variants"], p["dims"]) == ("flux", ["guidance"], {"P": 32})
    assert (p["latent_channels"], p["unet_in_channels"], p["vae_scale_factor"]) == (16, 64, 8)
    assert (p["max_sequence_length"], p["sample_size"], p["inpainting"]) == (512, 128, False)
    assert (p["scaling_factor"], p["shift_factor"]) == (0.3611, 0.1159)
    assert set(dev.components) == {"text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"}
    sizes = dev.data["sizes"]
    assert (sizes["latent_multiple"], sizes["min_latent"]) == (2, 2) and dev.sizes.image_multiple == 16
    assert all(probe["passed"] for probe in sizes["probed"]) and {"h": 2, "w": 2, "passed": True} in sizes["probed"]
    checked = dev.components["transformer"]["check"]["shapes"]
    assert {s["dims"]["L"] for s in checked} == {77, 154}  # T5 lengths vary, like batch and size
    assert {s["dims"]["L"] for s in dev.components["text_encoder_2"]["check"]["shapes"]} == {77, 41}
    assert (tiny_flux_onnx / "tokenizer_2" / "tokenizer.json").is_file()
    assert all("weight_map" in dev.components[c] for c in ("text_encoder", "text_encoder_2", "transformer"))
    assert Manifest.load(tiny_flux_schnell_onnx).pipeline["variants"] == []
    fill = Manifest.load(tiny_flux_fill_onnx).pipeline
    assert fill["inpainting"] and fill["unet_in_channels"] == 384


def test_fp16_precision_policy_measures_the_transformer_and_keeps_t5_fp32(onnx_export, tiny_flux_onnx, monkeypatch,
                                                                        tmp_path, capsys):
    """Under --precision fp16: T5 stays fp32 (real T5 overflows fp16, which random weights cannot show);
    the transformer is measured: an fp16 graph that fails its check is exported in fp32, and says why.
    The traces are stood in for by copies of the cached exports (the fp16 one broken on purpose)."""
    from sdrt.export import trace
    from sdrt.export.exporter import export_model
    from tests.export._fakes import corrupt

    fp16 = onnx_export("tiny-flux", "fp16")
    t5 = Manifest.load(fp16).components["text_encoder_2"]
    assert t5["precision"] == "fp32" and "T5 encoders overflow in fp16" in t5["precision_note"]
    assert Manifest.load(fp16).precision("transformer") == "fp16"

    def export_graph(graph, comp, example, path, *, precision, **kwargs):
        shutil.copyfile((fp16 if precision == "fp16" else tiny_flux_onnx) / comp.name / "model.onnx", path)
        if precision == "fp16":
            corrupt(path)  # a graph that runs but is wrong: what an fp16 overflow looks like to the check

    monkeypatch.setattr(trace, "export_graph", export_graph)
    out = export_model("tiny-flux", tmp_path / "fp16", precision="fp16", components=["transformer"])
    transformer = Manifest.load(out).components["transformer"]
    assert transformer["precision"] == "fp32"
    assert "the fp16 graph failed the export check (wrong at token grids" in transformer["precision_note"]
    assert "exporting it in fp32" in capsys.readouterr().out


@pytest.mark.parametrize("change, needle", [
    ({"joint_attention_dim": 48}, "joint_attention_dim 48 differs from text_encoder_2's d_model 32"),
    ({"pooled_projection_dim": 16}, "pooled_projection_dim 16 differs from text_encoder's hidden_size 32"),
    ({"in_channels": 32}, "predicts 32 channels but the VAE's 16 latent channels pack into 64"),
    ({"patch_size": 2}, "needs patch_size 1"),
])
def test_flux_parts_that_do_not_fit_are_one_line(change, needle):
    """The facts check the components against each other before anything is traced."""
    import diffusers

    from sdrt.errors import SdrtError
    from sdrt.export import flux
    from sdrt.export.presets_flux import TINY_FLUX_TRANSFORMER

    parts = presets.build_components("tiny-flux", device="meta")
    with torch.device("meta"):
        parts["transformer"] = diffusers.FluxTransformer2DModel(**{**TINY_FLUX_TRANSFORMER, **change})
    src = type("Src", (), {"module": staticmethod(parts.get), "config": staticmethod(lambda name: parts[name].config),
                           "tokenizers": parts, "class_name": "FluxPipeline"})
    with pytest.raises(SdrtError, match=needle):
        flux.pipeline_facts(src)


@pytest.mark.parametrize("class_name, label", [("Flux2Pipeline", "Flux.2"), ("QwenImagePipeline", "Qwen-Image"),
                                               ("WanPipeline", "Wan (video)"), ("FluxKontextPipeline", "Kontext"),
                                               ("LTXPipeline", "LTX-Video (video)")])
def test_families_still_unsupported_are_named(tmp_path: Path, capsys, class_name: str, label: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    code, err = run_export(capsys, "--model", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, label, "not supported yet", class_name)
    assert leftovers(tmp_path, "out") == []
