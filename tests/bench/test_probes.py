"""Each probe of sdrt.bench.probes runs on the tiny preset in seconds and prints (or writes) what it measures.

The numbers are not checked (they are the probes' business); what the probes compare is, where the
shipped code promises it (a LoRA-ready session computes what the full path computes).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from sdrt.bench.probes import lora_ready_graph, ort_override_copy, scratch_page_fault, switch_breakdown, trt_rtx


@pytest.fixture()
def tiny_copy(tiny_onnx, tmp_path):
    """A private copy of the tiny export: the LoRA probes write the LoRA-ready graph into engines/."""
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_onnx, copy, ignore=shutil.ignore_patterns("lora-graph-*"))
    return copy


def test_lora_ready_graph_probe(tiny_copy, capsys):
    assert lora_ready_graph.main([str(tiny_copy), "--rank", "4", "--calls", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("base session (full optimization)", "LoRA session, LoRA-ready graph (first: writes it)",
                 "LoRA session, LoRA-ready graph (written)", "LoRA session, full path", "full path: UNet call"):
        assert line in out, out
    assert list((tiny_copy / "engines" / "ort-cpu").glob("lora-graph-*")), "the LoRA-ready graph was not used"
    diffs = [float(d) for d in re.findall(r"max \|LoRA-ready - full path\| = (\S+)", out)]
    assert diffs and max(diffs) < 1e-3, out


def test_switch_breakdown_probe(tiny_copy, capsys):
    assert switch_breakdown.main([str(tiny_copy), "--rank", "4", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"merge \(runtime/lora/merge.py:merged_weights\): \d+ calls", out), out
    assert re.search(r"reweight \(engines/ort.py:reweight\): \d+ calls", out), out
    assert re.search(r"switch A -> B [\d.]+ s \(outside these stages: -?[\d.]+ s\)", out), out
    assert "sdrt functions with the most own time" in out


def test_ort_override_copy_probe(tmp_path, capsys):
    assert ort_override_copy.main(["--size", "64", "--layers", "2", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("heap arrays", "file-backed arrays"):
        assert re.search(label + r": overrides \d+ MiB; RssAnon .*output changed after zeroing the given arrays: "
                         r"(True|False)", out), out
    assert list(tmp_path.iterdir()) == []  # its temporary model is gone


def test_scratch_page_fault_probe(tmp_path, capsys):
    assert scratch_page_fault.main(["--dir", str(tmp_path), "--size-mb", "16"]) == 0
    out = capsys.readouterr().out
    for start in ("mmap first write ", "populate ", "pwrite ", "anon first write "):
        assert any(line.startswith(start) for line in out.splitlines()), out
    assert list(tmp_path.iterdir()) == []  # the files were unlinked at once


def test_trt_rtx_probe_records_every_answer_even_without_engines(tiny_copy, tmp_path):
    out = tmp_path / "answer.json"
    assert trt_rtx.main([str(tiny_copy), str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"raw", "sdrt"}
    # no engines were built: either TensorRT-RTX's own answers list none, or why it could not be asked
    assert report["raw"].get("engines") == {} or "error" in report["raw"]
    assert report["sdrt"]["ok"] is False and report["sdrt"]["error"]
