"""The Flux runtime on tiny-flux (ort-cpu): packing and position ids against diffusers' own functions,
buffers bound once, seeds, bad input (one line, nothing written), and `sdrt generate`."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError, SdrtWarning
from sdrt.runtime import flux_latents as tokens

SMALL = dict(num_inference_steps=2, height=32, width=48)


@pytest.fixture(scope="module")
def dev(tiny_flux_onnx):
    from sdrt.runtime import Pipeline

    return Pipeline.load(tiny_flux_onnx, backend="ort-cpu")


@pytest.fixture(scope="module")
def schnell(tiny_flux_schnell_onnx):
    from sdrt.runtime import Pipeline

    return Pipeline.load(tiny_flux_schnell_onnx, backend="ort-cpu")


def test_packing_and_ids_are_diffusers_own():
    torch = pytest.importorskip("torch")
    from diffusers import FluxFillPipeline, FluxInpaintPipeline, FluxPipeline

    latents = np.random.default_rng(0).standard_normal((2, 16, 6, 10), dtype=np.float32)
    packed = FluxPipeline._pack_latents(torch.from_numpy(latents), 2, 16, 6, 10).numpy()
    np.testing.assert_array_equal(tokens.pack(latents), packed)
    np.testing.assert_array_equal(tokens.unpack(packed, 6, 10), latents)
    want_ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32).numpy()
    np.testing.assert_array_equal(tokens.image_ids(3, 5), want_ids)
    assert tokens.text_ids(7).shape == (7, 3) and not tokens.text_ids(7).any()

    masks = (np.random.default_rng(1).random((2, 1, 48, 80)) > 0.5).astype(np.float32)
    inpaint = FluxInpaintPipeline.__new__(FluxInpaintPipeline)
    inpaint.vae_scale_factor = 8
    inpaint.vae = type("V", (), {"config": type("C", (), {"shift_factor": 0.0, "scaling_factor": 1.0})})()
    masked = torch.zeros((2, 16, 6, 10))  # already latents: no VAE call
    want_mask, _ = inpaint.prepare_mask_latents(torch.from_numpy(masks), masked, 2, 16, 1, 48, 80, torch.float32,
                                                "cpu", None)
    np.testing.assert_array_equal(tokens.mask_tokens(masks, 6, 10, 16), want_mask.numpy())
    fill = FluxFillPipeline.__new__(FluxFillPipeline)
    fill.vae_scale_factor, fill.vae = 8, inpaint.vae
    want_fill, _ = fill.prepare_mask_latents(torch.from_numpy(masks), masked, 2, 16, 1, 48, 80, torch.float32, "cpu",
                                             None)
    np.testing.assert_array_equal(tokens.fill_mask_tokens(masks, 6, 10, 8), want_fill.numpy())


def test_loop_reuses_the_same_bound_buffers_and_text_is_bound_once(dev, monkeypatch):
    transformer = dev.engine("transformer")
    seen, writes = [], []
    original = transformer.set_input
    monkeypatch.setattr(transformer, "set_input", lambda name, array: (writes.append(name), original(name, array))[1])
    dev("a cat", **{**SMALL, "num_inference_steps": 4}, seed=0, callback=lambda i, t, x: seen.append(
        dict(transformer.buffers)))
    assert len(seen) == 4
    names = {"hidden_states", "timestep", "encoder_hidden_states", "pooled_projections", "img_ids", "txt_ids",
             "guidance", "out_hidden_states"}
    assert names <= set(seen[0]) and all(step[k] is seen[0][k] for step in seen[1:] for k in names)
    for name in ("encoder_hidden_states", "pooled_projections", "img_ids", "txt_ids", "guidance"):
        assert writes.count(name) == 1, name  # bound once per call, not per step
    assert writes.count("hidden_states") == 4 and writes.count("timestep") == 4


def test_a_batch_image_is_reproduced_alone_by_its_seed(dev):
    both = dev(["a cat", "a dog"], **SMALL, seed=10, output_type="np")
    alone = dev("a dog", **SMALL, seed=11, output_type="np")
    assert both.seeds == [10, 11]
    np.testing.assert_allclose(both.images[1], alone.images[0], atol=1e-5)
    latent = dev("a cat", **SMALL, seed=10, output_type="latent")
    assert latent.images.shape == (1, 2 * 3, 64)  # packed: (32/16) x (48/16) tokens of 4 x 16 channels
    again = dev("a cat", **SMALL, seed=10, latents=latent.images * 0 + 1.0, output_type="np")
    assert again.images.shape == (1, 32, 48, 3)


def test_guidance_scale_on_a_model_without_guidance_embedding_is_ignored_with_a_warning(schnell):
    """diffusers ignores it too; sdrt says so on stderr (once per call), the image is unchanged."""
    plain = schnell("a cat", **SMALL, seed=3, output_type="np").images
    with pytest.warns(SdrtWarning, match="guidance_scale 5 is ignored: this Flux model has no guidance embedding"):
        guided = schnell("a cat", **SMALL, seed=3, guidance_scale=5.0, output_type="np").images
    np.testing.assert_array_equal(plain, guided)
    assert schnell("a cat", **SMALL, seed=3).parameters["guidance_embedded"] is False


@pytest.mark.parametrize("call, words", [
    ({"height": 40}, "height 40 is not a multiple of 16 (this model's transformer"),
    ({"width": 24}, "use 16 or 32"),
    ({"max_sequence_length": 513}, "max_sequence_length 513 is above 512"),
    ({"max_sequence_length": 0}, "max_sequence_length 0 must be a whole number"),
    ({"true_cfg_scale": -1, "negative_prompt": "x"}, "true_cfg_scale -1 must be a finite number >= 0"),
    ({"clip_skip": 1}, "clip_skip is an argument of the UNet families"),
    ({"original_size": (512, 512)}, "original_size is an argument of the UNet families"),
    ({"latents": np.zeros((1, 16, 4, 6), np.float32)}, "Flux's packed latents, as FluxPipeline takes them"),
    ({"scheduler": "heun"}, "cannot take Flux's schedule"),
    ({"sigmas": ["a"]}, "sigmas ['a'] must be a list of numbers"),
    ({"image": np.zeros((32, 48, 3), np.uint8), "strength": 0.0}, "leaves no denoising step"),
])
def test_bad_input_is_one_line(dev, call, words):
    with pytest.raises(SdrtError, match=words.replace("(", r"\(").replace("[", r"\[")):
        dev("a cat", **{**SMALL, **call}, seed=0)


def test_fill_model_needs_an_image_and_a_mask(tiny_flux_fill_onnx):
    from sdrt.runtime import Pipeline

    fill = Pipeline.load(tiny_flux_fill_onnx, backend="ort-cpu")
    with pytest.raises(SdrtError, match="Flux Fill model: it repaints the masked part of an image"):
        fill("a cat", **SMALL, seed=0, image=np.zeros((32, 48, 3), np.uint8))


def test_negative_prompt_without_true_cfg_warns(dev):
    with pytest.warns(SdrtWarning, match="the negative prompt is ignored: true_cfg_scale 1 <= 1"):
        dev("a cat", **SMALL, seed=0, negative_prompt="blurry")


def test_generate_cli_writes_forge_style_infotexts_and_refuses_bad_sizes(tiny_flux_onnx, tmp_path, capsys):
    from sdrt.cli import main
    from sdrt.runtime.images import read_png_text

    out = tmp_path / "out"
    argv = ["generate", "--model", str(tiny_flux_onnx), "--prompt", "a cat", "--height", "32", "--width", "48",
            "--steps", "2", "--seed", "5", "--quiet", "--out", str(out)]
    assert main([*argv, "--negative-prompt", "dark", "--true-cfg-scale", "2", "--max-sequence-length", "64"]) == 0
    (png,) = out.glob("*.png")
    text = read_png_text(png)["parameters"]
    assert "Negative prompt: dark" in text and "CFG scale: 2.0, Distilled CFG Scale: 3.5" in text
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main([*argv[:-1], str(bad), "--height", "30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a multiple of 16" in err
    assert not bad.exists() or not any(bad.iterdir())
