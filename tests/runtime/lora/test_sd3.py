"""LoRA on SD3 / SD3.5 (tiny-sd3: qk RMS-norm, a dual-attention layer, T5) against diffusers' own LoRA loading.

diffusers loads a random PEFT file with `load_lora_weights` and fuses it (`fuse_lora`); both pipelines then
run with the same noise (TorchReplay) and the images must agree to PSNR >= 40 dB while differing clearly
from the base model's. kohya's layout (the original MMDiT names: fused q/k/v, swapped adaLN halves; T5
too) is read by sdrt and compared with diffusers on the same matrices (its PEFT twin; T5's layers, which
diffusers' SD3 loader does not read, merged into the torch T5 by hand). Every other layout people share
must give the same merged weights as the PEFT file. Switching is exact; a LoRA of another family is one line.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.reference import Reference, TorchReplay, load_source_pipeline
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr, read_png_text
from sdrt.runtime.lora.adapters import Adapters
from sdrt.runtime.lora.files import read_lora
from sdrt.runtime.lora.merge import merged_weights
from sdrt.weight_map import WeightMap
from tests.runtime.lora import sd3_files
from tests.runtime.lora.helpers import layer_shapes, write_kohya as write_sd_kohya

MIN_PSNR = 40.0
MAX_BASE_PSNR = 30.0
CALL = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=48)


@pytest.fixture(scope="module")
def source(tiny_sd3_onnx):
    return load_source_pipeline(Manifest.load(tiny_sd3_onnx))


@pytest.fixture(scope="module")
def pairs(source):
    return sd3_files.draw(sd3_files.sd3_shapes(source, t5=True), seed=1)


@pytest.fixture(scope="module")
def transformer_modules(tiny_sd3_onnx):
    return WeightMap.load(Manifest.load(tiny_sd3_onnx), "transformer").modules()


@pytest.mark.parametrize("layout,scale", [("peft", 0.8), ("kohya", 0.7)])
def test_sd3_lora_matches_diffusers(layout, scale, tiny_sd3_onnx, pairs, transformer_modules, tmp_path):
    pipe = Pipeline.load(tiny_sd3_onnx, "ort-cpu")
    base = pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images
    if layout == "peft":
        ours_file = sd3_files.write_peft(tmp_path / "peft.safetensors", pairs)
    else:
        ours_file = sd3_files.write_kohya(tmp_path / "kohya.safetensors", pairs, transformer_modules)
    pipe.set_loras([(ours_file, scale)])
    ours = pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np")

    ref_pipe = load_source_pipeline(pipe.manifest)
    ref_pipe.load_lora_weights(str(sd3_files.write_peft(tmp_path / "twin.safetensors", pairs)))
    ref_pipe.fuse_lora(lora_scale=scale)
    if layout == "kohya":  # lora_te3_: diffusers' SD3 loader has no T5 LoRA, so merge it by hand
        sd3_files.merge_in_torch(ref_pipe.text_encoder_3, pairs, "text_encoder_3", scale)
    theirs = Reference(ref_pipe, tiny_sd3_onnx)("a red bicycle", **CALL, seed=11)

    assert ours.parameters["loras"][0]["scale"] == scale
    assert psnr(ours.images, base) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"{layout}: PSNR {quality:.1f} dB against diffusers"


def _merged(folder, path):
    adapters = Adapters(Manifest.load(folder))
    _, placed, maps = adapters.prepare([(path, 1.0)])
    return merged_weights(placed, maps)


def test_every_sd3_layout_merges_the_same_weights(tiny_sd3_onnx, pairs, transformer_modules, tmp_path):
    transformer_only = {key: value for key, value in pairs.items() if key[0] == "transformer"}
    expected = _merged(tiny_sd3_onnx, sd3_files.write_peft(tmp_path / "peft.safetensors", transformer_only))
    files = {
        "kohya": sd3_files.write_kohya(tmp_path / "kohya.safetensors", transformer_only, transformer_modules),
        "comfy": sd3_files.write_comfy(tmp_path / "comfy.safetensors", transformer_only, transformer_modules),
        "onetrainer": sd3_files.write_prefixed(tmp_path / "ot.safetensors", pairs, "lora_transformer_", underscores=True),
        "peft-bare": sd3_files.write_prefixed(tmp_path / "bare.safetensors", pairs, "base_model.model.", underscores=False),
        "lycoris": sd3_files.write_prefixed(tmp_path / "ly.safetensors", pairs, "lycoris_", underscores=True),
    }
    assert len(expected["transformer"]) == 37  # every Linear and the patch Conv of tiny-sd3
    for layout, path in files.items():
        merged = _merged(tiny_sd3_onnx, path)
        assert set(merged["transformer"]) == set(expected["transformer"]), layout
        for name, value in expected["transformer"].items():
            np.testing.assert_allclose(merged["transformer"][name], value, rtol=1e-5, atol=1e-6, err_msg=layout)


def test_sd3_switching_is_exact(tiny_sd3_onnx, source, pairs, transformer_modules, tmp_path):
    """A -> B -> A gives A's images bit for bit; [] gives a never-LoRA'd pipeline's images bit for bit."""
    a = sd3_files.write_kohya(tmp_path / "a.safetensors", pairs, transformer_modules)
    b = sd3_files.write_peft(tmp_path / "b.safetensors", sd3_files.draw(sd3_files.sd3_shapes(source), seed=2))

    def run(p):
        return p("a cat", **CALL, seed=5, output_type="np").images

    fresh = run(Pipeline.load(tiny_sd3_onnx, "ort-cpu"))
    pipe = Pipeline.load(tiny_sd3_onnx, "ort-cpu", loras=[(a, 0.9)])
    first_a = run(pipe)
    pipe.set_loras([(b, 0.5), (a, 0.3)])
    mixed = run(pipe)
    pipe.set_loras([(a, 0.9)])
    again_a = run(pipe)
    pipe.set_loras([])
    unloaded = run(pipe)
    assert np.array_equal(first_a, again_a)
    assert np.array_equal(unloaded, fresh)
    assert psnr(first_a, fresh) < MAX_BASE_PSNR and psnr(mixed, first_a) < MAX_BASE_PSNR
    assert pipe.loras == []


