"""Engine cache keys and the store: a stale or foreign engine is never chosen.

The ONNX part of the key is the manifest's component hash (tests/test_manifest.py covers
`Manifest.component_hash`; tests/engines/test_trt_build.py that a touched file keeps its engine)."""

from __future__ import annotations

import pytest

from sdrt.engines import trt_cache as tc
from sdrt.engines.tensorrt import no_engine_error
from sdrt.spec import model_spec
from sdrt.engines.trt_profiles import DimRange

STATIC = DimRange({"B": 2, "h": 64, "w": 64}, {"B": 2, "h": 64, "w": 64}, {"B": 2, "h": 64, "w": 64})
WIDE = DimRange({"B": 2, "h": 32, "w": 32}, {"B": 2, "h": 64, "w": 64}, {"B": 4, "h": 128, "w": 128})
IDENT = tc.identity("unet", "sha256:aa", "tensorrt 10.8.0", "NVIDIA L4 (sm_89)", "fp16")
BUILD = {"opt_level": None, "workspace_gb": None}
UNET = model_spec("sd").component("unet")


@pytest.mark.parametrize("field, value", [("onnx", "sha256:bb"), ("library", "tensorrt 10.9.0"),
                                          ("target", "NVIDIA H100 (sm_90)"), ("precision", "fp32")])
def test_key_changes_with_every_identity_field(field, value):
    other = {**IDENT, field: value}
    assert tc.cache_key(other, STATIC, BUILD) != tc.cache_key(IDENT, STATIC, BUILD)


def test_key_changes_with_profile_and_build_options_and_is_stable():
    k = tc.cache_key(IDENT, STATIC, BUILD)
    assert k == tc.cache_key(dict(IDENT), STATIC, dict(BUILD)) and k.startswith("unet-")
    assert tc.cache_key(IDENT, WIDE, BUILD) != k
    assert tc.cache_key(IDENT, STATIC, {**BUILD, "opt_level": 5}) != k


def test_write_and_read_entries(tmp_path):
    root = tc.store_root(tmp_path, "tensorrt")
    key = tc.cache_key(IDENT, STATIC, BUILD)
    e = tc.write_entry(root, key, b"PLAN1", IDENT, STATIC, BUILD, {"seconds": 1.0})
    tc.write_entry(root, key, b"PLAN2", IDENT, STATIC, BUILD)  # a rebuild replaces the entry whole
    assert e.engine_file.read_bytes() == b"PLAN2"
    (root / "unet-broken").mkdir()
    (root / "unet-broken" / tc.KEY_FILE).write_text("{not json")
    assert not list(root.glob(".unet-*"))  # no temporary folder left behind
    found = tc.read_entries(root, "unet")
    assert [x.path.name for x in found] == [key] and found[0].profile == STATIC
    assert tc.read_entries(root, "vae_decoder") == []


def _entry(tmp_path, ident, profile, name):
    return tc.write_entry(tmp_path, name, b"PLAN", ident, profile, BUILD)


def test_choose_never_picks_a_stale_engine_and_prefers_the_tightest_profile(tmp_path):
    stale = _entry(tmp_path, {**IDENT, "library": "tensorrt 10.3.0"}, STATIC, "unet-a")
    wide = _entry(tmp_path, IDENT, WIDE, "unet-b")
    static = _entry(tmp_path, IDENT, STATIC, "unet-c")
    entries = [stale, wide, static]
    assert tc.choose(entries, IDENT, {"B": 2, "h": 64, "w": 64}).entry.path == static.path
    assert tc.choose(entries, IDENT, {"B": 4, "h": 100, "w": 40}).entry.path == wide.path
    miss = tc.choose(entries, IDENT, {"B": 8, "h": 64, "w": 64})
    assert miss.entry is None and len(miss.fresh) == 2
    only_stale = tc.choose([stale], IDENT, {"B": 2, "h": 64, "w": 64})
    assert only_stale.entry is None
    assert only_stale.stale[0][1] == ("another TensorRT (tensorrt 10.3.0; here: tensorrt 10.8.0)",)


def test_stale_reasons_name_what_changed():
    reasons = tc.stale_reasons({**IDENT, "onnx": "sha256:zz", "target": "NVIDIA A10 (sm_86)"}, IDENT)
    assert reasons == ["another ONNX export", "another GPU (NVIDIA A10 (sm_86); here: NVIDIA L4 (sm_89))"]


def test_no_engine_messages_name_the_engine_its_range_and_the_build_command(tmp_path):
    folder = tmp_path / "m"
    static = _entry(tmp_path, IDENT, STATIC, "unet-c")
    outside = no_engine_error(folder, "tensorrt", UNET, tc.choose([static], IDENT, {"B": 4, "h": 96, "w": 96}),
                              {"B": 4, "h": 96, "w": 96}, 8)
    text = str(outside)
    assert "no tensorrt engine for unet covers batch 4" in text and "768x768 px" in text
    assert "built: batch 2 (unet batch; 2x per image), 512x512 px" in text
    assert f"sdrt build --model {folder} --backend tensorrt --height 768 --width 768 --batch 2 --components unet" in text
    stale = _entry(tmp_path, {**IDENT, "target": "NVIDIA A10 (sm_86)"}, STATIC, "unet-s")
    text = str(no_engine_error(folder, "tensorrt", UNET, tc.choose([stale], IDENT, {}), None, 8))
    assert "unet-s for unet was built from another GPU" in text and "never loaded" in text and "--force" in text
    none = str(no_engine_error(folder, "tensorrt_rtx", UNET, tc.choose([], IDENT, {}), None, 8))
    assert "no tensorrt_rtx engine for unet in" in none and "`sdrt build --model" in none
    assert "\n" not in text + none
