"""Pipeline behaviour on the exported tiny presets (ort-cpu): buffers, batching, outputs, bad inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import BackendUnavailable, SdrtError

SMALL = dict(num_inference_steps=2, height=32, width=32, scheduler="ddim")


def test_loop_reuses_the_same_bound_buffers_every_step(pipelines):
    pipe = pipelines("tiny")
    unet = pipe.engine("unet")
    seen = []

    def spy(i, t, latents):
        seen.append(dict(unet.buffers))

    pipe("a cat", **{**SMALL, "num_inference_steps": 4}, seed=0, callback=spy)
    assert len(seen) == 4
    names = {"sample", "timestep", "encoder_hidden_states", "out_sample"}
    assert names <= set(seen[0])
    for step in seen[1:]:
        assert all(step[k] is seen[0][k] for k in names)
    # a second call with the same shapes keeps them too
    pipe("a dog", **{**SMALL, "num_inference_steps": 4}, seed=1, callback=spy)
    assert all(seen[-1][k] is seen[0][k] for k in names)


def test_text_encoder_runs_once_per_call_and_embeddings_stay_bound(pipelines, monkeypatch):
    pipe = pipelines("tiny")
    calls = {"text_encoder": 0, "ehs_writes": 0}
    te, unet = pipe.engine("text_encoder"), pipe.engine("unet")
    te_execute, unet_set = te.execute, unet.set_input

    def count_te():
        calls["text_encoder"] += 1
        return te_execute()

    def count_set(name, array):
        calls["ehs_writes"] += name == "encoder_hidden_states"
        return unet_set(name, array)

    monkeypatch.setattr(te, "execute", count_te)
    monkeypatch.setattr(unet, "set_input", count_set)
    pipe(["a cat", "a dog"], **{**SMALL, "num_inference_steps": 3}, seed=0)
    assert calls == {"text_encoder": 1, "ehs_writes": 1}


@pytest.mark.parametrize("guidance, factor", [(7.5, 2), (1.0, 1), (0.5, 1)])
def test_guidance_at_most_one_halves_the_unet_batch(pipelines, guidance, factor):
    pipe = pipelines("tiny")
    pipe(["a", "b"], **SMALL, guidance_scale=guidance, num_images_per_prompt=2, seed=0)
    assert pipe.engine("unet").dims["B"] == 4 * factor


def test_outputs_pil_and_np(pipelines):
    pipe = pipelines("tiny")
    pil = pipe("a cat", **SMALL, seed=5, num_images_per_prompt=2)
    arr = pipe("a cat", **SMALL, seed=5, num_images_per_prompt=2, output_type="np")
    assert [im.size for im in pil.images] == [(32, 32)] * 2 and pil.images[0].mode == "RGB"
    assert arr.images.shape == (2, 32, 32, 3) and arr.images.dtype == np.float32
    assert 0 <= arr.images.min() and arr.images.max() <= 1
    np.testing.assert_array_equal(np.asarray(pil.images[1]), (arr.images[1] * 255).round().astype(np.uint8))
    assert pil.seed == 5 and pil.parameters["mode"] == "txt2img"
    assert len(pil.timings.unet_steps) == 2 and pil.timings.total > 0


def test_default_size_comes_from_the_manifest(pipelines):
    pipe = pipelines("tiny")
    out = pipe("a cat", num_inference_steps=1, seed=0, output_type="np")
    size = pipe.manifest.pipeline["sample_size"] * pipe.manifest.pipeline["vae_scale_factor"]
    assert out.images.shape[1:3] == (size, size)


def test_seed_is_reproducible_and_matters(pipelines):
    pipe = pipelines("tiny")
    a = pipe("a cat", **SMALL, seed=1, output_type="np").images
    b = pipe("a cat", **SMALL, seed=1, output_type="np").images
    c = pipe("a cat", **SMALL, seed=2, output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.05


def test_img2img_default_size_is_the_images(pipelines, tmp_path):
    pipe = pipelines("tiny")
    path = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)).save(path)
    out = pipe("a cat", num_inference_steps=4, strength=0.5, image=str(path), seed=0, scheduler="ddim",
               output_type="np")
    assert out.images.shape == (1, 24, 40, 3)
    assert out.parameters["mode"] == "img2img" and out.parameters["strength"] == 0.5
    assert len(out.timings.unet_steps) == 2  # strength 0.5 of 4 steps


def test_inpainting_4ch_keeps_the_image_latents_outside_the_mask(pipelines):
    """A regular UNet inpaints by blending: after the last step, the unmasked latents are the image's."""
    from sdrt.runtime.images import images_to_array

    pipe = pipelines("tiny")
    image = Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    final = []
    pipe("a cat", num_inference_steps=3, image=image, mask_image=mask, strength=1.0, seed=0, scheduler="ddim",
         callback=lambda i, t, x: final.append(x.copy()))
    # the call's first draw (seed 0) is the image's VAE sample
    expected = pipe.encode_images(images_to_array([image]), np.random.default_rng(0))
    f = pipe.vae_scale_factor
    np.testing.assert_allclose(final[-1][..., : 16 // f], expected[..., : 16 // f], rtol=1e-5, atol=1e-5)
    assert np.abs(final[-1][..., 16 // f:] - expected[..., 16 // f:]).max() > 0.1  # repainted


def _img(h=32, w=32):
    return Image.fromarray(np.zeros((h, w, 3), np.uint8))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"guidance_scale": float("nan")}, "guidance_scale nan"),
    ({"guidance_scale": -1.0}, "guidance_scale -1.0"),
    ({"strength": 1.5, "image": _img()}, "strength 1.5"),
    ({"height": 33}, "height 33 is not a multiple"),
    ({"width": 4}, "width 4 is outside"),
    ({"negative_prompt": ["x", "y", "z"]}, "3 negative prompts for 1 prompts"),
    ({"image": "/nonexistent/picture.png"}, "does not exist"),
    ({"image": _img(40, 32)}, "image is 32x40 but the output is 32x32"),
    ({"image": _img(), "mask_image": _img(24, 32)}, "mask is 32x24 but the output is 32x32"),
    ({"mask_image": _img()}, "needs an image"),
    ({"latents": np.zeros((1, 4, 8, 8), np.float32)}, "latents have shape"),
    ({"image": _img(), "strength": 0.1, "num_inference_steps": 2}, "leaves no denoising step"),
    ({"output_type": "pt"}, "output_type"),
    ({"scheduler": "nonsense"}, "unknown scheduler"),
])
def test_bad_inputs_are_one_line_errors(pipelines, kwargs, message):
    pipe = pipelines("tiny")
    call = {**SMALL, **kwargs}
    with pytest.raises(SdrtError) as err:
        pipe("a cat", seed=0, **call)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_image_names_the_file(pipelines, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(SdrtError, match="broken.png is not a readable image"):
        pipelines("tiny")("a cat", **SMALL, image=str(bad))


def test_inpainting_model_needs_image_and_mask(pipelines):
    with pytest.raises(SdrtError, match="inpainting UNet"):
        pipelines("tiny-inpaint")("a cat", **SMALL)


def test_nan_latents_name_the_unet(pipelines):
    latents = np.full((1, 4, 16, 16), np.nan, np.float32)
    with pytest.raises(SdrtError, match="UNet .*NaN"):
        pipelines("tiny")("a cat", **SMALL, latents=latents)


def test_nan_pixels_name_the_vae_and_suggest_fp32(pipelines, monkeypatch):
    pipe = pipelines("tiny")
    decoder = pipe.engine("vae_decoder")
    execute = decoder.execute

    def overflow():
        out = execute()
        out["sample"][..., 0, 0] = np.inf
        return out

    monkeypatch.setattr(decoder, "execute", overflow)
    with pytest.raises(SdrtError, match="VAE decoder .*fp32"):
        pipe("a cat", **SMALL, seed=0)


def test_folder_without_manifest(tmp_path):
    from sdrt.runtime import Pipeline

    with pytest.raises(SdrtError, match="no sdrt.json"):
        Pipeline.load(tmp_path, backend="ort-cpu")


def test_corrupt_component_names_the_file(tiny_onnx, tmp_path):
    from sdrt.runtime import Pipeline

    copy = tmp_path / "model"
    shutil.copytree(tiny_onnx, copy)
    (copy / "unet" / "model.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(SdrtError, match=r"unet/model\.onnx"):
        Pipeline.load(copy, backend="ort-cpu")
    (copy / "unet" / "model.onnx").unlink()
    with pytest.raises(SdrtError, match=r"unet/model\.onnx is missing"):
        Pipeline.load(copy, backend="ort-cpu")


def test_backend_not_installed_names_the_extra(tiny_onnx):
    from sdrt.engines.ort import OrtCudaBackend
    from sdrt.runtime import Pipeline

    try:
        OrtCudaBackend.check_available()
        pytest.skip("ort-cuda is usable here")
    except BackendUnavailable:
        pass
    with pytest.raises(BackendUnavailable, match=r"sdrt\[gpu\]|no CUDA GPU"):
        Pipeline.load(tiny_onnx, backend="ort-cuda")


def test_runtime_never_imports_torch(tiny_onnx):
    """Import sdrt.runtime and generate with torch made unimportable (as on a product install)."""
    script = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from sdrt.runtime import Pipeline
        pipe = Pipeline.load({str(tiny_onnx)!r}, backend="ort-cpu")
        out = pipe("a cat", num_inference_steps=2, height=32, width=32, scheduler="euler", seed=0, output_type="np")
        assert out.images.shape == (1, 32, 32, 3)
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")]
        print("ok")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_manifest_facts_are_read_not_assumed(pipelines):
    pipe = pipelines("tiny")
    p = pipe.manifest.pipeline
    assert (pipe.scaling_factor, pipe.vae_scale_factor, pipe.latent_channels) == (
        p["scaling_factor"], p["vae_scale_factor"], p["latent_channels"])
    assert pipe.vae_scale_factor == 2  # the tiny preset's 2-block VAE: not the usual 8
    assert math.isclose(pipe.scaling_factor, json.loads(
        (pipe.manifest.folder / "sdrt.json").read_text())["pipeline"]["scaling_factor"])
