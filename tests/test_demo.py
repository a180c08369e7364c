"""`sdrt demo` on the tiny preset, reusing the session's export (a fresh export is the exporter's test)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from sdrt.cli import main


@pytest.mark.slow  # sdrt and PyTorch side by side: 21 s on the shared 2-core machine
def test_demo_reuses_a_matching_export_and_reports(tiny_src, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(tiny_src, out / "tiny-diffusers")
    shutil.copytree(tiny_onnx, out / "tiny-onnx")
    stamp = (out / "tiny-onnx" / "sdrt.json").stat().st_mtime_ns
    rc = main(["demo", "--preset", "tiny", "--out", str(out), "--steps", "2", "--height", "32", "--width", "48"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "reusing" in captured.err
    assert (out / "tiny-onnx" / "sdrt.json").stat().st_mtime_ns == stamp  # not exported again
    assert "| UNet per step (median) |" in captured.out and "| end to end |" in captured.out
    psnr = float(re.search(r"PSNR sdrt vs PyTorch: ([\d.]+|inf) dB", captured.out).group(1))
    assert psnr >= 40
    for name in ("sdrt.png", "pytorch.png", "demo.png", "report.md"):
        assert (out / name).is_file()
    assert "(demo.png)" in (out / "report.md").read_text()


def test_demo_exports_again_when_the_source_changed(tiny_src, tiny_onnx, tmp_path, monkeypatch):
    """A manifest whose content hash does not match the diffusers folder is never reused."""
    import sdrt.export.exporter as exporter

    out = tmp_path / "demo"
    shutil.copytree(tiny_src, out / "tiny-diffusers")
    shutil.copytree(tiny_onnx, out / "tiny-onnx")
    manifest = out / "tiny-onnx" / "sdrt.json"
    data = json.loads(manifest.read_text())
    data["source"]["content_hash"] = "sha256:stale"
    manifest.write_text(json.dumps(data))
    calls = []
    monkeypatch.setattr(exporter, "export_model", lambda *a, **k: calls.append((a, k)))
    from sdrt import demo

    demo.prepare_model("tiny", out)
    assert len(calls) == 1 and calls[0][1]["components"] == demo.DEMO_COMPONENTS
