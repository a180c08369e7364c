"""The HTTP surface on a fake pipeline: routes and their shapes, security defaults, every limit's 4xx, errors."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from sdrt.errors import SdrtError
from sdrt.serve.commands_serve import check_exposure, is_loopback
from sdrt.serve.limits import Limits
from tests.serve.conftest import FakePipe

TXT = {"prompt": "a cat", "width": 64, "height": 64, "steps": 3, "seed": 5}


@pytest.fixture
def client_for(fake_service):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    def make(api_key=None, cors=(), **kwargs):
        service, pipe = fake_service(**kwargs)
        return TestClient(create_app(service, api_key=api_key, cors_origins=cors),
                          raise_server_exceptions=False), pipe

    return make


def png_b64(size=(64, 64), colour=(10, 20, 30), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_a1111_txt2img_answer_shape(client_for):
    client, pipe = client_for()
    r = client.post("/sdapi/v1/txt2img", json={**TXT, "batch_size": 2, "sampler_name": "Euler a",
                                               "negative_prompt": "blurry"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 2 and isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5, 6] and info["sampler_name"] == "Euler a" and info["steps"] == 3
    assert info["infotexts"][1].startswith("a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a")
    assert "Seed: 6" in info["infotexts"][1]
    assert body["parameters"]["prompt"] == "a cat" and body["parameters"]["batch_size"] == 2
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (64, 64) and "Seed: 5" in image.text["parameters"]
    assert pipe.calls[0]["steps"] == 3


def test_a1111_listings(client_for):
    client, _ = client_for()
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "PLMS", "UniPC", "LMS"} <= set(names)
    assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()] == ["fake"]
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and "sampling_steps" in progress["state"]
    assert client.get("/v1/models").json()["data"][0]["id"] == "fake"


def test_samplers_map_to_sdrt_schedulers():
    from sdrt.runtime.schedulers import SCHEDULERS
    from sdrt.serve import samplers

    for name, (sdrt_name, _) in samplers.SAMPLERS.items():
        assert sdrt_name in SCHEDULERS, name
    assert samplers.resolve("DPM++ 2M", "Karras") == "dpmpp_2m_karras"
    assert samplers.resolve("k_euler_a") == "euler_a"
    assert samplers.resolve(None) is None


def test_openai_generation_shape(client_for):
    client, pipe = client_for()
    r = client.post("/v1/images/generations", json={"prompt": "a cat", "n": 2, "size": "64x64",
                                                    "response_format": "b64_json", "seed": 9, "steps": 2})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all(Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size == (64, 64)
                                  for d in data)
    assert pipe.calls[0]["seeds"] == [9, 10] and pipe.calls[0]["steps"] == 2


@pytest.mark.parametrize("path,body,status,words", [
    ("/sdapi/v1/txt2img", {**TXT, "steps": 151}, 400, "steps 151"),
    ("/sdapi/v1/txt2img", {**TXT, "width": 4096, "height": 4096}, 413, "4096x4096"),
    ("/sdapi/v1/txt2img", {**TXT, "batch_size": 9}, 400, "9 images"),
    ("/sdapi/v1/txt2img", {**TXT, "batch_size": 3, "n_iter": 3}, 400, "9 images"),
    ("/sdapi/v1/txt2img", {**TXT, "prompt": "x" * 4001}, 413, "4001 characters"),
    ("/sdapi/v1/txt2img", {**TXT, "negative_prompt": "x" * 4001}, 413, "negative_prompt"),
    ("/sdapi/v1/txt2img", {**TXT, "sampler_name": "Heun"}, 400, "Heun"),
    ("/sdapi/v1/txt2img", {**TXT, "restore_faces": True}, 400, "restore_faces"),
    ("/sdapi/v1/txt2img", {**TXT, "save_images": True}, 400, "save_images"),
    ("/sdapi/v1/txt2img", {**TXT, "override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, 404, "not loaded"),
    ("/sdapi/v1/txt2img", {**TXT, "steps": "many"}, 422, "steps"),
    ("/sdapi/v1/img2img", {**TXT}, 400, "init_images is empty"),
    ("/sdapi/v1/img2img", {**TXT, "init_images": ["not base64!"]}, 400, "not valid base64"),
    ("/sdapi/v1/img2img", {**TXT, "init_images": [base64.b64encode(b"hello").decode()]}, 400, "not a readable"),
    ("/sdapi/v1/img2img", {**TXT, "init_images": [png_b64(fmt="GIF")]}, 400, "not a readable"),
    ("/sdapi/v1/img2img", {**TXT, "init_images": [png_b64((2000, 2000))]}, 413, "2000x2000"),
    ("/sdapi/v1/img2img", {**TXT, "init_images": [png_b64()], "denoising_strength": 1.5}, 400, "denoising_strength"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x64", "response_format": "url"}, 400, "b64_json"),
    ("/v1/images/generations", {"prompt": "x", "size": "big"}, 400, "WIDTHxHEIGHT"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x64", "n": 20}, 400, "20 images"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x64", "model": "dall-e-3"}, 404, "dall-e-3"),
    ("/v1/images/generations", {"size": "64x64"}, 422, "prompt"),
])
def test_each_limit_and_bad_input_is_a_json_4xx(client_for, path, body, status, words):
    client, pipe = client_for()
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    payload = r.json()
    message = payload["error"]["message"] if path.startswith("/v1/") else payload["detail"]
    assert words in message and "Traceback" not in r.text
    assert pipe.calls == []


@pytest.mark.parametrize("side,words", [(4000, "4000x4000"), (20000, "decompression bomb")])
def test_decompression_bomb_is_refused_from_its_header(side, words):
    # a 1-bit PNG of side x side is a few kB compressed: refused before its pixels are expanded
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 200_000
    from sdrt.serve.limits import RequestRejected

    with pytest.raises(RequestRejected, match=words) as e:
        Limits().decode_image(base64.b64encode(buffer.getvalue()).decode(), "init_images[0]")
    assert e.value.status == 413


def test_body_over_the_limit_is_413(client_for):
    client, pipe = client_for(limits=Limits(max_body_bytes=1000))
    r = client.post("/sdapi/v1/txt2img", json={**TXT, "prompt": "x" * 2000})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", content=b"x" * 2000, headers={"content-type": "application/json",
                                                                        "content-length": "10"})
    assert r.status_code in (400, 413, 422)
    assert pipe.calls == []


def test_api_key_is_required_when_configured(client_for):
    client, pipe = client_for(api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = client.post("/sdapi/v1/txt2img", json=TXT, headers=headers)
        assert r.status_code == 401, headers
        assert client.get("/metrics", headers=headers).status_code == 401
    assert client.post("/v1/images/generations", json={"prompt": "x"}).json()["error"]["code"] == 401
    assert pipe.calls == []
    assert client.post("/sdapi/v1/txt2img", json=TXT, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert client.post("/sdapi/v1/txt2img", json=TXT, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    # the page and the probes stay open
    assert client.get("/").status_code == 200 and client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["ready"] is True


def test_non_loopback_bind_needs_a_key_or_insecure():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    with pytest.raises(SdrtError, match="--api-key"):
        check_exposure("0.0.0.0", None, False)
    check_exposure("0.0.0.0", "key", False)
    check_exposure("0.0.0.0", None, True)
    check_exposure("127.0.0.1", None, False)


def test_cli_refuses_open_bind_without_key(capsys, tmp_path):
    from sdrt.cli import main

    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_cli_refuses_a_folder_that_is_not_a_model(capsys, tmp_path):
    from sdrt.cli import main

    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "no sdrt.json" in capsys.readouterr().err


def test_cors_is_off_unless_configured(client_for):
    client, _ = client_for()
    r = client.options("/sdapi/v1/txt2img", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    client, _ = client_for(cors=("http://ok.example",))
    r = client.options("/sdapi/v1/txt2img", headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "POST"})
    assert r.headers.get("access-control-allow-origin") == "http://ok.example"


class BrokenPipe(FakePipe):
    def __call__(self, *args, **kwargs):
        raise RuntimeError("secret internals")


def test_internal_error_is_json_500_without_traceback(client_for):
    client, _ = client_for(pipe=BrokenPipe())
    r = client.post("/sdapi/v1/txt2img", json=TXT)
    assert r.status_code == 500
    assert "secret internals" not in r.text and "Traceback" not in r.text and "internal error" in r.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json=TXT).status_code == 500  # the worker survived


def test_metrics_count_requests_images_and_errors(client_for):
    client, _ = client_for()
    client.post("/sdapi/v1/txt2img", json={**TXT, "batch_size": 2})
    client.post("/sdapi/v1/txt2img", json={**TXT, "steps": 999})
    text = client.get("/metrics").text
    assert 'sdrt_requests_total{route="/sdapi/v1/txt2img",status="200"} 1.0' in text
    assert 'sdrt_errors_total{reason="400"} 1.0' in text
    assert 'sdrt_images_total{model="fake"} 2.0' in text
    assert 'sdrt_queue_depth{model="fake"} 0.0' in text
    assert 'sdrt_request_latency_seconds_count{route="/sdapi/v1/txt2img"} 2.0' in text


def test_page_uses_no_internet_assets(client_for):
    client, _ = client_for()
    page = client.get("/").text
    assert "/sdapi/v1/txt2img" in page and "<textarea" in page
    assert "http://" not in page and "https://" not in page


def test_serve_never_imports_torch():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import sdrt.serve.app, sdrt.serve.commands_serve, sdrt.cli
        sdrt.cli.build_parser()
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
