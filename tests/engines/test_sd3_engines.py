"""SD3's new tensors on the engines: TensorRT profiles and buffer plans (no GPU), OpenVINO f32/bf16 on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt import spec
from sdrt.engines import trt_profiles as tp
from sdrt.manifest import SizeRule

SD3 = spec.model_spec("sd3", ["t5"])
RULE = SizeRule(latent_multiple=2, min_latent=2, max_latent=192, vae_scale_factor=8, denoiser="transformer")
VALUES = {"C": 16, "S": 77, "D": 4096, "f": 8, "D1": 768, "D2": 1280, "K1": 12, "K2": 32, "P1": 768,
          "P2": 1280, "P": 2048}


def _range(name, **kw):
    return tp.dim_range(SD3.component(name), tp.ProfileRequest(**kw), RULE, default_size=1024)


def test_t5_length_is_a_profile_dimension_and_the_transformer_attends_to_77_more():
    t5, transformer = _range("text_encoder_3", tokens=256), _range("transformer", tokens=256)
    assert tp.used_symbols(SD3.component("text_encoder_3")) == ("B", "L")
    assert t5.max == {"B": 2, "L": 256} and transformer.max == {"B": 2, "h": 128, "w": 128, "L": 256}
    shapes = tp.input_shapes(SD3.component("transformer"), VALUES, transformer)
    assert shapes["encoder_hidden_states"][2] == (2, 77 + 256, 4096)
    assert shapes["pooled_projections"][2] == (2, 2048) and shapes["hidden_states"][2] == (2, 16, 128, 128)
    assert tp.input_shapes(SD3.component("text_encoder_3"), VALUES, t5)["input_ids"][2] == (2, 256)


def test_buffer_plan_at_the_profile_max():
    dynamic = _range("transformer", tokens=512, batch=2, max_batch=4, min_size=512, max_size=1536)
    plan = tp.max_shapes(SD3.component("transformer"), VALUES, dynamic)
    assert plan["encoder_hidden_states"] == (8, 77 + 512, 4096) and plan["out_hidden_states"] == (8, 16, 192, 192)
    assert tp.max_shapes(SD3.component("text_encoder"), VALUES, _range("text_encoder"))["hidden_states"] == \
        (12, 2, 77, 768)
    assert tp.request_for(SD3.component("text_encoder_3"), {"B": 2, "L": 128}, 8).tokens == 128


@pytest.fixture(scope="module")
def ort_image(tiny_sd3_onnx):
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(tiny_sd3_onnx, backend="ort-cpu")
    return pipe("a cat", num_inference_steps=3, guidance_scale=5.0, output_type="np", seed=2).images


def test_openvino_f32_runs_every_sd3_component(tiny_sd3_onnx, ort_image):
    pytest.importorskip("openvino")
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    pipe = Pipeline.load(tiny_sd3_onnx, backend="openvino")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ours = pipe("a cat", num_inference_steps=3, guidance_scale=5.0, output_type="np", seed=2).images
    assert psnr(ours, ort_image) >= 40
    again = pipe("a cat", image=image, strength=0.7, num_inference_steps=3, output_type="np", seed=2).images
    assert again.shape == (1, 64, 64, 3) and np.isfinite(again).all()  # the VAE encoder too
    assert set(pipe.engines) >= {"text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder",
                                 "vae_encoder"}


def test_openvino_bf16_runs(tiny_sd3_onnx, ort_image):
    """bf16 on the CPU: finite and near f32 (random tiny weights over 3 steps: ~27 dB measured here)."""
    pytest.importorskip("openvino")
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    pipe = Pipeline.load(tiny_sd3_onnx, backend="openvino", precision="bf16")
    ours = pipe("a cat", num_inference_steps=3, guidance_scale=5.0, output_type="np", seed=2).images
    assert np.isfinite(ours).all() and psnr(ours, ort_image) >= 20


def test_build_t5_length_defaults_to_the_pipelines_and_is_checked(tiny_sd3_onnx, tiny_onnx, capsys):
    from types import SimpleNamespace

    from sdrt.cli import main
    from sdrt.engines.commands_build import text_tokens
    from sdrt.errors import SdrtError
    from sdrt.manifest import Manifest

    sd3 = Manifest.load(tiny_sd3_onnx)
    assert sd3.pipeline["default_max_sequence_length"] == 256  # StableDiffusion3Pipeline's default, recorded
    assert text_tokens(sd3, None) == 256 and text_tokens(sd3, 128) == 128
    older = SimpleNamespace(pipeline={"max_sequence_length": 512}, folder="x", family="sd3")  # exported before
    assert text_tokens(older, None) == 512
    assert text_tokens(Manifest.load(tiny_onnx), None) == 77  # one CLIP chunk
    with pytest.raises(SdrtError, match="between 1 and 512"):
        text_tokens(sd3, 513)
    for folder, value, words in ((tiny_sd3_onnx, "600", "between 1 and 512"),
                                 (tiny_onnx, "128", "for models with a T5 encoder")):
        code = main(["build", "--model", str(folder), "--backend", "tensorrt_rtx", "--max-sequence-length", value])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err
