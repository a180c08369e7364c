"""LoRA in `sdrt serve` and `sdrt batch`: AUTOMATIC1111's <lora:NAME:SCALE> prompt tags pick files of
--lora-dir by name (never a path), the worker switches the pipeline's LoRAs before each batch, and
the images equal the Pipeline's own with set_loras. The LoRA file is drawn from the tiny export's
weight map, as in tests/runtime/lora/test_input.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdrt.serve.queueing import GenerationRequest
from tests.runtime.lora.test_input import _kohya_from_map
from tests.serve.conftest import FakePipe, live_server, make_service

webuiapi = pytest.importorskip("webuiapi")

PARAMS = dict(steps=2, width=64, height=64, cfg_scale=7.0, sampler_name="Euler")


@pytest.fixture(scope="module")
def lora_dir(tiny_onnx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    _kohya_from_map(tiny_onnx, folder / "style.safetensors", count=6, rank=4, alpha=4.0, seed=3)
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    return folder


@pytest.fixture(scope="module")
def lora_server(tiny_onnx, lora_dir):
    """A server with its own pipeline (the session's tiny_pipeline must keep no LoRA)."""
    from sdrt.runtime import Pipeline
    from sdrt.serve.app import create_app
    from sdrt.serve.loras import LoraCatalog

    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    service = make_service({"tiny": pipe}, max_batch=4, loras=LoraCatalog(lora_dir))
    with live_server(create_app(service)) as url:
        yield url, service
    service.close()


def reference(pipe, prompt, seed, loras):
    pipe.set_loras(loras)
    out = pipe([prompt], negative_prompt=[""], num_inference_steps=2, guidance_scale=7.0, height=64, width=64,
               seed=seed, scheduler="euler")
    return np.asarray(out.images[0]), out.parameters


def test_lora_tag_equals_set_loras_and_the_next_request_is_the_base_image(lora_server, lora_dir, tiny_onnx):
    from sdrt.runtime import Pipeline

    url, _ = lora_server
    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    styled = api.txt2img(prompt="a lighthouse <lora:style:0.8>", seed=5, **PARAMS)
    plain = api.txt2img(prompt="a lighthouse", seed=5, **PARAMS)

    ref = Pipeline.load(tiny_onnx, backend="ort-cpu")
    with_lora, params = reference(ref, "a lighthouse", 5, [(str(lora_dir / "style.safetensors"), 0.8)])
    base, _ = reference(ref, "a lighthouse", 5, [])
    assert not np.array_equal(with_lora, base)  # the LoRA changes the image
    assert np.array_equal(np.asarray(styled.images[0].convert("RGB")), with_lora)
    assert np.array_equal(np.asarray(plain.images[0].convert("RGB")), base)

    short_hash = params["loras"][0]["hash"]
    assert styled.parameters["prompt"] == "a lighthouse <lora:style:0.8>"  # the request as sent
    assert styled.info["prompt"] == "a lighthouse <lora:style:0.8>"
    assert styled.info["extra_generation_params"]["Lora hashes"] == f"style: {short_hash}"
    infotext = styled.info["infotexts"][0]  # what `sdrt generate` writes (runtime's a1111_parameters)
    assert infotext.startswith("a lighthouse <lora:style:0.8>\n") and f'Lora hashes: "style: {short_hash}"' in infotext
    assert "<lora:" not in plain.info["infotexts"][0] and "Lora hashes" not in plain.info["extra_generation_params"]
    everything = json.dumps([styled.info, styled.parameters, plain.info])
    assert str(lora_dir) not in everything and "safetensors" not in everything  # no server path in answers


def test_bad_lora_names_are_400_json_and_name_no_path(lora_server, lora_dir):
    import httpx

    url, _ = lora_server
    for prompt, words in [("x <lora:../style:1>", "not a LoRA name"), ("x <lora:sub/style>", "not a LoRA name"),
                          (r"x <lora:..\style>", "not a LoRA name"), ("x <lora:.hidden>", "not a LoRA name"),
                          ("x <lora:nope:0.5>", "no LoRA named 'nope'"), ("x <lora:style:lots>", "not a number"),
                          ("x <lora:style:inf>", "not finite")]:
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": prompt, **PARAMS}, timeout=60)
        assert r.status_code == 400, (prompt, r.status_code, r.text)
        assert words in r.json()["detail"], (prompt, r.json())
        assert str(lora_dir) not in r.text and "/tmp" not in r.text
    r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x <lora:broken>", **PARAMS}, timeout=60)
    assert r.status_code == 500 and "broken" in r.json()["detail"] and str(lora_dir) not in r.text
    r = httpx.post(f"{url}/v1/images/generations", json={"prompt": "x <lora:nope>", "size": "64x64",
                                                         "response_format": "b64_json"}, timeout=60)
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
    listing = httpx.get(f"{url}/sdapi/v1/loras", timeout=30).json()
    assert [entry["name"] for entry in listing] == ["broken", "style"]
    assert all(entry["path"] is None for entry in listing)


def test_a_server_without_lora_dir_refuses_tags(fake_service):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    service, _ = fake_service()
    client = TestClient(create_app(service))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:style>", "steps": 1, "width": 64, "height": 64})
    assert r.status_code == 400 and "--lora-dir" in r.json()["detail"]
    assert client.get("/sdapi/v1/loras").json() == []


class LoraFake(FakePipe):
    """The fake pipeline, with LoRAs: records every switch and the set each call ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.loras: list[dict] = []
        self.switches: list[list] = []
        self.ran_with: list[list] = []

    def set_loras(self, loras):
        self.switches.append(list(loras))
        self.loras = [{"path": path, "scale": scale} for path, scale in loras]

    def __call__(self, prompt, **kw):
        self.ran_with.append([(lora["path"], lora["scale"]) for lora in self.loras])
        return super().__call__(prompt, **kw)


def test_different_loras_never_share_a_batch_and_switch_only_on_change(fake_service):
    service, pipe = fake_service(pipe=LoraFake(), max_batch=8)
    x, y = (("/l/x.safetensors", 0.8),), (("/l/y.safetensors", 1.0),)

    def req(seed, loras):
        return GenerationRequest(model="fake", prompt="p", width=64, height=64, steps=1, seed=seed, loras=loras)

    pipe.hold.clear()
    first = service.submit(req(1, x))
    assert pipe.entered.wait(10)
    jobs = [service.submit(req(s, loras)) for s, loras in ((2, x), (3, ()), (4, x), (5, y))]
    pipe.hold.set()
    for job in [first, *jobs]:
        job.future.result(30)
    assert [call["seeds"] for call in pipe.calls] == [[1], [2, 4], [3], [5]]  # x+x share; () and y run alone
    assert pipe.ran_with == [list(x), list(x), [], list(y)]
    assert pipe.switches == [list(x), [], list(y)]  # x stayed set for the second batch: no switch


def test_batch_file_with_lora_tags_matches_set_loras(tmp_path, tiny_onnx, lora_dir):
    from PIL import Image

    from sdrt.runtime import Pipeline
    from sdrt.serve import batch

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "a boat <lora:style:0.8>", "seed": 9, "steps": 2, "sampler": "euler",
                                "guidance_scale": 7.0}) + "\n" + json.dumps({"prompt": "a boat", "seed": 9, "steps": 2,
                                                                              "sampler": "euler", "guidance_scale": 7.0}) + "\n")
    items = batch.read_requests(path, model="m", default_size=64, default_steps=2, seed_base=0, lora_dir=lora_dir)
    assert items[0].request.prompt == "a boat" and items[0].request.loras == ((str(lora_dir / "style.safetensors"), 0.8),)
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    out = tmp_path / "out"
    out.mkdir()
    batch.run_local(pipe, items, out, max_batch=4, log=lambda line: None)
    lines = [json.loads(line) for line in (out / batch.RESULTS).read_text().splitlines()]
    assert lines[0]["loras"][0]["name"] == "style" and lines[1]["loras"] == []
    ref = Pipeline.load(tiny_onnx, backend="ort-cpu")
    expected, _ = reference(ref, "a boat", 9, [(str(lora_dir / "style.safetensors"), 0.8)])
    assert np.array_equal(np.asarray(Image.open(out / lines[0]["images"][0]).convert("RGB")), expected)
    base, _ = reference(ref, "a boat", 9, [])
    assert np.array_equal(np.asarray(Image.open(out / lines[1]["images"][0]).convert("RGB")), base)
    with pytest.raises(Exception, match="--lora-dir"):
        batch.read_requests(path, model="m", default_size=64, default_steps=2, seed_base=0)


def test_serve_and_batch_refuse_a_missing_lora_dir_in_one_line(tmp_path, tiny_onnx, capsys):
    from sdrt.cli import main

    assert main(["serve", "--model", str(tiny_onnx), "--lora-dir", str(tmp_path / "none")]) == 2
    assert "--lora-dir" in capsys.readouterr().err
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"prompt": "x <lora:style>"}) + "\n")
    assert main(["batch", str(requests), "--model", str(tiny_onnx), "--out", str(tmp_path / "o"),
                 "--lora-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:1" in err and "style.safetensors does not exist" in err and "Traceback" not in err
