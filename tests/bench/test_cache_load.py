"""First vs cached openvino load: the scratch folder leaves the export alone, the ratio, a real tiny run."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace

import pytest

from sdrt.bench import cache_load


def _load(total, unet, cached):
    return {"load_s": total, "components": {"unet": {"seconds": unet, "from_cache": cached},
                                            "vae_decoder": {"seconds": 1.0, "from_cache": cached}},
            "peak_mb": 100.0}


def test_summary_ratio_whole_and_engines_only():
    r = cache_load.summarize(_load(30.0, 19.0, False), [_load(10.0, 3.0, True), _load(12.0, 5.0, True)])
    assert r["ratio"] == pytest.approx(11.0 / 30.0, abs=1e-3) and not r["meets_one_third"]
    assert r["engines_ratio"] == pytest.approx(5.0 / 20.0) and r["all_warm_components_from_cache"]
    assert not cache_load.summarize(_load(30.0, 19.0, False), [_load(5.0, 1.0, False)])["all_warm_components_from_cache"]
    with pytest.raises(ValueError):
        cache_load.summarize(_load(1.0, 1.0, False), [])


def test_scratch_folder_links_the_export_without_its_engines(tmp_path):
    export = tmp_path / "export"
    (export / "unet").mkdir(parents=True)
    (export / "unet" / "model.onnx").write_bytes(b"x" * 10)
    (export / "engines" / "openvino").mkdir(parents=True)
    (export / "sdrt.json").write_text("{}")
    scratch = cache_load.scratch_folder(export, tmp_path)
    assert sorted(p.name for p in scratch.iterdir()) == ["sdrt.json", "unet"]
    assert (scratch / "unet").is_symlink() and (scratch / "unet" / "model.onnx").read_bytes() == b"x" * 10
    assert cache_load.preread(export) == 12  # engines/ is not read


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed (sdrt[openvino])")
def test_tiny_first_and_cached_load_in_fresh_processes(tiny_onnx, tmp_path):
    before = sorted(p.name for p in (tiny_onnx / "engines").rglob("*")) if (tiny_onnx / "engines").exists() else []
    out = cache_load.run(Namespace(model=str(tiny_onnx), onnx=None, precisions="f32", warm=1, out=str(tmp_path / "r"),
                                   scratch=str(tmp_path), timeout=300.0))
    result = json.loads((out / "result.json").read_text())["precisions"]["f32"]
    assert result["first"]["components"]["unet"]["from_cache"] is False
    assert result["all_warm_components_from_cache"]  # the second process imported every component
    assert "| f32 |" in (out / "result.md").read_text()
    after = sorted(p.name for p in (tiny_onnx / "engines").rglob("*")) if (tiny_onnx / "engines").exists() else []
    assert after == before and not list(tmp_path.glob("sdrt-cache-load-*"))  # export untouched, scratch removed
