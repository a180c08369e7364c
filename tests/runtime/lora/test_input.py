"""LoRA files in and bad input out: readers, key resolution, one-line errors, the CLI and PNG metadata.

The LoRA files here are drawn from the export's own weight map (layer names and shapes), so these
tests need no torch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.runtime import Pipeline
from sdrt.runtime.images import read_png_text
from sdrt.weight_map import WeightMap
from sdrt.runtime.lora.files import read_lora
from sdrt.runtime.lora.adapters import parse_lora_arg, prompt_loras


def _save(path, tensors):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
    return path


def _kohya_from_map(folder, path, *, component="unet", count=3, rank=2, alpha=1.0, seed=0, prefix="lora_unet_"):
    """A kohya file for the first `count` attention projections of the exported model."""
    modules = WeightMap.load(Manifest.load(folder), component).modules()
    names = [n for n in sorted(modules) if n.endswith(("to_q", "to_v", "q_proj"))][:count]
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in names:
        out, inp = modules[name][:2]
        key = prefix + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = rng.standard_normal((rank, inp))
        tensors[f"{key}.lora_up.weight"] = rng.standard_normal((out, rank))
        tensors[f"{key}.alpha"] = np.array(alpha)
    return _save(path, tensors), names


@pytest.fixture(scope="module")
def pipe(tiny_onnx):
    return Pipeline.load(tiny_onnx, "ort-cpu")


def test_kohya_and_peft_readers(tiny_onnx, tmp_path):
    path, names = _kohya_from_map(tiny_onnx, tmp_path / "style.safetensors", alpha=1.0, rank=2)
    lora = read_lora(path)
    assert lora.name == "style" and lora.format == "kohya" and len(lora.short_hash) == 12
    assert {layer.layer for layer in lora.layers} == {n.replace(".", "_") for n in names}
    assert all(layer.ratio == 0.5 and layer.component == "unet" for layer in lora.layers)
    peft = _save(tmp_path / "p.safetensors", {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight":
                                              np.ones((4, 32)),
                                              "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight":
                                              np.ones((32, 4))})
    (layer,) = read_lora(peft).layers
    assert layer.component == "text_encoder" and layer.ratio == 1.0  # no alpha: alpha = rank, as diffusers


@pytest.mark.parametrize("stem, component, layer", [
    # what diffusers' training scripts save (convert_state_dict_to_diffusers)
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora", "unet",
     "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer", "text_encoder",
     "text_model.encoder.layers.0.self_attn.k_proj"),
    # diffusers < 0.21 attention processors: the processor's attribute names the module it patches
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora", "unet",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"),
    ("text_encoder.text_model.encoder.layers.1.self_attn.to_v_lora", "text_encoder",
     "text_model.encoder.layers.1.self_attn.v_proj"),
])
def test_older_diffusers_spellings(stem, component, layer, tmp_path):
    path = _save(tmp_path / "old.safetensors", {f"{stem}.down.weight": np.ones((2, 8)),
                                                f"{stem}.up.weight": np.ones((8, 2))})
    (found,) = read_lora(path).layers
    assert (found.component, found.layer, found.rank) == (component, layer, 2)


def test_an_unknown_processor_attribute_is_not_a_lora_key(tmp_path):
    path = _save(tmp_path / "odd.safetensors", {"unet.x.attn1.processor.to_z_lora.down.weight": np.ones((2, 8)),
                                                "unet.x.attn1.processor.to_z_lora.up.weight": np.ones((8, 2))})
    with pytest.raises(SdrtError, match="2 of 2 keys are not LoRA keys"):
        read_lora(path)


@pytest.mark.parametrize("key, kind", [("lora_unet_x.hada_w1_a", "LoHa"), ("lora_unet_x.lokr_w1", "LoKr"),
                                       ("lora_unet_x.dora_scale", "DoRA"), ("lora_unet_x.lora_mid.weight", "Tucker")])
def test_other_adapter_kinds_are_refused_by_name(key, kind, tmp_path):
    path = _save(tmp_path / "other.safetensors", {key: np.ones((2, 2))})
    with pytest.raises(SdrtError, match=kind):
        read_lora(path)


def test_unreadable_files(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(100))
    with pytest.raises(SdrtError, match="not a readable safetensors file"):
        read_lora(corrupt)
    with pytest.raises(SdrtError, match="does not exist"):
        read_lora(tmp_path / "missing.safetensors")
    checkpoint = _save(tmp_path / "ckpt.safetensors", {"model.diffusion_model.out.0.weight": np.ones(3)})
    with pytest.raises(SdrtError, match="1 of 1 keys are not LoRA keys"):
        read_lora(checkpoint)


def test_a_lora_for_another_base_names_what_does_not_fit(pipe, tiny_onnx, tmp_path):
    path, names = _kohya_from_map(tiny_onnx, tmp_path / "a.safetensors")
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    original = dict(tensors)
    key = "lora_unet_" + names[0].replace(".", "_") + ".lora_down.weight"
    tensors[key] = np.ones((2, 77), np.float32)  # another base's width
    wrong = _save(tmp_path / "wrong-width.safetensors", tensors)
    with pytest.raises(SdrtError, match=f"{key} makes a .* update for unet.{names[0]}.weight of shape"):
        pipe.set_loras([(wrong, 1.0)])
    sdxl = _save(tmp_path / "sdxl.safetensors", {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": np.ones((2, 640)),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": np.ones((640, 2)),
        **original})
    with pytest.raises(SdrtError, match=r"of \d+ layers match this model's layers \(first unmatched key: "
                                        r"lora_unet_input_blocks_4_1"):
        pipe.set_loras([sdxl])
    te2 = _save(tmp_path / "te2.safetensors", {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                                               np.ones((2, 32)),
                                               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight":
                                               np.ones((32, 2))})
    with pytest.raises(SdrtError, match="targets text_encoder_2"):
        pipe.set_loras([te2])
    assert pipe.loras == []  # nothing was applied by the failed calls


def test_sd_and_sdxl_loras_on_each_other_name_the_first_mismatch(pipe, tiny_onnx, tiny_sdxl_onnx, tmp_path):
    sd_lora, _ = _kohya_from_map(tiny_onnx, tmp_path / "sd15.safetensors")
    xl_pipe = Pipeline.load(tiny_sdxl_onnx, "ort-cpu")
    with pytest.raises(SdrtError, match=r"LoRA sd15: 0 of 3 layers match this model's layers \(first unmatched key: "
                                        r"lora_unet_down_blocks_0_attentions_0_"):
        xl_pipe.set_loras([sd_lora])
    xl_te2, _ = _kohya_from_map(tiny_sdxl_onnx, tmp_path / "xl-te2.safetensors", component="text_encoder_2",
                                prefix="lora_te2_")
    with pytest.raises(SdrtError, match="LoRA xl-te2 targets text_encoder_2 .* which this model does not have"):
        pipe.set_loras([xl_te2])
    xl_unet = _save(tmp_path / "xl-unet.safetensors", {  # kohya's LDM name of an SDXL attention layer
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight": np.ones((2, 640)),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight": np.ones((640, 2))})
    with pytest.raises(SdrtError, match=r"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight "
                                        r"makes a \(640, 640\) update for unet.down_blocks.0.attentions.0."
                                        r"transformer_blocks.0.attn1.to_q.weight of shape"):
        pipe.set_loras([xl_unet])
    assert pipe.loras == [] and xl_pipe.loras == []


def test_scales_must_be_finite(pipe, tiny_onnx, tmp_path):
    path, _ = _kohya_from_map(tiny_onnx, tmp_path / "a.safetensors")
    for bad in (float("nan"), float("inf"), "x"):
        with pytest.raises(SdrtError, match="scale"):
            pipe.set_loras([(path, bad)])
    assert parse_lora_arg("dir/a.safetensors:0.5") == ("dir/a.safetensors", 0.5)
    assert parse_lora_arg("C:/loras/a.safetensors") == ("C:/loras/a.safetensors", 1.0)
    with pytest.raises(SdrtError, match="not finite"):
        parse_lora_arg("a.safetensors:nan")


def test_a_failed_switch_leaves_the_pipeline_as_it_was(pipe, tiny_onnx, tmp_path):
    good, _ = _kohya_from_map(tiny_onnx, tmp_path / "good.safetensors", seed=3)
    call = dict(num_inference_steps=2, height=32, width=32, seed=1, output_type="np")
    pipe.set_loras([(good, 0.5)])
    before = pipe("a cat", **call).images
    with pytest.raises(SdrtError):
        pipe.set_loras([(good, 0.5), (tmp_path / "missing.safetensors", 1.0)])
    assert np.array_equal(pipe("a cat", **call).images, before)
    assert [lora["name"] for lora in pipe.loras] == ["good"]
    pipe.set_loras([])


def test_prompt_tags(tmp_path):
    (tmp_path / "style.safetensors").write_bytes(b"")
    prompt, found = prompt_loras("a cat <lora:style:0.7>, watercolor <lora:style>", tmp_path)
    assert prompt == "a cat , watercolor" and found == [(str(tmp_path / "style.safetensors"), 0.7),
                                                       (str(tmp_path / "style.safetensors"), 1.0)]
    with pytest.raises(SdrtError, match="--lora-dir"):
        prompt_loras("<lora:style:1>", None)
    with pytest.raises(SdrtError, match="does not exist"):
        prompt_loras("<lora:other:1>", tmp_path)


def test_generate_cli_with_loras_and_metadata(tiny_onnx, tmp_path, capsys):
    a, _ = _kohya_from_map(tiny_onnx, tmp_path / "style.safetensors", seed=1)
    b, _ = _kohya_from_map(tiny_onnx, tmp_path / "te.safetensors", component="text_encoder", prefix="lora_te_", seed=2)
    out = tmp_path / "out"
    rc = main(["generate", "--model", str(tiny_onnx), "--prompt", "a cat <lora:te:0.25>", "--lora", f"{a}:0.8",
               "--lora-dir", str(tmp_path), "--steps", "2", "--height", "32", "--width", "32", "--seed", "4",
               "--out", str(out), "--quiet"])
    assert rc == 0
    (png,) = out.glob("*.png")
    text = read_png_text(png)
    lines = text["parameters"].splitlines()
    assert lines[0] == "a cat <lora:style:0.8> <lora:te:0.25>"
    hashes = f'Lora hashes: "style: {read_lora(a).short_hash}, te: {read_lora(b).short_hash}"'
    assert hashes in lines[-1]
    assert [(x["name"], x["scale"]) for x in json.loads(text["sdrt"])["loras"]] == [("style", 0.8), ("te", 0.25)]


@pytest.mark.parametrize("lora_arg, message", [("missing.safetensors", "does not exist"),
                                               ("style.safetensors:inf", "not finite")])
def test_generate_cli_bad_lora_is_one_line_exit_2(lora_arg, message, tiny_onnx, tmp_path, capsys):
    _kohya_from_map(tiny_onnx, tmp_path / "style.safetensors")
    rc = main(["generate", "--model", str(tiny_onnx), "--prompt", "x", "--lora", str(tmp_path / lora_arg),
               "--steps", "1", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_an_old_export_is_told_to_re_export(tiny_onnx, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_onnx, old, ignore=shutil.ignore_patterns("engines"))
    data = json.loads((old / "sdrt.json").read_text())
    for entry in data["components"].values():
        entry.pop("weight_map", None)
    (old / "sdrt.json").write_text(json.dumps(data))
    lora, _ = _kohya_from_map(tiny_onnx, tmp_path / "style.safetensors")
    rc = main(["generate", "--model", str(old), "--prompt", "x", "--lora", str(lora), "--steps", "1",
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "re-export with sdrt export --force" in err and len(err.splitlines()) == 1


def test_a_backend_that_cannot_swap_weights_says_so(tiny_onnx, tmp_path):
    from sdrt.engines.base import Backend
    from sdrt.engines.ort import OrtCpuBackend

    class Frozen(OrtCpuBackend):
        name = "frozen"
        reweight = Backend.reweight  # the default of a backend that has no way to swap weights

    lora, _ = _kohya_from_map(tiny_onnx, tmp_path / "style.safetensors")
    pipe = Pipeline(Manifest.load(tiny_onnx), Frozen(), Pipeline.load(tiny_onnx, "ort-cpu").tokenizers, {})
    with pytest.raises(SdrtError, match="backend frozen cannot change weights at run time"):
        pipe.set_loras([lora])
