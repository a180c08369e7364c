"""Malformed sdrt.json is one line naming the JSON path; --verify / verify=True name a changed weight file."""

from __future__ import annotations

import json
import shutil

import pytest

from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest


@pytest.fixture
def folder(tiny_onnx, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_onnx, copy)
    return copy


def _edit(folder, change):
    path = folder / "sdrt.json"
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))


def _drop(section, key):
    def change(data):
        if isinstance(key, tuple):
            data[section][key[0]].pop(key[1])
        else:
            data[section].pop(key)
        return data
    return change


@pytest.mark.parametrize("change, where", [
    (lambda d: [d], "holds a JSON list"),
    (_drop("pipeline", "vae_scale_factor"), "malformed at pipeline.vae_scale_factor: Field required"),
    (_drop("components", ("unet", "file")), "malformed at components.unet.file: Field required"),
    (lambda d: {**d, "sizes": {**d["sizes"], "max_latent": "big"}}, "malformed at sizes.max_latent"),
    (lambda d: {**d, "components": {}}, "malformed at components"),
])
@pytest.mark.parametrize("command", ["generate", "info"])
def test_malformed_manifest_is_one_line(folder, tmp_path, capsys, change, where, command):
    _edit(folder, change)
    argv = (["generate", "--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "o"), "--quiet"]
            if command == "generate" else ["info", str(folder)])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert where in err and err.count("\n") == 1 and "Traceback" not in err


def test_verify_names_a_weight_overwritten_with_the_same_size(folder, capsys):
    assert main(["info", str(folder), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    weights = folder / "unet" / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, one byte different
    weights.write_bytes(bytes(data))
    assert main(["info", str(folder)]) == 0  # without --verify: no weights are read
    capsys.readouterr()
    assert main(["info", str(folder), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "unet/model.onnx changed since export" in err and err.count("\n") == 1
    from sdrt.runtime import Pipeline

    with pytest.raises(SdrtError, match="unet/model.onnx changed since export"):
        Pipeline.load(folder, backend="ort-cpu", verify=True)


def test_verify_without_recorded_hash(folder):
    _edit(folder, lambda d: {**d, "components": {k: {**v, "sha256": None} for k, v in d["components"].items()}})
    with pytest.raises(SdrtError, match="no sha256 is recorded"):
        Manifest.load(folder).verify()


def test_info_says_max_rel_error_like_export(folder, capsys):
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "max rel error" in out and "max abs error" not in out
