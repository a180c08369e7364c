"""Every bad input of `sdrt export`: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdrt.cli import main
from tests.export._fakes import leftovers


def run_export(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["export", *args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sdrt: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_source_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code, err = run_export(capsys, "--model", str(tmp_path / "nope"), "--out", str(out))
    assert_one_line_error(code, err, "does not exist")
    assert leftovers(tmp_path, "out") == []


def test_unknown_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_export(capsys, "--model", "sd99", "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "unknown preset 'sd99'", "tiny")
    assert leftovers(tmp_path, "out") == []


def test_not_a_diffusers_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"\0" * 16)
    code, err = run_export(capsys, "--model", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "not a diffusers pipeline folder", "model_index.json")
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("class_name, label", [("FluxPipeline", "Flux"),
                                               ("QwenImagePipeline", "Qwen-Image"),
                                               ("WuerstchenPipeline", "WuerstchenPipeline")])
def test_unsupported_pipeline_type(tmp_path: Path, capsys: pytest.CaptureFixture, class_name: str, label: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    code, err = run_export(capsys, "--model", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, label, "not supported yet")
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("component, weights", [("unet", "diffusion_pytorch_model.safetensors"),
                                                ("text_encoder", "model.safetensors")])
def test_missing_component_weights(tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                   component: str, weights: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_src, src)
    (src / component / weights).unlink()
    code, err = run_export(capsys, "--model", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, f"{component} weights missing", str(src / component))
    assert leftovers(tmp_path, "out") == []


def test_out_exists_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_export(capsys, "--model", "tiny", "--out", str(out))
    assert_one_line_error(code, err, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    assert leftovers(tmp_path, "out") == ["out"]


@pytest.mark.parametrize("exporter, opset", [("dynamo", 17), ("dynamo", 24), ("torchscript", 23)])
def test_opset_the_exporter_cannot_produce(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           exporter: str, opset: int) -> None:
    code, err = run_export(capsys, "--model", "tiny", "--out", str(tmp_path / "out"),
                           "--exporter", exporter, "--opset", str(opset))
    assert_one_line_error(code, err, f"cannot produce opset {opset}", "--opset between")
    assert leftovers(tmp_path, "out") == []


def test_corrupt_component_weights(tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_src, src)
    weights = src / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, err = run_export(capsys, "--model", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "cannot load unet from", str(src / "unet"))
    assert leftovers(tmp_path, "out") == []
