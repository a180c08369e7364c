"""Flux through the A1111 and OpenAI APIs and `sdrt batch`, on the real tiny-flux pipeline: each answer's
pixels are the pipeline's own for the same seed and guidance (Forge's fields: `distilled_cfg_scale` is the
embedded guidance, `cfg_scale` with a negative prompt is true CFG)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serve.conftest import decode_b64_png, make_service

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def flux_pipe(tiny_flux_onnx):
    from sdrt.runtime import Pipeline

    return Pipeline.load(tiny_flux_onnx, backend="ort-cpu")


@pytest.fixture
def client(flux_pipe):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    service = make_service({"tiny-flux": flux_pipe})
    yield TestClient(create_app(service), raise_server_exceptions=False)
    service.close()


def _pixels(pipe, **call) -> np.ndarray:
    image = pipe("a red bicycle", height=64, width=96, num_inference_steps=3, **call).images[0]
    return np.asarray(image.convert("RGB"))


def test_a1111_txt2img_uses_forge_guidance_fields(client, flux_pipe):
    body = {"prompt": "a red bicycle", "width": 96, "height": 64, "steps": 3, "seed": 7, "sampler_name": "Euler",
            "distilled_cfg_scale": 5.0, "cfg_scale": 7.0}  # an empty negative prompt: no true CFG
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "CFG scale: 1.0, Distilled CFG Scale: 5.0" in info["infotexts"][0]
    assert info["extra_generation_params"]["Distilled CFG Scale"] == 5.0
    np.testing.assert_array_equal(decode_b64_png(r.json()["images"][0]), _pixels(flux_pipe, seed=7, guidance_scale=5.0))
    true_cfg = client.post("/sdapi/v1/txt2img", json={**body, "negative_prompt": "blurry", "cfg_scale": 3.0})
    assert true_cfg.status_code == 200, true_cfg.text
    assert "CFG scale: 3.0, Distilled CFG Scale: 5.0" in json.loads(true_cfg.json()["info"])["infotexts"][0]
    np.testing.assert_array_equal(decode_b64_png(true_cfg.json()["images"][0]), _pixels(
        flux_pipe, seed=7, guidance_scale=5.0, negative_prompt="blurry", true_cfg_scale=3.0))


def test_a1111_img2img_and_size_errors(client):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a cat", "init_images": [image], "width": 96, "height": 64,
                                               "steps": 4, "denoising_strength": 0.5, "seed": 1})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["infotexts"][0].count("Denoising strength: 0.5") == 1
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 100, "height": 64, "steps": 2})
    assert bad.status_code == 422 and "not a multiple of 16" in bad.text


def test_openai_generation_defaults_to_flux_guidance(client, flux_pipe):
    r = client.post("/v1/images/generations", json={"prompt": "a red bicycle", "size": "96x64", "steps": 3,
                                                    "seed": 11})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(decode_b64_png(r.json()["data"][0]["b64_json"]), _pixels(flux_pipe, seed=11))
    cfg = client.post("/v1/images/generations", json={"prompt": "a red bicycle", "size": "96x64", "steps": 3,
                                                      "seed": 11, "negative_prompt": "dark", "true_cfg_scale": 2.0,
                                                      "guidance_scale": 4.0})
    assert cfg.status_code == 200, cfg.text
    np.testing.assert_array_equal(decode_b64_png(cfg.json()["data"][0]["b64_json"]), _pixels(
        flux_pipe, seed=11, negative_prompt="dark", true_cfg_scale=2.0, guidance_scale=4.0))


def test_sdrt_batch_runs_flux_requests(tmp_path, tiny_flux_onnx, flux_pipe, capsys):
    from PIL import Image

    from sdrt.cli import main

    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(line) for line in (
        {"id": "plain", "prompt": "a red bicycle", "width": 96, "height": 64, "steps": 3, "seed": 4},
        {"id": "cfg", "prompt": "a red bicycle", "width": 96, "height": 64, "steps": 3, "seed": 4,
         "negative_prompt": "blurry", "true_cfg_scale": 2.5, "guidance_scale": 6.0},
    )) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(requests), "--model", str(tiny_flux_onnx), "--out", str(out), "--backend", "ort-cpu",
                 "--quiet"]) == 0, capsys.readouterr().err
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["guidance_scale"] for r in sorted(results, key=lambda r: r["id"])] == [6.0, 3.5]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "plain-0.png").convert("RGB")),
                                  _pixels(flux_pipe, seed=4))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "cfg-0.png").convert("RGB")), _pixels(
        flux_pipe, seed=4, negative_prompt="blurry", true_cfg_scale=2.5, guidance_scale=6.0))


def test_true_cfg_scale_is_refused_for_a_unet_model(tmp_path, tiny_onnx, capsys):
    from sdrt.cli import main

    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"prompt": "a cat", "true_cfg_scale": 3.0}) + "\n")
    assert main(["batch", str(requests), "--model", str(tiny_onnx), "--out", str(tmp_path / "out")]) == 2
    assert "true_cfg_scale is Flux's" in capsys.readouterr().err