def test_t5_layers_on_a_model_without_t5_are_left_out(tiny_sd3_no_t5_onnx, pairs, transformer_modules, tmp_path):
    path = sd3_files.write_kohya(tmp_path / "with-t5.safetensors", pairs, transformer_modules)
    with pytest.warns(UserWarning, match=r"14 of its layers change text_encoder_3, which .* was exported without"):
        pipe = Pipeline.load(tiny_sd3_no_t5_onnx, "ort-cpu", loras=[path])
    assert pipe.loras[0]["name"] == "with-t5"


def test_lora_of_another_family_is_one_line(tiny_sd3_onnx, tiny_sdxl_onnx, pairs, tmp_path):
    sdxl_source = load_source_pipeline(Manifest.load(tiny_sdxl_onnx))
    sdxl_lora = write_sd_kohya(tmp_path / "xl.safetensors", layer_shapes(sdxl_source, text=False))
    pipe = Pipeline.load(tiny_sd3_onnx, "ort-cpu")
    with pytest.raises(SdrtError, match=r"LoRA xl: 0 of \d+ layers match this model's layers .*another base model") as e:
        pipe.set_loras([sdxl_lora])
    assert "\n" not in str(e.value)
    sd3_lora = sd3_files.write_peft(tmp_path / "sd3.safetensors", pairs)
    xl = Pipeline.load(tiny_sdxl_onnx, "ort-cpu")
    with pytest.raises(SdrtError, match=r"LoRA sd3 targets transformer .* another base model \(SD3 / SD3.5\?\)"):
        xl.set_loras([sd3_lora])


def test_generate_with_lora_on_sd3(tiny_sd3_onnx, pairs, transformer_modules, tmp_path, capsys):
    lora = sd3_files.write_kohya(tmp_path / "style.safetensors", pairs, transformer_modules)
    args = ["generate", "--model", str(tiny_sd3_onnx), "--backend", "ort-cpu", "--prompt", "a cat", "--steps", "2",
            "--height", "64", "--width", "64", "--quiet"]
    assert main([*args, "--lora", f"{lora}:0.6", "--out", str(tmp_path / "out")]) == 0
    (png,) = (tmp_path / "out").glob("*.png")
    assert f"Lora hashes: \"style: {read_lora(lora).short_hash}\"" in read_png_text(png)["parameters"]
    capsys.readouterr()
    wrong = write_sd_kohya(tmp_path / "sd.safetensors", {"unet": {"down_blocks.0.attentions.0.proj_in": (32, 32)}})
    assert main([*args, "--lora", str(wrong), "--out", str(tmp_path / "bad")]) == 2
    assert not list((tmp_path / "bad").glob("*.png"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LoRA sd: 0 of 1 layers match" in err[0]
