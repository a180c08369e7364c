"""Single-file checkpoints (the original LDM layout, written here from the presets' folders): the architecture
and its configs found from the keys, the weights converted exactly, the export's graphs equal to the folder's
and the same image; .ckpt only with --unsafe-pickle; one line for a file no architecture fits; Hugging Face
cache ids resolved offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sdrt.errors import SdrtError
from tests.export.ldm_layout import write_single_file

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def single_files(preset_source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    cache: dict[str, Path] = {}

    def get(preset: str, **extra) -> Path:
        key = preset + ("-v" if extra else "")
        if key not in cache:
            cache[key] = write_single_file(preset_source(preset), folder / f"{key}.safetensors", extra=extra or None)
        return cache[key]

    return get


@pytest.mark.parametrize("preset, class_name, prediction", [
    ("tiny", "StableDiffusionPipeline", "epsilon"),
    ("tiny-inpaint", "StableDiffusionInpaintPipeline", "epsilon"),
    ("tiny-sd21", "StableDiffusionPipeline", "v_prediction"),  # the file carries the v_pred marker
    ("tiny-sdxl", "StableDiffusionXLPipeline", "epsilon"),
    ("tiny-sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", "epsilon"),
])
def test_architecture_configs_and_weights(single_files, preset_source, preset, class_name, prediction) -> None:
    from sdrt.export import source

    extra = {"v_pred": np.zeros(0, np.float32)} if preset == "tiny-sd21" else {}
    src = source.load(str(single_files(preset, **extra)))
    folder = source.load(str(preset_source(preset)))
    assert src.kind == "single_file" and src.class_name == class_name and src.family.name == folder.family.name
    assert src.config_preset == (preset if preset != "tiny-inpaint" else "tiny")  # the inpainting UNet: tiny + 9 channels
    assert src.scheduler_config["prediction_type"] == prediction
    for name in folder.modules:  # a folder's modules load on use
        want, got = folder.module(name).state_dict(), src.module(name).state_dict()
        assert set(want) == set(got), name
        assert all(torch.equal(want[k], got[k]) for k in want), name


def test_prediction_type_override_and_the_sd2_test_run(single_files) -> None:
    from sdrt.export import source
    from sdrt.export.single_file import v_prediction_test

    src = source.load(str(single_files("tiny-sd21")), prediction_type="v_prediction")
    assert src.scheduler_config["prediction_type"] == "v_prediction"

    class Unet(torch.nn.Module):  # what a trained model answers at t = 999 on a constant input
        def __init__(self, factor: float):
            super().__init__()
            self.factor = factor
            self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()

        def forward(self, x, t, encoder_hidden_states):
            return type("O", (), {"sample": x * self.factor})()

    assert v_prediction_test(Unet(-8.0)) and not v_prediction_test(Unet(1.0))


def test_single_file_exports_the_folders_graphs_and_image(single_files, tiny_onnx, tmp_path) -> None:
    import onnxruntime as ort

    from sdrt.export.exporter import export_model
    from sdrt.manifest import Manifest
    from sdrt.runtime import Pipeline

    out = export_model(str(single_files("tiny")), tmp_path / "onnx", log=lambda line: None)
    manifest = Manifest.load(out)
    assert manifest.data["source"]["kind"] == "single_file" and manifest.data["source"]["config"] == "tiny"
    rng = np.random.default_rng(0)
    feeds = {"text_encoder": {"input_ids": rng.integers(0, 49408, (2, 77)).astype(np.int32)},
             "unet": {"sample": rng.standard_normal((2, 4, 16, 24), dtype=np.float32),
                      "timestep": np.array([500, 20], np.float32),
                      "encoder_hidden_states": rng.standard_normal((2, 154, 32), dtype=np.float32)},
             "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, 16, 16), dtype=np.float32)},
             "vae_encoder": {"sample": rng.standard_normal((1, 3, 32, 32), dtype=np.float32)}}
    for component, inputs in feeds.items():
        got = ort.InferenceSession(str(out / component / "model.onnx")).run(None, inputs)[0]
        want = ort.InferenceSession(str(tiny_onnx / component / "model.onnx")).run(None, inputs)[0]
        worst = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-6)))
        assert worst <= 1e-6, (component, worst)
    call = dict(num_inference_steps=3, height=64, width=64, seed=5, output_type="np")
    images = []
    for folder in (out, tiny_onnx):
        pipe = Pipeline.load(folder, backend="ort-cpu")
        images.append(pipe("a lighthouse", **call).images)
        pipe.close()
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    from sdrt.reference import load_reference
    from sdrt.runtime.images import psnr

    from sdrt.reference import TorchReplay

    reference = load_reference(out)("a lighthouse", num_inference_steps=3, height=64, width=64, seed=5).images
    pipe = Pipeline.load(out, backend="ort-cpu")
    replayed = pipe("a lighthouse", num_inference_steps=3, height=64, width=64, generator=TorchReplay(5),
                    output_type="np").images
    pipe.close()
    assert psnr(reference, replayed) >= 40.0  # the reference converts the file again, as export did


def test_a_file_no_architecture_fits_says_what_it_found(tmp_path) -> None:
    from safetensors.numpy import save_file

    from sdrt.export import source

    save_file({"lora_unet_down.weight": np.zeros(2, np.float32)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(SdrtError, match="keys match no architecture sdrt reads \\(found lora_unet_down.weight"):
        source.load(str(tmp_path / "lora.safetensors"))


def test_known_family_unknown_sizes(single_files, tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    from sdrt.export import source

    tensors = load_file(str(single_files("tiny")))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    tensors[key] = np.zeros((48, *tensors[key].shape[1:]), np.float32)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(SdrtError, match="SD 1.x checkpoint of an architecture sdrt has no config for \\(found: UNet 48"):
        source.load(str(tmp_path / "odd.safetensors"))


def test_ckpt_needs_unsafe_pickle(single_files, tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    from sdrt.cli import main
    from sdrt.export import source

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(single_files("tiny"))), "global_step": 1}, ckpt)
    code = main(["export", "--model", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is a pickle (.ckpt): reading one can run any code" in err and "--unsafe-pickle" in err
    assert not (tmp_path / "out").exists()
    src = source.load(str(ckpt), unsafe_pickle=True)
    assert src.config_preset == "tiny" and src.kind == "single_file"


def test_hugging_face_cache_ids(tiny_src, tmp_path, monkeypatch) -> None:
    from sdrt.export import source

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SdrtError, match=f"someorg/tiny is not in the Hugging Face cache \\({tmp_path}/models--someorg--tiny"):
        source.resolve("someorg/tiny")
    repo = tmp_path / "models--someorg--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    os.symlink(tiny_src, repo / "snapshots" / "abc123")
    (repo / "refs" / "main").write_text("abc123")
    assert source.resolve("someorg/tiny") == ("folder", str(repo / "snapshots" / "abc123"))


def test_the_export_never_asks_a_hub(single_files, monkeypatch) -> None:
    """Every download entry point raises: the single-file path reads only local files."""
    import huggingface_hub

    from sdrt.export import source

    def refuse(*args, **kwargs):
        raise AssertionError(f"a hub was asked: {args} {kwargs}")

    for name in ("hf_hub_download", "snapshot_download", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert source.load(str(single_files("tiny-sdxl"))).config_preset == "tiny-sdxl"


def test_manifest_records_the_single_file(single_files, tmp_path) -> None:
    from sdrt.export.exporter import export_model

    out = export_model(str(single_files("tiny")), tmp_path / "vae", components=["vae_decoder"],
                       log=lambda line: None)
    recorded = json.loads((out / "sdrt.json").read_text())["source"]
    assert recorded["name"] == "tiny.safetensors" and recorded["content_hash"].startswith("sha256:")
