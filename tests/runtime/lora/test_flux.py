"""Flux LoRA in the layouts people share, against diffusers' own loading of the very same file.

Random LoRA files for tiny-flux in: diffusers/PEFT (ai-toolkit, SimpleTuner: `transformer.` keys),
kohya sd-scripts (BFL's layer names underscored, fused qkv and linear1, `.alpha`, `lora_te1_` CLIP),
ComfyUI (`diffusion_model.` BFL names with kohya suffixes) and XLabs (`double_blocks.N.processor.qkv_lora1`).
diffusers reads each with `load_lora_weights` (its own converters) at the same scale (`set_adapters`);
sdrt merges it; the images must agree to PSNR >= 40 dB and differ from the base model's. The BFL layers
diffusers 0.42 cannot read here (a single block's fused linear1 at tiny widths, the layers outside the
blocks, which it drops from kohya files) are checked against BFL's definition of the merged weights. Switching is exact; OpenVINO
takes them as side paths; a LoRA of another family is one line.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.reference import Reference, TorchReplay, load_source_pipeline
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.lora.helpers import _pair, layer_shapes, write_kohya

MIN_PSNR = 40.0
MAX_BASE_PSNR = 30.0
CALL = dict(num_inference_steps=3, guidance_scale=3.5, height=64, width=64, output_type="np")

#: BFL's double-block layers and the diffusers modules they fuse (what each writer targets)
DOUBLE = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
          "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
          "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn.proj": ("attn.to_add_out",), "txt_mlp.0": ("ff_context.net.0.proj",),
          "txt_mlp.2": ("ff_context.net.2",), "txt_mod.lin": ("norm1_context.linear",)}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
          "modulation.lin": ("norm.linear",)}
OUTSIDE = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
           "final_layer.adaLN_modulation.1": "norm_out.linear",
           "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
           "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2"}
XLABS = {"processor.qkv_lora1": DOUBLE["img_attn.qkv"], "processor.proj_lora1": DOUBLE["img_attn.proj"],
         "processor.qkv_lora2": DOUBLE["txt_attn.qkv"], "processor.proj_lora2": DOUBLE["txt_attn.proj"]}


def _weight(transformer, module: str) -> tuple:
    return tuple(transformer.get_submodule(module).weight.shape)


def bfl_shapes(transformer, *, outside: bool = True, xlabs: bool = False, linear1: bool = False) -> dict[str, tuple]:
    """BFL layer name -> its fused weight's shape ([sum of the modules' outputs, in]). `linear1`: also the
    single blocks' fused q/k/v/MLP layer (diffusers' kohya reader takes only FLUX.1's own widths for it:
    `test_fused_single_block_layer_merges_into_its_four_modules` checks it instead)."""
    shapes = {}
    double = XLABS if xlabs else DOUBLE
    for i in range(len(transformer.transformer_blocks)):
        for layer, modules in double.items():
            parts = [_weight(transformer, f"transformer_blocks.{i}.{m}") for m in modules]
            shapes[f"double_blocks.{i}.{layer}"] = (sum(p[0] for p in parts), parts[0][1])
    if xlabs:
        return shapes
    for i in range(len(transformer.single_transformer_blocks)):
        for layer, modules in SINGLE.items():
            if layer == "linear1" and not linear1:
                continue
            parts = [_weight(transformer, f"single_transformer_blocks.{i}.{m}") for m in modules]
            shapes[f"single_blocks.{i}.{layer}"] = (sum(p[0] for p in parts), parts[0][1])
    if outside:
        shapes.update({layer: _weight(transformer, module) for layer, module in OUTSIDE.items()})
    return shapes


def _save(path, tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


def write_peft_flux(path, transformer, text_encoder=None, *, seed, rank=4):
    """ai-toolkit's layout: transformer.<diffusers module>.lora_A/lora_B (no alpha), text_encoder. too."""
    rng = np.random.default_rng(seed)
    tensors = {}
    modules = [name for name, m in transformer.named_modules() if name.endswith(
        ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.to_add_out", "proj_mlp",
         "ff.net.2", "norm1.linear")) and hasattr(m, "weight")]
    encoders = [("transformer", transformer, modules)]
    if text_encoder is not None:
        encoders.append(("text_encoder", text_encoder, [n for n, m in text_encoder.named_modules()
                                                        if n.endswith(("q_proj", "v_proj", "fc1")) and hasattr(m, "weight")]))
    for prefix, model, names in encoders:
        for name in names:
            up, down = _pair(rng, tuple(model.get_submodule(name).weight.shape), rank, 0.3)
            tensors[f"{prefix}.{name}.lora_A.weight"] = down
            tensors[f"{prefix}.{name}.lora_B.weight"] = up
    return _save(path, tensors)


