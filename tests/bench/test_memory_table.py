"""The per-process memory table: cells resume, a cell past its limits is recorded as failed, the table renders."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from sdrt.bench import memory_table as mt
from sdrt.bench.memory import kernel_peak_mb, peak_since, reset_kernel_peak


def _ok(contender: str, size: int, peak: float) -> dict:
    return {"contender": contender, "size": size, "status": "ok", "load_s": 1.0, "call_s": 2.0,
            "text_encoder_s": 0.1, "unet_s": 1.0, "vae_decode_s": 0.5, "rss_after_load_mb": 100.0,
            "load_peak_mb": 120.0, "peak_mb": peak, "peak_source": "VmHWM (kernel)", "sampled_peak_mb": peak,
            "before_vae_peak_mb": peak - 10, "vae_peak_mb": peak, "image_mean": 0.5, "wall_s": 4.0}


def _meta() -> dict:
    return {"model": "tiny", "onnx": "/x", "started": "2026-12-02T00:00:00",
            "machine": {"cpu_model": "Some CPU", "cpu_features": ["avx512_bf16"], "physical_cores": 2,
                        "logical_cores": 2, "memory_gb": 24, "versions": {"openvino": "1"}}}


def test_render_gives_ratios_to_diffusers_and_names_failures():
    cells = [_ok("diffusers-fp32", 256, 600.0), _ok("ort-cpu", 256, 300.0),
             {"contender": "openvino-f32", "size": 256, "status": "failed", "why": "timeout after 5 s"}]
    text = mt.render(_meta(), cells)
    assert "| 256² | 600 | 300 (0.50×) | failed: timeout after 5 s |" in text
    assert "Some CPU" in text and "avx512_bf16" in text  # the CPU and its ISA are recorded


def test_run_skips_finished_cells_and_retries_failed_ones_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr("sdrt.bench.models.onnx_folder", lambda model, onnx=None: Path("/folder"))
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "ort-cpu-128.json").write_text(json.dumps(_ok("ort-cpu", 128, 200.0)))
    (cells / "openvino-f32-128.json").write_text(json.dumps({"contender": "openvino-f32", "size": 128,
                                                              "status": "failed", "why": "x"}))
    ran = []

    def fake_cell(folder, contender, size, record, timeout_s, max_rss_mb):
        ran.append((contender, size))
        result = _ok(contender, size, 100.0)
        record.write_text(json.dumps(result))
        return result

    monkeypatch.setattr(mt, "run_cell", fake_cell)
    args = Namespace(model="tiny", onnx=None, sizes="128", contenders="ort-cpu,openvino-f32", out=str(tmp_path),
                     timeout=10, max_rss_gb=1, retry_failed=False)
    mt.run(args)
    assert ran == []  # both recorded: nothing to do
    mt.run(Namespace(**{**vars(args), "retry_failed": True}))
    assert ran == [("openvino-f32", 128)]
    result = json.loads((tmp_path / "result.json").read_text())
    assert {c["status"] for c in result["cells"]} == {"ok"} and "machine" in result
    assert "| 128² |" in (tmp_path / "result.md").read_text()


@pytest.mark.parametrize("code, timeout, why", [("import time; time.sleep(30)", 1.0, "timeout after 1 s"),
                                                ("raise SystemExit(3)", 30.0, "exit status 3")])
def test_a_cell_that_fails_is_recorded_with_why(tmp_path, monkeypatch, code, timeout, why):
    monkeypatch.setattr(mt, "child_command", lambda *a: [sys.executable, "-c", code])
    record = tmp_path / "cells" / "ort-cpu-64.json"
    record.parent.mkdir()
    result = mt.run_cell(Path("/folder"), "ort-cpu", 64, record, timeout, None)
    assert result["status"] == "failed" and result["why"] == why
    assert json.loads(record.read_text())["why"] == why  # written, so a rerun skips it


def test_rss_watchdog_kills_a_cell_past_the_limit(tmp_path, monkeypatch):
    grow = "import time; a = bytearray(300 * 2**20); time.sleep(30)"
    monkeypatch.setattr(mt, "child_command", lambda *a: [sys.executable, "-c", grow])
    record = tmp_path / "c.json"
    result = mt.run_cell(Path("/folder"), "ort-cpu", 64, record, 60.0, 100.0)
    assert result["why"].startswith("over the RSS limit")


def test_kernel_peak_reset_and_phase_peaks():
    if kernel_peak_mb() is None:
        pytest.skip("no /proc/self/status VmHWM on this system")
    block = bytearray(200 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1  # touch every page
    high = kernel_peak_mb()
    del block
    if reset_kernel_peak():
        assert kernel_peak_mb() < high - 100
    samples = [(0.0, 10.0), (1.0, 50.0), (2.0, 30.0)]
    assert peak_since(samples, 0.0, 1.5) == 50.0 and peak_since(samples, 1.5) == 30.0
    assert peak_since(samples, 5.0) is None


def test_tiling_contenders_are_their_own_cells_and_columns(tmp_path, monkeypatch):
    assert mt.split_name("openvino-f32+tiling") == ("openvino-f32", True)
    assert mt.split_name("ort-cpu") == ("ort-cpu", False)
    with pytest.raises(SystemExit, match="unknown contender nope"):
        mt.split_name("nope+tiling")
    sdrt = mt.make_contender("ort-cpu+tiling", Path("/folder"))
    assert sdrt.options == {"vae_tiling": True} and sdrt.name == "sdrt ort-cpu+tiling"
    ref = mt.make_contender("diffusers-fp32+tiling", Path("/folder"))
    assert ref.vae_tiling and "VAE tiling" in ref.name
    assert not mt.make_contender("diffusers-fp32", Path("/folder")).vae_tiling

    monkeypatch.setattr("sdrt.bench.models.onnx_folder", lambda model, onnx=None: Path("/folder"))
    ran = []

    def fake_cell(folder, contender, size, record, timeout_s, max_rss_mb):
        ran.append(contender)
        result = _ok(contender, size, 300.0 if contender.endswith("+tiling") else 600.0)
        record.write_text(json.dumps(result))
        return result

    monkeypatch.setattr(mt, "run_cell", fake_cell)
    args = Namespace(model="tiny", onnx=None, sizes="128", contenders="diffusers-fp32,ort-cpu", out=str(tmp_path),
                     timeout=10, max_rss_gb=1, retry_failed=False, vae_tiling=False)
    mt.run(args)
    mt.run(Namespace(**{**vars(args), "vae_tiling": True}))  # the same --out: tiled cells added, whole ones kept
    assert ran == ["diffusers-fp32", "ort-cpu", "diffusers-fp32+tiling", "ort-cpu+tiling"]
    assert (tmp_path / "cells" / "ort-cpu+tiling-128.json").is_file()
    text = (tmp_path / "result.md").read_text()
    assert "| px | diffusers-fp32 | diffusers-fp32+tiling | ort-cpu | ort-cpu+tiling |" in text
    assert "| 128² | 600 | 300 (0.50×) | 600 (1.00×) | 300 (0.50×) |" in text  # ratios to untiled diffusers
