"""Optimum ONNX folders as they are (fixtures written by optimum-cli, tests/fixtures/optimum/VERSIONS.txt): read
with no sdrt.json, the manifest inferred and what was assumed said, images equal to diffusers on the same
weights (SD 1.x and SDXL), long prompts, serve, and a changed folder seen again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdrt.reference import TorchReplay
from sdrt.runtime.images import psnr

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "optimum"
CALL = dict(num_inference_steps=3, height=32, width=32, guidance_scale=6.0, output_type="np")


@pytest.fixture
def folder(tmp_path):
    def copy(kind: str) -> Path:
        out = tmp_path / kind
        shutil.copytree(FIXTURES / kind, out)
        return out

    return copy


def diffusers_images(kind: str, prompt: str, **call) -> np.ndarray:
    """diffusers on the weights the Optimum folder was exported from (its tokenizers from the Optimum folder)."""
    import diffusers
    import torch

    source = Path(call.pop("source"))
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (FIXTURES / kind / tokenizer).is_dir():
            shutil.copytree(FIXTURES / kind / tokenizer, source / tokenizer)
    cls = diffusers.StableDiffusionPipeline if kind == "sd" else diffusers.StableDiffusionXLPipeline
    pipe = cls.from_pretrained(source, local_files_only=True, **({"safety_checker": None} if kind == "sd" else {}))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, generator=torch.Generator().manual_seed(call.pop("seed")), **call)
    return np.asarray(out.images, dtype=np.float32)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_an_optimum_folder_generates_what_diffusers_does(kind, folder, tmp_path) -> None:
    pytest.importorskip("diffusers")
    from sdrt.runtime import Pipeline

    path = folder(kind)
    assert not (path / "sdrt.json").exists()
    pipe = Pipeline.load(path, backend="ort-cpu")
    try:
        assert pipe.family == kind and pipe.manifest.data["source"]["kind"] == "optimum"
        assert pipe.manifest.pipeline["assumed"] and "not probed" in pipe.manifest.data["sizes"]["rule"]
        ours = pipe("a red bicycle", generator=TorchReplay(3), scheduler="ddim" if kind == "sd" else None, **CALL).images
    finally:
        pipe.close()
    source = tmp_path / "source"
    shutil.copytree(FIXTURES / f"{kind}-source", source)
    theirs = diffusers_images(kind, "a red bicycle", source=source, seed=3, **{
        k: v for k, v in CALL.items() if k != "output_type"}, output_type="np")
    assert psnr(ours, theirs) >= 40.0
    assert not (path / "sdrt.json").exists()  # the folder itself is left as it was (the view is under engines/)


def test_long_prompts_and_the_view_is_made_again_after_a_change(folder) -> None:
    from sdrt.runtime import Pipeline

    path = folder("sd")
    pipe = Pipeline.load(path, backend="ort-cpu")
    long = "a red bicycle, " * 30
    out = pipe(long, prompt_syntax="a1111", seed=1, **CALL)
    assert out.images.shape == (1, 32, 32, 3)
    first = json.loads((path / "engines" / "sdrt-view" / "sdrt.json").read_text())["source"]["fingerprint"]
    pipe.close()
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "steps_offset": 0}))
    again = Pipeline.load(path, backend="ort-cpu")
    assert again.manifest.data["source"]["fingerprint"] != first
    assert again.scheduler_config["steps_offset"] == 0
    again.close()


def test_serve_takes_an_optimum_folder(folder) -> None:
    from sdrt.serve.setup import model_folders

    path = folder("sd")
    assert model_folders([f"opt={path}"]) == {"opt": path}


def test_an_incomplete_folder_is_one_line(folder) -> None:
    from sdrt.errors import SdrtError
    from sdrt.runtime import Pipeline

    path = folder("sd")
    shutil.rmtree(path / "vae_decoder")
    with pytest.raises(SdrtError, match="vae_decoder"):
        Pipeline.load(path, backend="ort-cpu")


def test_openvino_reads_the_view_too(folder) -> None:
    pytest.importorskip("openvino")
    from sdrt.runtime import Pipeline

    path = folder("sdxl")
    images = {}
    for backend in ("ort-cpu", "openvino"):
        pipe = Pipeline.load(path, backend=backend)
        images[backend] = pipe("a red bicycle", seed=1, **CALL).images
        pipe.close()
    assert psnr(images["openvino"], images["ort-cpu"]) >= 40.0
