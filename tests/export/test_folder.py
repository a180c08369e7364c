"""The exported tiny folder: layout, manifest fields, named dynamic axes, and the graphs' numbers
at shapes the trace never saw (non-square, odd, batch 1 and 3) against diffusers' own modules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sdrt import spec
from sdrt.manifest import Manifest

SD = spec.model_spec("sd")


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_layout(tiny_onnx: Path) -> None:
    for name in SD.component_names:
        assert (tiny_onnx / name / "model.onnx").is_file()
        assert json.loads((tiny_onnx / name / "config.json").read_text())
    assert (tiny_onnx / "tokenizer" / "tokenizer.json").is_file()
    scheduler = json.loads((tiny_onnx / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    assert json.loads((tiny_onnx / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_manifest_fields(tiny_onnx: Path, tiny_src: Path) -> None:
    m = Manifest.load(tiny_onnx)
    data = m.data
    assert data["source"]["kind"] == "folder" and data["source"]["path"] == str(tiny_src.resolve())
    assert data["source"]["content_hash"].startswith("sha256:") and len(data["source"]["content_hash"]) == 71
    assert data["exporter"]["method"] == "dynamo" and data["exporter"]["opset"] == 23
    assert data["exporter"]["torch"] == torch.__version__
    for key in ("onnx", "diffusers", "transformers"):
        assert data["exporter"][key]
    unet = json.loads((tiny_src / "unet" / "config.json").read_text())
    vae = json.loads((tiny_src / "vae" / "config.json").read_text())
    text = json.loads((tiny_src / "text_encoder" / "config.json").read_text())
    p = m.pipeline
    assert p["vae_scale_factor"] == 2 ** (len(vae["block_out_channels"]) - 1)
    assert p["scaling_factor"] == vae["scaling_factor"]
    assert p["latent_channels"] == vae["latent_channels"] and p["unet_in_channels"] == unet["in_channels"]
    assert p["text_hidden_size"] == text["hidden_size"] and p["sample_size"] == unet["sample_size"]
    assert p["prediction_type"] == "epsilon" and p["token_length"] == 77 and p["inpainting"] is False
    assert "divided by scaling_factor" in p["vae_decoder_input"]
    assert set(m.components) == set(SD.component_names)
    for name, entry in m.components.items():
        assert entry["precision"] == "fp32" and entry["external_data"] is False
        assert entry["sha256"] == hashlib.sha256((tiny_onnx / entry["file"]).read_bytes()).hexdigest()
        check = entry["check"]
        assert check["passed"] is True
        assert 0 <= check["max_rel_error"] <= check["threshold"]["max_rel"]
        assert len(check["shapes"]) >= 2
        assert {s["dims"]["B"] for s in check["shapes"]} == {1, 3}  # the trace uses batch 2
    sizes = m.sizes
    assert sizes.latent_multiple == 1 and m.data["sizes"]["rule"]
    sizes.check_image_size(2 * 7, 2 * 9)  # odd latent sizes are admitted


def test_graph_io_matches_spec(tiny_onnx: Path) -> None:
    for name in SD.component_names:
        model = onnx.load(str(tiny_onnx / name / "model.onnx"), load_external_data=False)
        comp = SD.component(name)
        assert [i.name for i in model.graph.input] == list(comp.input_names)
        assert [o.name for o in model.graph.output] == list(comp.output_names)
        axes = spec.dynamic_axes(comp)
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            for axis, expr in axes.get(value.name, {}).items():
                assert dims[axis].dim_param == expr, (name, value.name, axis)
    unet = onnx.load(str(tiny_onnx / "unet" / "model.onnx"), load_external_data=False)
    types = {i.name: i.type.tensor_type.elem_type for i in unet.graph.input}
    assert types["timestep"] == onnx.TensorProto.FLOAT
    text = onnx.load(str(tiny_onnx / "text_encoder" / "model.onnx"), load_external_data=False)
    assert text.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_opset23_native_ops(tiny_onnx: Path) -> None:
    ops = {n.op_type for n in onnx.load(str(tiny_onnx / "unet" / "model.onnx")).graph.node}
    assert {"Attention", "GroupNormalization", "LayerNormalization"} <= ops


@pytest.fixture(scope="module")
def tiny_modules(tiny_src: Path) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return {"unet": UNet2DConditionModel.from_pretrained(tiny_src / "unet").eval(),
            "vae": AutoencoderKL.from_pretrained(tiny_src / "vae").eval()}


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_unet_every_admitted_size(tiny_onnx: Path, tiny_modules: dict) -> None:
    """Every latent size the rule admits up to 2**n + 3, on both axes, batch 1 and 3."""
    unet = tiny_modules["unet"]
    m = Manifest.load(tiny_onnx)
    rule = m.sizes
    sess = session(m.onnx_path("unet"))
    g = torch.Generator().manual_seed(0)
    sizes = list(range(rule.min_latent, 2**unet.num_upsamplers + 4, rule.latent_multiple))
    # every admitted size on each axis, paired non-square (twice: reversed, and shifted by one)
    pairs = list(zip(sizes, reversed(sizes))) + list(zip(sizes, sizes[1:] + sizes[:1]))
    for i, (h, w) in enumerate(pairs):
        batch = (1, 3)[i % 2]
        sample = torch.randn(batch, 4, h, w, generator=g)
        t = torch.rand(batch, generator=g) * 999
        ctx = torch.randn(batch, 77, m.pipeline["text_hidden_size"], generator=g)
        got = sess.run(None, {"sample": sample.numpy(), "timestep": t.numpy(),
                              "encoder_hidden_states": ctx.numpy()})[0]
        with torch.no_grad():
            want = unet(sample, t, ctx).sample.numpy()
        assert got.shape == want.shape
        assert rel_error(got, want) < 1e-3, (h, w, batch)


@pytest.mark.parametrize("batch, h, w", [(1, 5, 11), (3, 8, 3)])
def test_vae_off_trace_shapes(tiny_onnx: Path, tiny_modules: dict, batch: int, h: int, w: int) -> None:
    vae = tiny_modules["vae"]
    f = Manifest.load(tiny_onnx).pipeline["vae_scale_factor"]
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, h, w, generator=g)
    image = torch.rand(batch, 3, f * h, f * w, generator=g) * 2 - 1
    decoded = session(tiny_onnx / "vae_decoder" / "model.onnx").run(None, {"latent_sample": latents.numpy()})[0]
    params = session(tiny_onnx / "vae_encoder" / "model.onnx").run(None, {"sample": image.numpy()})[0]
    with torch.no_grad():
        want_decoded = vae.decode(latents).sample.numpy()
        dist = vae.encode(image).latent_dist
    assert decoded.shape == (batch, 3, f * h, f * w)
    assert rel_error(decoded, want_decoded) < 1e-3
    assert params.shape == (batch, 8, h, w)
    mean, logvar = np.split(params, 2, axis=1)
    assert rel_error(mean, dist.mean.numpy()) < 1e-3
    assert rel_error(np.clip(logvar, -30, 20), dist.logvar.numpy()) < 1e-3


def test_text_encoder_batches(tiny_onnx: Path, tiny_src: Path) -> None:
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(tiny_src / "text_encoder").eval()
    sess = session(tiny_onnx / "text_encoder" / "model.onnx")
    for batch in (1, 4):
        ids = torch.randint(0, 49408, (batch, 77), generator=torch.Generator().manual_seed(batch))
        hidden, pooled = sess.run(None, {"input_ids": ids.numpy().astype(np.int32)})
        with torch.no_grad():
            out = model(ids)
        assert rel_error(hidden, out.last_hidden_state.numpy()) < 1e-3
        assert rel_error(pooled, out.pooler_output.numpy()) < 1e-3
