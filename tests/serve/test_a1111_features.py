"""AUTOMATIC1111's features through `sdrt serve` with its own client (webuiapi), on a live tiny server: prompt
syntax by default, hires fix, variation seeds, styles, options and override_settings, png-info, interrupt,
the published schema; every image compared with the Pipeline's own for the same parameters."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import requests

from tests.serve.conftest import live_server, make_service, wait_for

webuiapi = pytest.importorskip("webuiapi")

STYLES = 'name,prompt,negative_prompt\nnight,"{prompt}, at night",daylight\nfilm,"film grain",\n'
SMALL = dict(steps=3, width=64, height=64, cfg_scale=6.0, sampler_name="DDIM")
DIRECT = dict(num_inference_steps=3, height=64, width=64, guidance_scale=6.0, scheduler="ddim")


@pytest.fixture(scope="module")
def server(tiny_pipeline, tmp_path_factory):
    from sdrt.serve.app import create_app
    from sdrt.serve.styles import Styles

    path = tmp_path_factory.mktemp("styles") / "styles.csv"
    path.write_text(STYLES)
    service = make_service({"tiny": tiny_pipeline}, max_batch=1, styles=Styles(path))
    with live_server(create_app(service)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield webuiapi.WebUIApi(host=host, port=int(port)), url, service
    service.close()


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_prompts_are_read_in_a1111_syntax(server, tiny_pipeline) -> None:
    api, _, _ = server
    plain = api.txt2img(prompt="a red boat", seed=5, **SMALL).images[0]
    same = api.txt2img(prompt="a (red:1.0) boat", seed=5, **SMALL).images[0]
    assert np.array_equal(pixels(plain), pixels(same))
    weighted = api.txt2img(prompt="a (red:1.5) boat BREAK [sea]", seed=5, **SMALL).images[0]
    direct = tiny_pipeline(["a (red:1.5) boat BREAK [sea]"], negative_prompt=[""], seed=5, prompt_syntax="a1111",
                           **DIRECT).images[0]
    assert np.array_equal(pixels(weighted), np.asarray(direct))


def test_hires_fix(server, tiny_pipeline) -> None:
    from sdrt.runtime.hires import HiresFix, generate

    api, _, _ = server
    result = api.txt2img(prompt="a lighthouse", seed=7, enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
                         denoising_strength=0.6, hr_upscaler=webuiapi.HiResUpscaler.Latent, **SMALL)
    assert result.images[0].size == (128, 128) and result.info["width"] == 64
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in result.info["infotexts"][0]
    assert result.info["extra_generation_params"]["Hires upscaler"] == "Latent"
    direct = generate(tiny_pipeline, ["a lighthouse"], negative_prompt=[""], seed=[7], prompt_syntax="a1111",
                      hires=HiresFix(scale=2, steps=2, denoising_strength=0.6), **DIRECT)
    assert np.array_equal(pixels(result.images[0]), np.asarray(direct.images[0]))


def test_hires_past_max_pixels_is_refused(tiny_pipeline) -> None:
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app
    from sdrt.serve.limits import Limits

    service = make_service({"tiny": tiny_pipeline}, limits=Limits(max_pixels=100 * 100))
    try:
        r = TestClient(create_app(service)).post("/sdapi/v1/txt2img", json={
            "prompt": "x", "width": 64, "height": 64, "steps": 1, "enable_hr": True, "hr_scale": 2})
        assert r.status_code == 413 and "128x128" in r.json()["detail"]
    finally:
        service.close()


def test_variation_seeds(server, tiny_pipeline) -> None:
    api, _, _ = server
    result = api.txt2img(prompt="a boat", seed=4, subseed=50, subseed_strength=0.4, batch_size=2, **SMALL)
    assert result.info["all_subseeds"] == [50, 51] and result.info["subseed_strength"] == 0.4
    assert "Variation seed: 51, Variation seed strength: 0.4" in result.info["infotexts"][1]
    direct = tiny_pipeline(["a boat"] * 2, negative_prompt=[""] * 2, seed=[4, 5], subseed=[50, 51],
                           subseed_strength=0.4, prompt_syntax="a1111", **DIRECT).images
    for got, want in zip(result.images, direct):
        assert np.array_equal(pixels(got), np.asarray(want))


def test_styles(server) -> None:
    api, _, _ = server
    assert [s["name"] for s in api.get_prompt_styles()] == ["night", "film"]
    result = api.txt2img(prompt="a boat", styles=["night", "film"], negative_prompt="fog", seed=1, **SMALL)
    assert result.info["prompt"] == "a boat, at night, film grain" and result.info["styles"] == ["night", "film"]
    assert result.info["negative_prompt"] == "fog, daylight"
    with pytest.raises(RuntimeError, match="400.*noir.*is not one of this server.*styles"):
        api.txt2img(prompt="a boat", styles=["noir"], **SMALL)


def test_options_and_override_settings(server, tiny_pipeline) -> None:
    api, url, _ = server
    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 1 and options["sd_model_checkpoint"] == "tiny"
    assert options["prompt_syntax"] == "a1111"
    api.set_options({"prompt_syntax": "diffusers"})
    try:
        text = api.txt2img(prompt="a (red:1.5) boat", seed=2, **SMALL).images[0]
        direct = tiny_pipeline(["a (red:1.5) boat"], negative_prompt=[""], seed=2, **DIRECT).images[0]
        assert np.array_equal(pixels(text), np.asarray(direct))  # brackets read as text, as asked
    finally:
        api.set_options({"prompt_syntax": "a1111"})
    r = requests.post(f"{url}/sdapi/v1/options", json={"upscaler_for_img2img": "x"})
    assert r.status_code == 400 and "no setting 'upscaler_for_img2img'" in r.json()["detail"]
    r = requests.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 0})
    assert r.status_code == 400 and api.get_options()["CLIP_stop_at_last_layers"] == 1
    # CLIP skip 2 needs the text encoder's layer stack: this export lacks it, one line says how to get it
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                        "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert r.status_code == 400 and "--hidden-states" in r.json()["detail"]
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {"sd_vae": "mse"}})
    assert r.status_code == 400 and "sd_vae 'mse' is not a VAE of this server" in r.json()["detail"]


def test_png_info_reads_back_the_infotext(server) -> None:
    api, _, _ = server
    made = api.txt2img(prompt="a (red:1.2) boat, sea", negative_prompt="fog", seed=9, **SMALL)
    info = api.png_info(made.images[0])
    assert info.info == made.info["infotexts"][0]
    fields = info.parameters
    assert fields["Prompt"] == "a (red:1.2) boat, sea" and fields["Negative prompt"] == "fog"
    assert fields["Seed"] == "9" and fields["Size-1"] == "64" and fields["Sampler"] == "DDIM"


def test_interrupt_answers_with_the_images_so_far(server) -> None:
    api, _, service = server
    answers = []
    worker = threading.Thread(target=lambda: answers.append(api.txt2img(prompt="a boat", seed=3, **{
        **SMALL, "steps": 150})))
    worker.start()
    assert wait_for(lambda: service.workers["tiny"].progress.step >= 2, 60)
    assert api.interrupt() == {}
    worker.join(60)
    result = answers[0]
    assert result.info["interrupted"] is True and result.images[0].size == (64, 64)
    assert service.workers["tiny"].progress.step == 0  # nothing left running
    after = api.txt2img(prompt="a boat", seed=3, **SMALL)  # the next request runs in full
    assert after.info["interrupted"] is False


def test_bad_numbers_are_a_4xx_and_the_server_stays_ready(server) -> None:
    _, url, _ = server
    for body in ({"prompt": "x", "cfg_scale": "NaN"}, {"prompt": "x", "cfg_scale": "Infinity"},
                 {"prompt": "x", "subseed_strength": "NaN"}, {"prompt": "x", "denoising_strength": "-inf"}):
        r = requests.post(f"{url}/sdapi/v1/txt2img", json=body)
        assert r.status_code == 422, (body, r.text)
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 61, "height": 64})
    assert r.status_code == 400 and "width 61" in r.json()["detail"]  # the pipeline's own check, one line
    assert requests.get(f"{url}/readyz").status_code == 200


def test_the_schema_is_published(server) -> None:
    _, url, _ = server
    schema = requests.get(f"{url}/openapi.json").json()
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options", "/sdapi/v1/png-info",
                 "/sdapi/v1/interrupt", "/v1/images/generations"):
        assert path in schema["paths"], path
    txt2img = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert {"enable_hr", "hr_scale", "subseed_strength", "styles", "override_settings"} <= set(txt2img)
    docs = requests.get(f"{url}/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


def test_lists_clients_read(server) -> None:
    api, _, _ = server
    assert {u["name"] for u in api.get_upscalers()} >= {"Lanczos", "Nearest", "None"}
    assert {m["name"] for m in api.get_latent_upscale_modes()} >= {"Latent", "Latent (bicubic antialiased)"}
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_sd_vae() == []
