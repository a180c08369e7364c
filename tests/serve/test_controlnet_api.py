"""sd-webui-controlnet's API on `sdrt serve`: webuiapi's `ControlNetUnit` against a live server on 127.0.0.1
(tiny preset on ort-cpu, the tiny ControlNet in --controlnet-dir); ControlNets by name only; requests with
different ControlNet sets never share a UNet batch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import Pipeline
from sdrt.serve.controlnets import ControlNetCatalog
from sdrt.serve.queueing import GenerationRequest
from tests.serve.conftest import live_server, make_service

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def controlnet_dir(tiny_controlnet_onnx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnets")
    shutil.copytree(tiny_controlnet_onnx, folder / "tiny_canny", ignore=shutil.ignore_patterns("engines"))
    (folder / "not-a-controlnet").mkdir()
    return folder


@pytest.fixture(scope="module")
def server(tiny_onnx, controlnet_dir):
    from sdrt.serve.app import create_app

    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    service = make_service({"tiny": pipe}, max_batch=4, controlnets=ControlNetCatalog(controlnet_dir))
    with live_server(create_app(service, api_key="key")) as url:
        host, port = url.removeprefix("http://").split(":")
        yield webuiapi.WebUIApi(host=host, port=int(port), username="u", password="key"), service, url
    service.close()
    pipe.close()


def _control() -> Image.Image:
    return Image.fromarray((np.random.default_rng(2).random((48, 40, 3)) * 255).astype(np.uint8))


def test_routes_list_models_by_name_modules_and_version(server):
    api, _, _ = server
    assert api.controlnet_model_list() == ["tiny_canny"]
    assert {"none", "canny"} <= set(api.controlnet_module_list())
    assert api.controlnet_version() == 2


def test_webuiapi_controlnet_unit_matches_the_pipeline(server, tiny_onnx, controlnet_dir):
    api, _, _ = server
    unit = webuiapi.ControlNetUnit(image=_control(), module="none", model="tiny_canny [abc123]", weight=0.7,
                                   guidance_start=0.0, guidance_end=0.75, resize_mode="Just Resize")
    # webuiapi adds the units to its *default* alwayson_scripts dict (a mutable default shared by every later
    # call in this process): pass a fresh dict, so no other test's request carries these units
    result = api.txt2img(prompt="a tower", seed=5, steps=3, cfg_scale=6.0, width=32, height=32,
                         sampler_name="Euler", controlnet_units=[unit], alwayson_scripts={})
    assert 'ControlNet 0: "Module: none, Model: tiny_canny, Weight: 0.7' in result.info["infotexts"][0]
    assert str(controlnet_dir) not in str(result.info)  # names, never the server's folders
    direct = Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=controlnet_dir / "tiny_canny")
    expected = direct("a tower", seed=[5], num_inference_steps=3, guidance_scale=6.0, height=32, width=32,
                      scheduler="euler", control_image=_control().resize((32, 32), Image.LANCZOS),
                      controlnet_conditioning_scale=0.7, control_guidance_end=0.75).images[0]
    plain = api.txt2img(prompt="a tower", seed=5, steps=3, cfg_scale=6.0, width=32, height=32, sampler_name="Euler",
                        alwayson_scripts={})
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), np.asarray(expected))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))  # the unit steered


@pytest.mark.parametrize("unit, message", [
    ({"model": "../tiny_canny"}, "is not on this server"),
    ({"model": "not-a-controlnet"}, "is not on this server"),
    ({"model": "None"}, "has no model"),
    ({"module": "depth_midas"}, "runs a MiDaS depth model"),
    ({"module": "sobel"}, "unknown preprocessor"),
    ({"control_mode": "My prompt is more important"}, "is not supported"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "must satisfy 0 <= start < end <= 1"),
])
def test_bad_units_are_400_without_server_paths(server, controlnet_dir, unit, message):
    import base64
    import io

    import httpx

    _, _, url = server
    buffer = io.BytesIO()
    _control().save(buffer, format="PNG")
    body = {"prompt": "x", "steps": 2, "width": 32, "height": 32, "alwayson_scripts": {"controlnet": {"args": [
        {"image": base64.b64encode(buffer.getvalue()).decode(), "model": "tiny_canny", **unit}]}}}
    answer = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, headers={"Authorization": "Bearer key"}, timeout=60)
    assert answer.status_code == 400 and message in answer.text, answer.text
    assert str(controlnet_dir) not in answer.text


def test_different_controlnet_sets_never_share_a_batch():
    from sdrt.serve.controlnets import Unit

    def request(units):
        return GenerationRequest(model="m", prompt="p", controlnets=units)

    canny = Unit("/x/canny", "canny", 1.0, 0.0, 1.0, False, "none", None)
    assert request((canny,)).batch_key() != request(()).batch_key()
    assert request((canny,)).batch_key() != request((Unit("/x/canny", "canny", 0.5, 0.0, 1.0, False, "none", None),)).batch_key()
    assert request((canny,)).batch_key() == request((Unit("/x/canny", "canny", 1.0, 0.0, 1.0, False, "canny", "img"),)).batch_key()


def test_a_controlnet_batch_after_a_lora_batch(tiny_onnx, tiny_controlnet_onnx, tmp_path):
    """The first ControlNet batch reloads the UNet: an earlier batch's merged LoRA comes off first and is merged
    again into the residual-taking graph when the ControlNet batch asks for it."""
    from sdrt.serve.controlnets import Unit
    from sdrt.serve.queueing import Job
    from sdrt.serve.service import run_batch
    from tests.runtime.lora.test_input import _kohya_from_map

    lora = tmp_path / "style.safetensors"
    _kohya_from_map(tiny_onnx, lora, count=6, rank=4, alpha=4.0, seed=3)
    control = _control().resize((32, 32), Image.LANCZOS)
    unit = Unit(str(tiny_controlnet_onnx), "tiny_canny", 0.7, 0.0, 1.0, False, "none", control)
    common = dict(model="tiny", prompt="a tower", width=32, height=32, steps=3, seed=5, guidance_scale=6.0,
                  loras=((str(lora), 0.8),))
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    run_batch(pipe, [Job(GenerationRequest(**common))])
    both = run_batch(pipe, [Job(GenerationRequest(**common, controlnets=(unit,)))])[0]
    pipe.close()
    direct = Pipeline.load(tiny_onnx, backend="ort-cpu", controlnet=tiny_controlnet_onnx, loras=[(str(lora), 0.8)])
    expected = direct("a tower", negative_prompt="", seed=[5], num_inference_steps=3, guidance_scale=6.0, height=32,
                      width=32, control_image=control, controlnet_conditioning_scale=0.7).images[0]
    direct.close()
    assert np.array_equal(np.asarray(both.images[0]), np.asarray(expected))
