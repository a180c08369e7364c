"""sdrt.json reading: one-line errors, the size rule."""

import json

import pytest

from sdrt.errors import SdrtError
from sdrt.manifest import Manifest, SizeRule, write_manifest


def _manifest(tmp_path, **over):
    data = {
        "format": "sdrt-onnx", "format_version": 1,
        "pipeline": {"latent_channels": 4, "unet_in_channels": 4, "text_hidden_size": 32,
                     "vae_scale_factor": 8, "token_length": 77, "sample_size": 8},
        "sizes": {"latent_multiple": 8, "min_latent": 8, "max_latent": 128},
        "components": {"unet": {"file": "unet/model.onnx", "precision": "fp32"}},
    }
    data.update(over)
    write_manifest(tmp_path, data)
    return tmp_path


def test_load_and_values(tmp_path):
    m = Manifest.load(_manifest(tmp_path))
    assert m.values == {"C": 4, "Cin": 4, "S": 77, "D": 32, "f": 8}
    assert m.default_image_size == 64
    assert not (tmp_path / "sdrt.json.tmp").exists()


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(SdrtError, match="does not exist"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(SdrtError, match="no sdrt.json"):
        Manifest.load(tmp_path)


def test_corrupt_and_foreign_manifest(tmp_path):
    (tmp_path / "sdrt.json").write_text("{not json")
    with pytest.raises(SdrtError, match="unreadable"):
        Manifest.load(tmp_path)
    (tmp_path / "sdrt.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SdrtError, match="not an sdrt manifest"):
        Manifest.load(tmp_path)


def test_missing_model_file_is_named(tmp_path):
    m = Manifest.load(_manifest(tmp_path))
    with pytest.raises(SdrtError, match=r"unet/model.onnx is missing"):
        m.onnx_path("unet")
    with pytest.raises(SdrtError, match="has no vae_decoder"):
        m.onnx_path("vae_decoder")


@pytest.mark.parametrize("h,w,msg", [
    (500, 512, "height 500 is not a multiple of 64"),
    (512, 520, "width 520 is not a multiple of 64"),
    (32, 64, "height 32 is not a multiple of 64"),
    (2048, 64, "outside the sizes"),
    (0, 64, "not a positive"),
])
def test_size_rule_errors(h, w, msg):
    with pytest.raises(SdrtError, match=msg):
        SizeRule(8, 8, 128, 8).check_image_size(h, w)


def test_size_rule_accepts_non_square():
    SizeRule(8, 8, 128, 8).check_image_size(512, 768)
    SizeRule(1, 1, 64, 8).check_image_size(8, 24)


def _with_files(tmp_path, sha256=None):
    """A manifest whose unet has a graph and external data (and, when given, a recorded sha256)."""
    entry = {"file": "unet/model.onnx", "precision": "fp32", "external_data": True}
    if sha256 is not None:
        entry["sha256"] = sha256
    (tmp_path / "unet").mkdir(exist_ok=True)
    (tmp_path / "unet" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "unet" / "model.onnx.data").write_bytes(b"weights")
    return _manifest(tmp_path, components={"unet": entry})


def test_component_hash_is_the_recorded_sha256(tmp_path):
    m = Manifest.load(_with_files(tmp_path, sha256="ab" * 32))
    assert m.component_hash("unet") == "ab" * 32  # the files are not read: export already hashed them
    with pytest.raises(SdrtError, match="has no vae_decoder"):
        m.component_hash("vae_decoder")


def test_component_hash_without_a_recorded_one_is_computed_from_content(tmp_path):
    """An older manifest: the hash export would record (graph, then .data), never an mtime."""
    import hashlib
    import os

    folder = _with_files(tmp_path)
    first = Manifest.load(folder).component_hash("unet")
    assert first == hashlib.sha256(b"graph" + b"weights").hexdigest()
    data = folder / "unet" / "model.onnx.data"
    os.utime(data, ns=(1, 1))  # touched (copied, restored from a backup): the same content, the same hash
    assert Manifest.load(folder).component_hash("unet") == first
    data.write_bytes(b"weightz")  # new weights, same size: another hash
    assert Manifest.load(folder).component_hash("unet") != first
    (folder / "unet" / "model.onnx").write_bytes(b"graph2")
    assert len({first, Manifest.load(folder).component_hash("unet")}) == 2


def test_component_hash_is_computed_once_per_manifest(tmp_path, monkeypatch):
    from sdrt import manifest_schema

    m = Manifest.load(_with_files(tmp_path))
    calls = []
    real = manifest_schema.component_sha256
    monkeypatch.setattr(manifest_schema, "component_sha256", lambda paths: calls.append(paths) or real(paths))
    assert m.component_hash("unet") == m.component_hash("unet")
    assert len(calls) == 1


def test_engines_dir_is_named_in_one_place(tmp_path):
    from sdrt.manifest import ENGINES_DIR, engines_dir

    m = Manifest.load(_manifest(tmp_path))
    assert m.engines_dir() == tmp_path / ENGINES_DIR == engines_dir(tmp_path) == tmp_path / "engines"
    assert m.engines_dir("ort-cpu") == tmp_path / "engines" / "ort-cpu" == engines_dir(tmp_path, "ort-cpu")
