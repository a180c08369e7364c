"""Swapping the VAE: `sdrt export --vae` (a diffusers VAE folder or a single VAE file in the original layout),
a VAE-only export loaded at run time (`Pipeline.load(vae=)`, `use_vae`, `sdrt generate --vae`, `sdrt serve
--vae NAME=DIR` with override_settings sd_vae), equal to diffusers with that VAE; another latent space is one
line."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.reference import TorchReplay
from sdrt.runtime.images import psnr

torch = pytest.importorskip("torch")
CALL = dict(num_inference_steps=3, height=32, width=32, guidance_scale=7.5, scheduler="ddim")


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory):
    """A diffusers VAE folder of the tiny preset's architecture with other (seeded) weights."""
    import diffusers

    from sdrt.export.presets import TINY_VAE

    torch.manual_seed(123)
    vae = diffusers.AutoencoderKL(**TINY_VAE)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("vae") / "mse"
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae_export(other_vae, tiny_src, tmp_path_factory):
    from sdrt.export.exporter import export_model

    out = tmp_path_factory.mktemp("vae-onnx") / "mse-onnx"
    return export_model(str(tiny_src), out, components=["vae_decoder", "vae_encoder"], vae=str(other_vae),
                        log=lambda line: None)


def test_swapped_vae_equals_diffusers_with_that_vae(vae_export, other_vae, tiny_onnx, references) -> None:
    import diffusers

    from sdrt.runtime import Pipeline

    assert vae_export.joinpath("sdrt.json").is_file()
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu", vae=vae_export)
    try:
        ours = pipe("a red bicycle", generator=TorchReplay(1), output_type="np", **CALL)
        assert ours.parameters["vae"] == "mse"
        ref = references("tiny")
        own = ref.modules["vae"]
        ref.modules["vae"] = diffusers.AutoencoderKL.from_pretrained(other_vae).eval()
        try:
            theirs = ref("a red bicycle", seed=1, **CALL).images
        finally:
            ref.modules["vae"] = own
        assert psnr(ours.images, theirs) >= 40.0
        pipe.use_vae(None)  # back to the model's own
        plain = pipe("a red bicycle", generator=TorchReplay(1), output_type="np", **CALL).images
        assert not np.allclose(plain, ours.images, atol=1e-3) and "vae" not in pipe("x", **CALL).parameters
    finally:
        pipe.close()


def test_single_vae_file_in_the_original_layout(other_vae, tiny_src, tmp_path) -> None:
    import diffusers
    from safetensors.numpy import save_file

    from sdrt.export import source
    from tests.export.ldm_layout import vae_keys

    vae = diffusers.AutoencoderKL.from_pretrained(other_vae)
    keys = {k.removeprefix("first_stage_model."): v for k, v in vae_keys(vae).items()}  # a VAE file has no prefix
    save_file(keys, str(tmp_path / "vae-ft-mse.safetensors"))
    src = source.load(str(tiny_src), vae=str(tmp_path / "vae-ft-mse.safetensors"))
    assert src.vae == "vae-ft-mse.safetensors"
    want, got = vae.state_dict(), src.modules["vae"].state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_another_latent_space_is_one_line(tiny_src, tiny_sdxl_onnx, tiny_onnx, tmp_path) -> None:
    import diffusers

    from sdrt.export import source
    from sdrt.export.presets import TINY_VAE
    from sdrt.runtime import Pipeline

    wide = tmp_path / "vae16"
    diffusers.AutoencoderKL(**{**TINY_VAE, "latent_channels": 16}).save_pretrained(wide)
    with pytest.raises(SdrtError, match="works in another latent space .*latent_channels 16 vs 4"):
        source.load(str(tiny_src), vae=str(wide))
    with pytest.raises(SdrtError, match="--vae .* has no vae_decoder"):
        Pipeline.load(tiny_onnx, backend="ort-cpu", vae=_unet_only(tiny_onnx, tmp_path))
    with pytest.raises(SdrtError, match="does not exist"):
        source.load(str(tiny_src), vae=str(tmp_path / "nope.safetensors"))


def _unet_only(folder, tmp_path):
    """An export's manifest that lists no VAE (a folder of other components)."""
    import json
    import os

    out = tmp_path / "no-vae"
    out.mkdir()
    manifest = json.loads((folder / "sdrt.json").read_text())
    manifest["components"] = {"unet": manifest["components"]["unet"]}
    (out / "sdrt.json").write_text(json.dumps(manifest))
    os.symlink(folder / "unet", out / "unet")
    return out


def test_generate_and_serve_take_the_vae(vae_export, tiny_onnx, tmp_path, capsys) -> None:
    from fastapi.testclient import TestClient

    from sdrt.cli import main
    from sdrt.runtime import Pipeline
    from sdrt.serve.app import create_app
    from tests.serve.conftest import make_service

    code = main(["generate", "--model", str(tiny_onnx), "--prompt", "a boat", "--steps", "2", "--seed", "4",
                 "--vae", str(vae_export), "--out", str(tmp_path / "out"), "--quiet", "--backend", "ort-cpu",
                 "--height", "32", "--width", "32"])
    assert code == 0
    from PIL import Image

    written = sorted((tmp_path / "out").glob("*.png"))
    assert "VAE: mse" in Image.open(written[0]).info["parameters"]
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    service = make_service({"tiny": pipe}, vaes={"mse": vae_export})
    try:
        client = TestClient(create_app(service))
        body = {"prompt": "a boat", "steps": 2, "seed": 4, "width": 32, "height": 32}
        plain = client.post("/sdapi/v1/txt2img", json=body).json()
        swapped = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_vae": "mse"}}).json()
        assert plain["images"] != swapped["images"] and "VAE: mse" in swapped["info"]
        assert client.get("/sdapi/v1/sd-vae").json() == [{"model_name": "mse", "filename": "mse"}]
        again = client.post("/sdapi/v1/txt2img", json=body).json()
        assert again["images"] == plain["images"]  # the next request without it: the model's own VAE
    finally:
        service.close()
        pipe.close()
