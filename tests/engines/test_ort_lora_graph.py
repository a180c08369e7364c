"""ORT LoRA sessions from the LoRA-ready graph (sdrt.engines.ort_lora_graph), on the real tiny export.

The graph is optimized once with the LoRA-able weights kept open; a switch loads it with
optimization off. Checked: it is used and written once, its images equal the full path's (a
session optimized with the overrides) and switching/unloading stays exact; a LoRA on a 3x3 Conv,
or a machine without the onnx package, takes the full path.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdrt.engines import ort_sessions as ort_module
from sdrt.engines.ort import OrtCpuBackend
from sdrt.weight_map import linear_initializers
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.lora.helpers import map_shapes, write_kohya, write_peft

CALL = dict(num_inference_steps=2, height=32, width=32, seed=7, output_type="np", scheduler="euler")


@pytest.fixture()
def folder(tiny_onnx, tmp_path):
    """A private copy of the tiny export (this test counts the graphs written into engines/)."""
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_onnx, copy, ignore=shutil.ignore_patterns("lora-graph-*"))
    return copy


def _graphs(folder):
    return sorted((folder / "engines" / "ort-cpu").glob("lora-graph-*/targets.json"))


def _spy(monkeypatch):
    calls = []
    original = OrtCpuBackend._lora_graph

    def spy(self, *args):
        ready = original(self, *args)
        calls.append(ready is not None)
        return ready

    monkeypatch.setattr(OrtCpuBackend, "_lora_graph", spy)
    return calls


def test_linear_initializers_keep_2d_and_1x1_weights_only():
    parameters = {
        "a.to_q.weight": [{"initializer": "q", "shape": [8, 4]}],
        "a.proj_in.weight": [{"initializer": "p", "shape": [8, 8, 1, 1]}],
        "a.conv1.weight": [{"initializer": "c", "shape": [8, 8, 3, 3]}],
        "a.to_q.bias": [{"initializer": "qb", "shape": [8]}],
    }
    assert linear_initializers(parameters) == {"q", "p"}


def test_lora_ready_graph_written_once_and_exact(folder, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    a = write_kohya(tmp_path / "a.safetensors", map_shapes(folder, text=True), seed=21)
    b = write_peft(tmp_path / "b.safetensors", map_shapes(folder, text=True), seed=22)
    base = Pipeline.load(folder, "ort-cpu")("a cat", **CALL).images
    pipe = Pipeline.load(folder, "ort-cpu", loras=[(a, 0.8)])
    first = pipe("a cat", **CALL).images
    written = _graphs(folder)
    assert len(written) == 2 and all(calls)  # text encoder and UNet, both from their LoRA-ready graphs
    stamps = [p.stat().st_mtime_ns for p in written]
    pipe.set_loras([(b, 0.5), (a, 0.3)])
    pipe.set_loras([(a, 0.8)])
    again = pipe("a cat", **CALL).images
    pipe.set_loras([])
    unloaded = pipe("a cat", **CALL).images
    assert _graphs(folder) == written and [p.stat().st_mtime_ns for p in written] == stamps
    assert np.array_equal(first, again) and np.array_equal(unloaded, base)
    assert psnr(first, base) < 30  # the LoRA did something

    monkeypatch.setattr(OrtCpuBackend, "lora_graph_cache", False)  # the full path: optimized with the overrides
    full = Pipeline.load(folder, "ort-cpu", loras=[(a, 0.8)])("a cat", **CALL).images
    assert psnr(first, full) > 80


def test_conv_lora_takes_the_full_path(folder, tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    shapes = map_shapes(folder, conv=True)
    conv = {"unet": {k: v for k, v in shapes["unet"].items() if len(v) == 4 and v[2:] == (3, 3)}}
    assert conv["unet"]
    lora = write_kohya(tmp_path / "conv.safetensors", conv, seed=23)
    pipe = Pipeline.load(folder, "ort-cpu", loras=[(lora, 1.0)])
    assert calls == [False] and _graphs(folder) == []
    assert psnr(pipe("a cat", **CALL).images, Pipeline.load(folder, "ort-cpu")("a cat", **CALL).images) < 30


def test_without_onnx_the_full_path_with_a_note(folder, tmp_path, monkeypatch, capsys):
    lora = write_kohya(tmp_path / "a.safetensors", map_shapes(folder), seed=24)
    pipe = Pipeline.load(folder, "ort-cpu")
    find_spec = ort_module.importlib.util.find_spec
    monkeypatch.setattr(ort_module.importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    monkeypatch.setattr(ort_module, "_NOTED", set())
    pipe.set_loras([(lora, 0.8)])
    assert "the onnx package is not installed" in capsys.readouterr().err
    assert _graphs(folder) == []
    monkeypatch.undo()
    assert psnr(pipe("a cat", **CALL).images, Pipeline.load(folder, "ort-cpu", loras=[(lora, 0.8)])("a cat", **CALL).images) > 80



def test_lora_ready_graph_is_keyed_by_the_manifests_hash_not_the_mtime(folder):
    """A touched graph keeps its LoRA-ready graph; another recorded sha256 (a new export) gets a new one."""
    import json
    import os

    from sdrt.manifest import Manifest
    from sdrt.weight_map import WeightMap

    def ready(manifest):
        names = set(sorted(linear_initializers(WeightMap.load(manifest, "unet").parameters))[:1])
        graph = OrtCpuBackend()._lora_graph(manifest, "unet", manifest.onnx_path("unet"), names)
        assert graph is not None
        return graph[0]

    manifest = Manifest.load(folder)
    first = ready(manifest)
    os.utime(manifest.onnx_path("unet"), ns=(1, 1))
    assert ready(Manifest.load(folder)) == first and len(_graphs(folder)) == 1
    data = json.loads((folder / "sdrt.json").read_text())
    data["components"]["unet"]["sha256"] = "0" * 64
    (folder / "sdrt.json").write_text(json.dumps(data))
    assert ready(Manifest.load(folder)) != first and len(_graphs(folder)) == 2


def test_graph_key_parts():
    from sdrt.engines.ort_lora_graph import graph_key

    key = graph_key("a" * 64, {"w1", "w2"}, ["1.22", "ort-cpu"])
    assert key == graph_key("a" * 64, ["w2", "w1"], ["1.22", "ort-cpu"])  # the targets' order does not matter
    assert key != graph_key("b" * 64, {"w1", "w2"}, ["1.22", "ort-cpu"])
    assert key != graph_key("a" * 64, {"w1"}, ["1.22", "ort-cpu"])
    assert key != graph_key("a" * 64, {"w1", "w2"}, ["1.22", "ort-cpu", "attention_to_mha"])  # rewrites
