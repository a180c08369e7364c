"""`sdrt preset shapes`: the shipped trained weights, as a diffusers folder diffusers itself loads."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sdrt.errors import SdrtError  # noqa: E402
from sdrt.export import shapes_model  # noqa: E402


def test_the_weights_ship_with_the_package_and_are_small():
    folder = shapes_model.weights_folder()
    sizes = {name: (folder / f).stat().st_size for name, f in shapes_model.WEIGHT_FILES.items()}
    assert all(size > 0 for size in sizes.values())
    assert sum(sizes.values()) < 8 * 2**20  # a few MB
    assert (folder / "LICENSE.txt").read_text().startswith("The shapes preset")


def test_diffusers_loads_the_written_folder_with_the_shipped_weights(preset_source):
    import diffusers
    import torch
    from safetensors.torch import load_file

    src = preset_source("shapes")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(src, local_files_only=True, safety_checker=None)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.vae_scale_factor == 4
    shipped = load_file(str(shapes_model.weights_folder() / "unet.safetensors"))
    state = pipe.unet.state_dict()
    assert set(shipped) == set(state)
    name = "conv_in.weight"
    assert torch.equal(state[name], shipped[name].float())
    data = (shapes_model.weights_folder() / "vae.safetensors").read_bytes()
    assert pipe.vae.config.scaling_factor == pytest.approx(float(shapes_model.file_metadata(data)["scaling_factor"]))
    assert pipe.vae.config.scaling_factor != 1.0


def test_missing_weights_are_one_line_naming_the_fix(monkeypatch, tmp_path):
    from sdrt.export.presets import build_components

    monkeypatch.setattr(shapes_model, "weights_folder", lambda: tmp_path)
    with pytest.raises(SdrtError, match="weights are missing.*train_shapes"):
        build_components("shapes")


def test_the_training_script_runs_and_checkpoints(tmp_path):
    """A smoke run (a few steps): it writes a loadable preset, its log and its loss curve."""
    from safetensors.torch import load_file

    from sdrt.export import train_shapes

    out = tmp_path / "run"
    assert train_shapes.main(["--out", str(out), "--images", "64", "--vae-steps", "3", "--vae-batch", "4",
                              "--unet-steps", "4", "--unet-batch", "4", "--checkpoint-every", "2"]) == 0
    for name in (*shapes_model.WEIGHT_FILES.values(), "training.json", "loss.csv", "loss.png"):
        assert (out / name).is_file(), name
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == "phase,step,loss,seconds" and any(line.startswith("unet,") for line in lines)
    weights = load_file(str(out / "unet.safetensors"))
    assert all(v.dtype.itemsize == 2 and np.isfinite(v.float().numpy()).all() for v in weights.values())
