"""The real clients, unchanged, against a live server on 127.0.0.1 serving the tiny preset (ort-cpu):
webuiapi (AUTOMATIC1111's Python client) txt2img and img2img, and openai's images.generate. Every image
is compared with the image the Pipeline itself makes from the same parameters."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.serve.conftest import decode_b64_png, live_server, make_service

webuiapi = pytest.importorskip("webuiapi")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tiny_server(tiny_pipeline):
    from sdrt.serve.app import create_app

    service = make_service({"tiny": tiny_pipeline}, max_batch=4)
    with live_server(create_app(service, api_key="test-key")) as url:
        yield url, service
    service.close()


def direct(pipe, prompt, seed, **kw):
    out = pipe([prompt], negative_prompt=[kw.pop("negative_prompt", "")], seed=seed, **kw)
    return np.asarray(out.images[0])


def test_webuiapi_txt2img(tiny_server, tiny_pipeline):
    url, _ = tiny_server
    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password="test-key")
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=7, steps=3, cfg_scale=6.0,
                         width=64, height=64, sampler_name="Euler a", batch_size=2)
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert result.info["all_seeds"] == [7, 8] and result.info["sampler_name"] == "Euler a"
    assert result.info["steps"] == 3 and result.info["cfg_scale"] == 6.0
    assert result.parameters["prompt"] == "a lighthouse"
    assert "Seed: 8" in result.info["infotexts"][1] and "Sampler: Euler a" in result.info["infotexts"][1]
    for image, seed in zip(result.images, (7, 8)):
        expected = direct(tiny_pipeline, "a lighthouse", seed, negative_prompt="fog", num_inference_steps=3,
                          guidance_scale=6.0, height=64, width=64, scheduler="euler_a")
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)


def test_webuiapi_img2img(tiny_server, tiny_pipeline):
    from PIL import Image

    url, _ = tiny_server
    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password="test-key")
    start = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    result = api.img2img(images=[start], prompt="a boat", seed=11, steps=4, denoising_strength=0.5,
                         width=64, height=64, sampler_name="DDIM", cfg_scale=7.0)
    assert len(result.images) == 1 and result.info["denoising_strength"] == 0.5
    assert result.parameters["init_images"] is None  # as A1111: the images are not echoed back
    expected = direct(tiny_pipeline, "a boat", 11, num_inference_steps=4, guidance_scale=7.0, height=64,
                      width=64, scheduler="ddim", image=start, strength=0.5)
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), expected)

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = api.img2img(images=[start], mask_image=mask, prompt="a boat", seed=11, steps=4,
                            denoising_strength=0.75, width=64, height=64, sampler_name="DDIM")
    pixels = np.asarray(inpainted.images[0].convert("RGB")).astype(int)
    assert pixels.shape == (64, 64, 3) and inpainted.info["all_seeds"] == [11]


def test_webuiapi_without_the_key_is_refused(tiny_server):
    url, _ = tiny_server
    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    with pytest.raises(RuntimeError, match="401"):
        api.txt2img(prompt="x", steps=1, width=64, height=64)


def test_openai_images_generate(tiny_server, tiny_pipeline):
    url, _ = tiny_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="test-key", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["tiny"]
    result = client.images.generate(model="tiny", prompt="a red bicycle", n=2, size="64x64",
                                    response_format="b64_json", extra_body={"seed": 3, "steps": 3})
    assert len(result.data) == 2
    for item, seed in zip(result.data, (3, 4)):
        expected = direct(tiny_pipeline, "a red bicycle", seed, num_inference_steps=3, guidance_scale=7.5,
                          height=64, width=64)
        assert np.array_equal(decode_b64_png(item.b64_json), expected)
    assert base64.b64decode(result.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"


def test_openai_client_errors_are_typed(tiny_server):
    url, _ = tiny_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        client.images.generate(prompt="x", size="64x64")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="test-key", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError, match="steps"):
        client.images.generate(prompt="x", size="64x64", extra_body={"steps": 10_000})
    with pytest.raises(openai.NotFoundError, match="not loaded"):
        client.images.generate(model="dall-e-3", prompt="x", size="64x64")
