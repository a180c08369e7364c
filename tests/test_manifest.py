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
