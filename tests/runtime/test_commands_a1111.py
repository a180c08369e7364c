"""`sdrt generate`'s AUTOMATIC1111 flags: --prompt-syntax, --hires-*, --subseed*, --seed-resize-from, --embedding;
each image equal to the Python call with the same arguments; bad combinations one line; and `sdrt serve
--embeddings-dir` naming embeddings in A1111 prompts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main

COMMON = ["--steps", "2", "--seed", "3", "--height", "32", "--width", "32", "--backend", "ort-cpu", "--quiet",
          "--scheduler", "ddim"]
CALL = dict(num_inference_steps=2, seed=3, height=32, width=32, scheduler="ddim")


def run(tiny_onnx, out, *flags, prompt="a (red:1.4) boat BREAK sea") -> tuple[int, list]:
    code = main(["generate", "--model", str(tiny_onnx), "--prompt", prompt, "--out", str(out), *COMMON, *flags])
    return code, sorted(out.glob("*.png"))


def test_prompt_syntax_and_variation(tiny_onnx, pipelines, tmp_path) -> None:
    code, files = run(tiny_onnx, tmp_path / "a", "--prompt-syntax", "a1111", "--subseed", "9",
                      "--subseed-strength", "0.3", "--seed-resize-from", "24x24")
    assert code == 0 and len(files) == 1
    text = Image.open(files[0]).info["parameters"]
    assert "Variation seed: 9, Variation seed strength: 0.3, Seed resize from: 24x24" in text
    want = pipelines("tiny")("a (red:1.4) boat BREAK sea", prompt_syntax="a1111", subseed=9, subseed_strength=0.3,
                             seed_resize_from_h=24, seed_resize_from_w=24, **CALL).images[0]
    assert np.array_equal(np.asarray(Image.open(files[0]).convert("RGB")), np.asarray(want))


def test_hires_flags(tiny_onnx, pipelines, tmp_path) -> None:
    from sdrt.runtime.hires import HiresFix, generate

    code, files = run(tiny_onnx, tmp_path / "h", "--hires-scale", "2", "--hires-steps", "1", "--hires-denoising",
                      "0.5", "--hires-upscaler", "Latent (bicubic)", prompt="a boat")
    assert code == 0 and Image.open(files[0]).size == (64, 64)
    assert "Hires upscale: 2, Hires steps: 1, Hires upscaler: Latent (bicubic)" in Image.open(files[0]).info["parameters"]
    want = generate(pipelines("tiny"), "a boat", hires=HiresFix(scale=2, steps=1, denoising_strength=0.5,
                                                                upscaler="Latent (bicubic)"), **CALL).images[0]
    assert np.array_equal(np.asarray(Image.open(files[0]).convert("RGB")), np.asarray(want))


@pytest.mark.parametrize("flags, words", [
    (["--hires-steps", "3"], "--hires-steps belongs to the hires fix: add --hires-scale"),
    (["--subseed", "4"], "--subseed needs --subseed-strength"),
    (["--hires-scale", "2", "--image", "x.png"], "the hires fix follows txt2img"),
    (["--hires-resize", "big"], "is not WIDTHxHEIGHT"),
    (["--embedding", "/nope.safetensors"], "does not exist"),
])
def test_bad_flags_are_one_line(tiny_onnx, tmp_path, capsys, flags, words) -> None:
    try:
        code, _ = run(tiny_onnx, tmp_path / "bad", *flags, prompt="a boat")
    except SystemExit as e:  # argparse's own type errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_embeddings_in_generate_and_serve(tiny_onnx, tmp_path) -> None:
    from fastapi.testclient import TestClient
    from safetensors.numpy import save_file

    from sdrt.runtime import Pipeline
    from sdrt.runtime.textual_inversion import files_in
    from sdrt.serve.app import create_app
    from tests.serve.conftest import make_service

    folder = tmp_path / "embeddings"
    folder.mkdir()
    vectors = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    save_file({"emb_params": vectors}, str(folder / "shinycat.safetensors"))
    code, files = run(tiny_onnx, tmp_path / "g", "--embeddings-dir", str(folder), "--prompt-syntax", "a1111",
                      prompt="a (shinycat:1.1)")
    assert code == 0 and "TI hashes: \"shinycat: " in Image.open(files[0]).info["parameters"]
    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    for path in files_in(folder):
        pipe.load_textual_inversion(path)
    service = make_service({"tiny": pipe})
    try:
        client = TestClient(create_app(service))
        listed = client.get("/sdapi/v1/embeddings").json()
        assert listed["loaded"]["shinycat"]["vectors"] == 2 and listed["loaded"]["shinycat"]["shape"] == 32
        body = {"steps": 2, "seed": 3, "width": 32, "height": 32}
        named = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a shinycat"}).json()
        plain = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a cat"}).json()
        assert "TI hashes" in named["info"] and "TI hashes" not in plain["info"]
    finally:
        service.close()
        pipe.close()
