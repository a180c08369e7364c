"""IP-Adapter on the engines: TensorRT profiles of the UNet that takes the IP-Adapter's keys and values and of
the IP-Adapter's two graphs (from the spec), and real TensorRT-RTX builds of them from the tiny fp16 exports
(no GPU needed)."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from sdrt import cli, spec
from sdrt.engines import trt_cache, trt_profiles as tp
from sdrt.manifest import SizeRule

#: SD 1.5's 16 cross-attention layers in diffusers' processor order: down (2 each), up (3 each), mid
SD15 = spec.IPAdapterLayout(4, (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280),
                            1024, 224, 768)
VALUES = {"C": 4, "Cin": 4, "S": 77, "D": 768, "f": 8}
RULE = SizeRule(latent_multiple=1, min_latent=3, max_latent=256, vae_scale_factor=8)


def test_ip_adapter_unet_profile_covers_every_layer():
    unet = spec.model_spec("sd", ip_adapter=SD15).denoiser
    assert unet.input_names[3:5] == ("ip_key_0", "ip_value_0") and len(unet.input_names) == 3 + 32
    r = tp.dim_range(unet, tp.ProfileRequest(height=520, width=776, min_size=264, max_size=1032), RULE, 512)
    shapes = tp.input_shapes(unet, VALUES, r)
    assert shapes["ip_key_0"] == ((2, 4, 320),) * 3 and shapes["ip_value_15"] == ((2, 4, 1280),) * 3
    both = spec.model_spec("sd", residuals=spec.Residuals(((320, 1),), (320, 1)), ip_adapter=SD15).denoiser
    assert both.input_names[3:5] == ("down_block_residual_0", "mid_block_residual") and "ip_value_15" in both.input_names


def test_ip_adapter_graph_profiles():
    encoder, proj = spec.ip_adapter_spec("sd", SD15).components
    r = tp.dim_range(encoder, tp.ProfileRequest(batch=2, max_batch=2), RULE, 512)
    assert tp.input_shapes(encoder, VALUES, r)["pixel_values"][0] == (1, 3, 224, 224)  # the runtime encodes one image
    r = tp.dim_range(proj, tp.ProfileRequest(batch=2, max_batch=2), RULE, 512)
    assert tp.input_shapes(proj, VALUES, r)["image_embeds"] == ((2, 1024), (4, 1024), (4, 1024))  # both CFG halves


rtx = pytest.mark.skipif(not (importlib.util.find_spec("tensorrt_rtx") and importlib.util.find_spec("polygraphy")),
                         reason="needs tensorrt_rtx and polygraphy: pip install 'sdrt[tensorrt-rtx-build]'")


@pytest.mark.tensorrt
@rtx
def test_tiny_fp16_ip_adapter_and_its_unet_build_with_tensorrt_rtx(onnx_export, ip_adapter_export, tmp_path, capsys):
    base = tmp_path / "tiny-fp16"
    shutil.copytree(onnx_export("tiny", "fp16"), base, ignore=shutil.ignore_patterns("engines"))
    ip = tmp_path / "ip-fp16"
    shutil.copytree(ip_adapter_export("tiny-ip-adapter", precision="fp16"), ip, ignore=shutil.ignore_patterns("engines"))
    size = ["--height", "32", "--width", "32"]
    assert cli.main(["build", "--model", str(ip), "--backend", "tensorrt_rtx", *size]) == 0, capsys.readouterr().err
    assert cli.main(["build", "--model", str(base), "--backend", "tensorrt_rtx", "--ip-adapter", str(ip),
                     "--components", "unet", *size]) == 0, capsys.readouterr().err
    for folder, component in ((ip, "image_encoder"), (ip, "image_proj"), (base, "unet")):
        (entry,) = trt_cache.read_entries(trt_cache.store_root(folder, "tensorrt_rtx"), component)
        assert entry.engine_file.stat().st_size > 10_000  # a real serialized plan
    assert any((base / "engines" / "graphs").glob("unet-ip-*"))  # the IP-Adapter graph the UNet engine was built from
