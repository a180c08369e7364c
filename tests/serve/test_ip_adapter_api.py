"""IP-Adapter units of sd-webui-controlnet's API on `sdrt serve`: webuiapi's `ControlNetUnit` naming an exported
IP-Adapter in --controlnet-dir, against a live server on 127.0.0.1 (tiny preset on ort-cpu); by name only,
one per request, of the model's width; requests with different IP-Adapter units never share a batch."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import Pipeline
from sdrt.serve.controlnets import ControlNetCatalog, IPUnit
from sdrt.serve.queueing import GenerationRequest
from tests.serve.conftest import live_server, make_service

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def adapter_dir(tiny_ip_adapter_onnx, tiny_controlnet_onnx, ip_adapter_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    skip = shutil.ignore_patterns("engines")
    shutil.copytree(tiny_ip_adapter_onnx, folder / "tiny_ip", ignore=skip)
    shutil.copytree(tiny_ip_adapter_onnx, folder / "tiny_ip_copy", ignore=skip)
    shutil.copytree(ip_adapter_export("tiny-sdxl-ip-adapter"), folder / "sdxl_ip", ignore=skip)
    shutil.copytree(tiny_controlnet_onnx, folder / "tiny_canny", ignore=skip)
    return folder


@pytest.fixture(scope="module")
def server(tiny_onnx, adapter_dir):
    from sdrt.serve.app import create_app

    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    service = make_service({"tiny": pipe}, max_batch=4, controlnets=ControlNetCatalog(adapter_dir))
    with live_server(create_app(service, api_key="key")) as url:
        host, port = url.removeprefix("http://").split(":")
        yield webuiapi.WebUIApi(host=host, port=int(port), username="u", password="key"), service, url
    service.close()
    pipe.close()


def _picture(seed: int = 3) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((40, 48, 3)) * 255).astype(np.uint8))


def _txt2img(api, units):
    # a fresh alwayson_scripts: webuiapi's default dict is shared by every later call in this process
    return api.txt2img(prompt="a tower", seed=5, steps=3, cfg_scale=6.0, width=32, height=32, sampler_name="Euler",
                       controlnet_units=units, alwayson_scripts={})


def test_lists_list_ip_adapters_by_name_and_their_modules(server):
    api, _, _ = server
    assert set(api.controlnet_model_list()) == {"tiny_ip", "tiny_ip_copy", "sdxl_ip", "tiny_canny"}
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl"} <= set(api.controlnet_module_list())


def test_webuiapi_ip_adapter_unit_matches_the_pipeline(server, tiny_onnx, adapter_dir):
    api, _, _ = server
    unit = webuiapi.ControlNetUnit(image=_picture(), module="ip-adapter_clip_sd15", model="tiny_ip [0123abcd]",
                                   weight=0.6)
    result = _txt2img(api, [unit])
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: tiny_ip, Weight: 0.6' in result.info["infotexts"][0]
    assert str(adapter_dir) not in str(result.info)  # names, never the server's folders
    direct = Pipeline.load(tiny_onnx, backend="ort-cpu", ip_adapter=adapter_dir / "tiny_ip")
    direct.set_ip_adapter_scale(0.6)
    expected = direct("a tower", seed=[5], num_inference_steps=3, guidance_scale=6.0, height=32, width=32,
                      scheduler="euler", ip_adapter_image=_picture()).images[0]
    direct.close()
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), np.asarray(expected))
    plain = _txt2img(api, [])
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))  # the unit steered
    assert "ControlNet 0" not in plain.info["infotexts"][0]
    base = Pipeline.load(tiny_onnx, backend="ort-cpu")  # a request without the unit: the base alone
    alone = base("a tower", seed=[5], num_inference_steps=3, guidance_scale=6.0, height=32, width=32,
                 scheduler="euler").images[0]
    base.close()
    assert np.allclose(np.asarray(plain.images[0].convert("RGB"), dtype=int), np.asarray(alone, dtype=int), atol=1)
    # another IP-Adapter of the same layout: switched per batch (same weights, so the same image)
    again = _txt2img(api, [webuiapi.ControlNetUnit(image=_picture(), module="none", model="tiny_ip_copy", weight=0.6)])
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_ip_adapter_unit_with_a_controlnet_unit(server, tiny_onnx, adapter_dir):
    api, _, _ = server
    control = _picture(7).resize((32, 32), Image.LANCZOS)
    result = _txt2img(api, [webuiapi.ControlNetUnit(image=control, module="none", model="tiny_canny", weight=0.8),
                            webuiapi.ControlNetUnit(image=_picture(), module="ip-adapter_clip_sd15", model="tiny_ip",
                                                    weight=0.5)])
    info = result.info["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: tiny_canny' in info and 'ControlNet 1: "Module: ip-adapter' in info
    direct = Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=adapter_dir / "tiny_canny",
                           ip_adapter=adapter_dir / "tiny_ip")
    direct.set_ip_adapter_scale(0.5)
    expected = direct("a tower", seed=[5], num_inference_steps=3, guidance_scale=6.0, height=32, width=32,
                      scheduler="euler", control_image=control, controlnet_conditioning_scale=0.8,
                      ip_adapter_image=_picture()).images[0]
    direct.close()
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), np.asarray(expected))


@pytest.mark.parametrize("units, message", [
    ([{"model": "../tiny_ip"}], "is not on this server"),
    ([{"model": "tiny_ip"}, {"model": "tiny_ip_copy"}], "a second IP-Adapter unit"),
    ([{"model": "sdxl_ip"}], "cross-attention width"),
    ([{"model": "tiny_ip", "module": "canny"}], "does not go with the IP-Adapter"),
])
def test_bad_ip_adapter_units_are_400_without_server_paths(server, adapter_dir, units, message):
    import httpx

    _, _, url = server
    buffer = io.BytesIO()
    _picture().save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "x", "steps": 2, "width": 32, "height": 32,
            "alwayson_scripts": {"controlnet": {"args": [{"image": image, **unit} for unit in units]}}}
    answer = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, headers={"Authorization": "Bearer key"}, timeout=60)
    assert answer.status_code == 400 and message in answer.text, answer.text
    assert str(adapter_dir) not in answer.text and "\n" not in answer.json()["detail"]


def test_different_ip_adapter_units_never_share_a_batch():
    def request(ip):
        return GenerationRequest(model="m", prompt="p", ip_adapter=ip)

    ip = IPUnit("/x/ip", "ip", 0.6, "none", _picture())
    assert request(ip).batch_key() != request(None).batch_key()
    assert request(ip).batch_key() != request(IPUnit("/x/other", "other", 0.6, "none", _picture())).batch_key()
    assert request(ip).batch_key() != request(IPUnit("/x/ip", "ip", 0.5, "none", _picture())).batch_key()
    assert request(ip).batch_key() != request(IPUnit("/x/ip", "ip", 0.6, "none", _picture(4))).batch_key()
    same = IPUnit("/x/ip", "ip", 0.6, "ip-adapter_clip_sd15", _picture())  # the module is only a label
    assert request(ip).batch_key() == request(same).batch_key()


def test_an_ip_adapter_batch_after_a_lora_batch(tiny_onnx, tiny_ip_adapter_onnx, tmp_path):
    """The first IP-Adapter batch reloads the UNet: an earlier batch's merged LoRA comes off first (and is
    merged again when the IP-Adapter batch asks for it)."""
    from sdrt.serve.queueing import Job
    from sdrt.serve.service import run_batch
    from tests.runtime.lora.test_input import _kohya_from_map

    lora = tmp_path / "style.safetensors"
    _kohya_from_map(tiny_onnx, lora, count=6, rank=4, alpha=4.0, seed=3)
    unit = IPUnit(str(tiny_ip_adapter_onnx), "tiny_ip", 0.6, "none", _picture())
    common = dict(model="tiny", prompt="a tower", width=32, height=32, steps=3, seed=5, guidance_scale=6.0)
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    run_batch(pipe, [Job(GenerationRequest(**common, loras=((str(lora), 0.8),)))])
    both = run_batch(pipe, [Job(GenerationRequest(**common, loras=((str(lora), 0.8),), ip_adapter=unit))])[0]
    pipe.close()
    direct = Pipeline.load(tiny_onnx, backend="ort-cpu", ip_adapter=tiny_ip_adapter_onnx, loras=[(str(lora), 0.8)])
    direct.set_ip_adapter_scale(0.6)
    expected = direct("a tower", negative_prompt="", seed=[5], num_inference_steps=3, guidance_scale=6.0, height=32,
                      width=32, ip_adapter_image=_picture()).images[0]
    direct.close()
    assert np.array_equal(np.asarray(both.images[0]), np.asarray(expected))