def write_bfl(path, shapes, *, seed, prefix, dotted, suffixes, alpha, rank=4):
    """BFL-named layers (kohya: lora_unet_ + underscores; ComfyUI: diffusion_model. + dots; XLabs: none)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer, shape in sorted(shapes.items()):
        up, down = _pair(rng, shape, rank, 0.3)
        key = prefix + (layer if dotted else layer.replace(".", "_"))
        tensors[key + suffixes[0]] = down
        tensors[key + suffixes[1]] = up
        if alpha is not None:
            tensors[key + ".alpha"] = np.array(alpha, dtype=np.float32)
    return _save(path, tensors)


KOHYA = (".lora_down.weight", ".lora_up.weight")
FORMATS = {
    "ai-toolkit-peft": lambda path, ref, seed: write_peft_flux(path, ref.transformer, ref.text_encoder, seed=seed),
    "kohya-sd-scripts": lambda path, ref, seed: _with_clip(write_bfl(
        path, bfl_shapes(ref.transformer, outside=False), seed=seed, prefix="lora_unet_", dotted=False,
        suffixes=KOHYA, alpha=2.0), ref, seed),
    "comfyui": lambda path, ref, seed: write_bfl(path, bfl_shapes(ref.transformer, outside=False), seed=seed,
                                                 prefix="diffusion_model.", dotted=True, suffixes=KOHYA, alpha=8.0),
    "xlabs": lambda path, ref, seed: write_bfl(path, bfl_shapes(ref.transformer, xlabs=True), seed=seed, prefix="",
                                               dotted=True, suffixes=(".down.weight", ".up.weight"), alpha=None),
}


def _with_clip(path, ref, seed):
    """A kohya file also trains the CLIP encoder (lora_te1_)."""
    from safetensors.numpy import load_file

    shapes = {"text_encoder": layer_shapes(ref, unet=False, text=True)["text_encoder"]}
    clip = write_kohya(path.with_suffix(".clip.safetensors"), shapes, seed=seed + 50)
    tensors = {k.replace("lora_te_", "lora_te1_"): v for k, v in load_file(str(clip)).items()}
    return _save(path, {**load_file(str(path)), **tensors})


@pytest.fixture(scope="module")
def base(tiny_flux_onnx):
    return Pipeline.load(tiny_flux_onnx, "ort-cpu")


@pytest.mark.parametrize("fmt, scale", [("ai-toolkit-peft", 0.7), ("kohya-sd-scripts", 0.8), ("comfyui", 0.6),
                                        ("xlabs", 2.5)])
def test_flux_lora_matches_diffusers(fmt, scale, tiny_flux_onnx, tmp_path):
    pipe = Pipeline.load(tiny_flux_onnx, "ort-cpu")
    ref_pipe = load_source_pipeline(pipe.manifest)
    path = FORMATS[fmt](tmp_path / f"{fmt}.safetensors", ref_pipe, 3)
    plain = pipe("a red bicycle", **CALL, generator=TorchReplay(11)).images
    pipe.set_loras([(path, scale)])
    ours = pipe("a red bicycle", **CALL, generator=TorchReplay(11))
    ref_pipe.load_lora_weights(str(path), adapter_name="a")
    ref_pipe.set_adapters(["a"], [scale])  # (fuse_lora's scale misses a Flux text encoder's LoRA in diffusers 0.42)
    theirs = Reference(ref_pipe, tiny_flux_onnx)("a red bicycle", **CALL, seed=11)
    assert ours.parameters["loras"][0]["scale"] == scale
    assert psnr(ours.images, plain) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    quality = psnr(ours.images, theirs.images)
    assert quality >= MIN_PSNR, f"{fmt}: PSNR {quality:.1f} dB against diffusers"


def test_fused_and_outside_layers_merge_as_bfl_defines_them(base, tmp_path):
    """The BFL layers diffusers' reader cannot check here: a single block's fused linear1 (its kohya reader takes
    only FLUX.1's widths) and the layers outside the blocks (diffusers 0.42 drops them from kohya files). sdrt's
    merged weight of each diffusers module is W + scale x alpha/rank x its rows of BFL's update: linear1 is
    [q; k; v; mlp], the final modulation (shift, scale) where diffusers has (scale, shift)."""
    from safetensors.numpy import load_file

    from sdrt.runtime.lora.merge import merged_weights

    ref = load_source_pipeline(base.manifest)
    shapes = {k: v for k, v in bfl_shapes(ref.transformer, linear1=True).items()
              if "linear1" in k or not k.startswith(("double", "single"))}
    path = write_bfl(tmp_path / "bfl.safetensors", shapes, seed=4, prefix="lora_unet_", dotted=False,
                     suffixes=KOHYA, alpha=2.0)
    _, placed, maps = base.adapters.prepare([(path, 0.7)])
    merged = merged_weights(placed, maps)["transformer"]
    tensors = load_file(str(path))
    targets = {f"single_blocks.{i}.linear1": [f"single_transformer_blocks.{i}.{m}" for m in SINGLE["linear1"]]
               for i in range(len(ref.transformer.single_transformer_blocks))}
    targets.update({layer: [module] for layer, module in OUTSIDE.items()})
    for layer, modules in targets.items():
        key = "lora_unet_" + layer.replace(".", "_")
        update = 0.7 * (2.0 / 4) * tensors[key + ".lora_up.weight"] @ tensors[key + ".lora_down.weight"]
        if layer == "final_layer.adaLN_modulation.1":
            update = np.concatenate(np.split(update, 2)[::-1])
        start = 0
        for module in modules:
            weight = ref.transformer.get_submodule(module).weight.detach().numpy()
            (record,) = maps["transformer"].parameters[f"{module}.weight"]
            got = merged[record["initializer"]]
            got = got.T if record["layout"] == "transpose" else got
            np.testing.assert_allclose(got, weight + update[start:start + weight.shape[0]], atol=1e-5,
                                       err_msg=f"{layer} -> {module}")
            start += weight.shape[0]
        assert start == update.shape[0]


def test_switching_is_exact_and_openvino_takes_side_paths(base, tiny_flux_onnx, tmp_path):
    ref = load_source_pipeline(base.manifest)
    a = FORMATS["kohya-sd-scripts"](tmp_path / "a.safetensors", ref, 1)
    b = FORMATS["ai-toolkit-peft"](tmp_path / "b.safetensors", ref, 2)

    def run(p):
        return p("a cat", **CALL, seed=5).images

    fresh = run(base)
    pipe = Pipeline.load(tiny_flux_onnx, "ort-cpu", loras=[(a, 0.9)])
    first_a = run(pipe)
    pipe.set_loras([(b, 0.5), (a, 0.3)])
    mixed = run(pipe)
    pipe.set_loras([(a, 0.9)])
    assert np.array_equal(run(pipe), first_a)
    pipe.set_loras([])
    assert np.array_equal(run(pipe), fresh)  # unloaded: the export's own weights, bit for bit
    assert psnr(mixed, first_a) < MAX_BASE_PSNR
    pytest.importorskip("openvino")
    folder = tmp_path / "ov"
    shutil.copytree(tiny_flux_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    ov = Pipeline.load(folder, "openvino", loras=[(a, 0.9)])
    assert ov.adapters.branched == {"transformer", "text_encoder"}  # side paths: no merge, no recompile
    assert psnr(run(ov), first_a) >= MIN_PSNR


def test_a_lora_of_another_family_is_one_line(base, tiny_onnx, tmp_path):
    sd = load_source_pipeline(Pipeline.load(tiny_onnx, "ort-cpu").manifest)
    sd_lora = write_kohya(tmp_path / "sd.safetensors", layer_shapes(sd), seed=1)
    with pytest.raises(SdrtError, match=r"LoRA sd: 0 of \d+ layers match this model's layers \(first unmatched key: "
                                        r"lora_unet_down_blocks_.*SD 1.x/2.x or SDXL\?\)"):
        base.set_loras([sd_lora])
    flux_lora = FORMATS["ai-toolkit-peft"](tmp_path / "flux.safetensors", load_source_pipeline(base.manifest), 1)
    with pytest.raises(SdrtError, match=r"LoRA flux targets transformer \(key transformer\..*which this model does not "
                                        r"have: it was trained for another base model \(Flux\?\)"):
        Pipeline.load(tiny_onnx, "ort-cpu").set_loras([flux_lora])
    assert base.loras == []
