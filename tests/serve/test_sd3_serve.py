"""SD3 through the service: the real clients (webuiapi, openai), unchanged, against a live server on 127.0.0.1
serving tiny-sd3 (ort-cpu), and `sdrt batch` on it. Every image is compared with the image the Pipeline
itself makes from the same parameters. The A1111 sampler listing is the flow-matching one (Euler with
its schedule types, Heun); a UNet sampler on SD3 is refused before it is queued."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main
from tests.serve.conftest import decode_b64_png, live_server, make_service

webuiapi = pytest.importorskip("webuiapi")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def sd3_pipeline(tiny_sd3_onnx):
    from sdrt.runtime import Pipeline

    return Pipeline.load(tiny_sd3_onnx, backend="ort-cpu")


@pytest.fixture(scope="module")
def sd3_server(sd3_pipeline):
    from sdrt.serve.app import create_app

    service = make_service({"tiny-sd3": sd3_pipeline}, max_batch=4)
    with live_server(create_app(service, api_key="test-key")) as url:
        yield url
    service.close()


def _api(url, **kw):
    host, port = url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password="test-key", **kw)


def direct(pipe, prompt, seed, **kw):
    out = pipe([prompt], negative_prompt=[kw.pop("negative_prompt", "")], seed=seed, **kw)
    return np.asarray(out.images[0])


def test_samplers_listed_are_the_flow_ones(sd3_server):
    api = _api(sd3_server)
    assert [s["name"] for s in api.get_samplers()] == ["Euler", "Heun"]
    assert [s["label"] for s in api.get_schedulers()] == ["Automatic", "Karras", "Exponential", "Beta"]


def test_webuiapi_txt2img_sd3(sd3_server, sd3_pipeline):
    api = _api(sd3_server, sampler="Euler")
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=7, steps=3, cfg_scale=5.0, width=64,
                         height=48, scheduler="Karras", batch_size=2)
    assert len(result.images) == 2 and result.images[0].size == (64, 48)
    assert result.info["all_seeds"] == [7, 8] and result.info["sampler_name"] == "Euler"
    assert result.info["scheduler"] == "Karras"
    assert "Sampler: Euler, Schedule type: Karras, CFG scale: 5.0" in result.info["infotexts"][1]
    for image, seed in zip(result.images, (7, 8)):
        expected = direct(sd3_pipeline, "a lighthouse", seed, negative_prompt="fog", num_inference_steps=3,
                          guidance_scale=5.0, height=48, width=64, scheduler="euler_karras")
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)


def test_webuiapi_img2img_and_inpaint_sd3(sd3_server, sd3_pipeline):
    api = _api(sd3_server, sampler="Heun")
    start = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    result = api.img2img(images=[start], prompt="a boat", seed=11, steps=4, denoising_strength=0.5, width=64,
                         height=64, cfg_scale=6.0)
    assert result.info["sampler_name"] == "Heun" and result.info["denoising_strength"] == 0.5
    expected = direct(sd3_pipeline, "a boat", 11, num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
                      scheduler="heun", image=start, strength=0.5)
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), expected)

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = _api(sd3_server, sampler="Euler").img2img(
        images=[start], mask_image=mask, prompt="a boat", seed=11, steps=4, denoising_strength=0.75, width=64,
        height=64, cfg_scale=6.0)
    expected = direct(sd3_pipeline, "a boat", 11, num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
                      scheduler="euler", image=start, mask_image=mask, strength=0.75)
    assert np.array_equal(np.asarray(inpainted.images[0].convert("RGB")), expected)


def test_a_unet_sampler_on_sd3_is_refused_before_queueing(sd3_server):
    with pytest.raises(RuntimeError, match=r"Euler a.*flow-matching model.*Euler or Heun"):
        _api(sd3_server).txt2img(prompt="x", steps=1, width=64, height=64)  # webuiapi's default: "Euler a"
    with pytest.raises(RuntimeError, match=r"sgm_uniform.* is not available with sampler .*Euler.* on a flow-matching model"):
        _api(sd3_server, sampler="Euler").txt2img(prompt="x", steps=1, width=64, height=64, scheduler="sgm_uniform")


def test_openai_images_generate_sd3(sd3_server, sd3_pipeline):
    client = openai.OpenAI(base_url=f"{sd3_server}/v1", api_key="test-key", max_retries=0, timeout=120)
    result = client.images.generate(model="tiny-sd3", prompt="a red bicycle", n=2, size="64x64",
                                    response_format="b64_json", extra_body={"seed": 3, "steps": 3})
    assert len(result.data) == 2
    for item, seed in zip(result.data, (3, 4)):
        expected = direct(sd3_pipeline, "a red bicycle", seed, num_inference_steps=3, guidance_scale=7.5,
                          height=64, width=64)
        assert np.array_equal(decode_b64_png(item.b64_json), expected)
    with pytest.raises(openai.BadRequestError, match="flow-matching"):
        client.images.generate(model="tiny-sd3", prompt="x", size="64x64", extra_body={"sampler": "DPM++ 2M"})


def test_sdrt_batch_on_sd3(tiny_sd3_onnx, sd3_pipeline, tmp_path):
    rows = [{"id": "a", "prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler": "Heun"},
            {"id": "b", "prompt": "a dog", "steps": 2, "width": 48, "height": 64, "seed": 9, "n": 2,
             "guidance_scale": 4.0}]
    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["batch", str(requests), "--model", str(tiny_sd3_onnx), "--out", str(out), "--backend", "ort-cpu",
                 "--quiet"]) == 0
    lines = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert lines["a"]["scheduler"] == "FlowMatchHeunDiscreteScheduler" and lines["b"]["seeds"] == [9, 10]
    cases = [("a", "a cat", 5, dict(scheduler="heun", height=64, width=64, guidance_scale=7.5)),
             ("b", "a dog", 10, dict(height=64, width=48, guidance_scale=4.0))]
    for key, prompt, seed, kw in cases:
        image = Image.open(out / lines[key]["images"][-1])
        assert "Steps: 2" in image.text["parameters"]
        expected = direct(sd3_pipeline, prompt, seed, num_inference_steps=2, **kw)
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)


def test_flow_sampler_names():
    from sdrt.serve import samplers

    assert samplers.resolve("Euler", "Beta", flow=True) == "euler_beta"
    assert samplers.resolve("k_heun", None, flow=True) == "heun"
    with pytest.raises(samplers.RequestRejected, match="scheduler .karras. is not available with sampler .Euler."):
        samplers.resolve("Euler", "Karras")  # the UNet families' Euler has no Karras form here
    mixed = [s["name"] for s in samplers.listing(unet=True, flow=True)]  # a server with SD and SD3 models
    assert mixed.count("Euler") == 1 and {"Heun", "DPM++ 2M", "Euler a"} <= set(mixed)
