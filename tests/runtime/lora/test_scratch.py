"""Merged LoRA weights live in an unlinked, pre-reserved scratch file (sdrt.runtime.lora.scratch).

The merge writes into file-backed pages instead of anonymous memory (ONNX Runtime copies the
initializers it is given, so anonymous merged arrays were a second resident copy of every changed
layer). Checked here: the arrays are page-aligned views of a file that no folder shows; the merge
into them equals the formula and the in-memory merge (float32 and float16, plain and transposed
layouts); a full disk is one line before any engine is touched.
"""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.runtime import Pipeline
from sdrt.runtime.lora import scratch
from sdrt.runtime.lora.adapters import Adapters
from sdrt.runtime.lora.merge import merged_shapes, merged_weights
from tests.runtime.lora.helpers import map_shapes, write_kohya


def _mapped(array: np.ndarray) -> bool:
    base = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    return isinstance(base, mmap.mmap)


def test_store_hands_out_aligned_views_of_an_unlinked_file(tmp_path):
    store = scratch.ScratchStore(scratch.size_for([((3, 5), np.float32), ((7,), np.float16)]), tmp_path)
    a = store.array((3, 5), np.float32)
    b = store.array((7,), np.float16)
    a[...] = 1.5
    b[...] = 2
    assert store.where == tmp_path / "engines"
    assert list((tmp_path / "engines").iterdir()) == []  # unlinked at once: nothing to clean up
    assert a.ctypes.data % mmap.PAGESIZE == 0 and b.ctypes.data % mmap.PAGESIZE == 0
    assert a.flags.writeable and _mapped(a) and float(a.sum()) == 22.5 and float(b.sum()) == 14.0
    with pytest.raises(ValueError, match="scratch store full"):
        store.array((mmap.PAGESIZE,), np.float32)


def test_no_writable_folder_falls_back_to_memory_once(monkeypatch, capsys):
    monkeypatch.setattr(scratch, "candidates", lambda folder: [scratch.Path("/proc/sdrt-not-writable")])
    monkeypatch.setattr(scratch, "_said", False)
    first = scratch.ScratchStore(4096).array((4,), np.float32)
    scratch.ScratchStore(4096)
    first[...] = 3
    assert capsys.readouterr().err.count("no writable folder for a LoRA scratch file") == 1
    assert float(first.sum()) == 12.0


def _adapters_for(folder, lora):
    adapters = Adapters(Manifest.load(folder))
    _, placed, maps = adapters.prepare([(lora, 0.7)])
    return placed, maps


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_merge_into_the_store_equals_the_formula(onnx_export, tmp_path, precision):
    folder = onnx_export("tiny", precision)
    lora = write_kohya(tmp_path / "a.safetensors", map_shapes(folder, text=True, conv=True), rank=4, alpha=2.0, seed=3)
    placed, maps = _adapters_for(folder, lora)
    shapes = merged_shapes(placed, maps)
    stores = {c: scratch.store_for(s, tmp_path) for c, s in shapes.items()}
    filed = merged_weights(placed, maps, lambda c, n, shape, dtype: stores[c].array(shape, dtype))
    in_memory = merged_weights(placed, maps)
    layouts = set()
    for component, arrays in filed.items():
        assert set(arrays) == set(shapes[component]) == set(in_memory[component])
        for name, array in arrays.items():
            assert _mapped(array) and array.dtype == shapes[component][name][1]
            assert np.array_equal(array, in_memory[component][name])
    for item in placed:  # every weight against W + s * alpha/rank * up @ down, by hand
        for record in maps[item.layer.component].parameters[item.parameter]:
            layouts.add(record["layout"])
            base = maps[item.layer.component].base(record).astype(np.float64)
            up = item.layer.up.reshape(item.layer.up.shape[0], -1).astype(np.float64)
            down = item.layer.down.reshape(item.layer.down.shape[0], -1).astype(np.float64)
            update = 0.7 * (2.0 / 4) * (up @ down)
            update = update.T if record["layout"] == "transpose" else update.reshape(base.shape)
            got = filed[item.layer.component][record["initializer"]].astype(np.float64)
            tolerance = 1e-5 if precision == "fp32" else 2e-3 * (1 + np.abs(base + update).max())
            assert np.abs(got - (base + update.reshape(base.shape))).max() <= tolerance, record["initializer"]
    assert "transpose" in layouts  # the MatMul weights: the transposed layout was exercised


def test_switch_uses_the_store_and_leaves_nothing(tiny_onnx, tmp_path):
    a = write_kohya(tmp_path / "a.safetensors", map_shapes(tiny_onnx, text=True), seed=4)
    pipe = Pipeline.load(tiny_onnx, "ort-cpu", loras=[(a, 0.8)])
    arrays = [array for changed in pipe.adapters.changed.values() for array in changed.values()]
    assert arrays and all(_mapped(array) for array in arrays)
    if os.path.exists("/proc/self/maps"):  # file-backed, in the model's engines/ folder, already unlinked
        maps = open("/proc/self/maps").read()
        assert f"{tiny_onnx / 'engines'}/.lora-scratch-" in maps and "(deleted)" in maps
    assert not [p for p in (tiny_onnx / "engines").rglob(".lora-scratch-*")]
    pipe.set_loras([])
    assert all(not changed for changed in pipe.adapters.changed.values())


def test_full_disk_is_one_line_and_changes_nothing(tiny_onnx, tmp_path, monkeypatch):
    a = write_kohya(tmp_path / "a.safetensors", map_shapes(tiny_onnx, text=True), seed=5)
    b = write_kohya(tmp_path / "b.safetensors", map_shapes(tiny_onnx), seed=6)
    pipe = Pipeline.load(tiny_onnx, "ort-cpu", loras=[(a, 0.8)])
    call = dict(num_inference_steps=2, height=32, width=32, seed=1, output_type="np")
    before = pipe("a cat", **call).images

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(scratch.os, "posix_fallocate", full)
    with pytest.raises(SdrtError) as error:
        pipe.set_loras([(b, 0.8)])
    message = str(error.value)
    assert "\n" not in message and "no space for the merged LoRA weights" in message and scratch.ENV in message
    monkeypatch.undo()
    assert [lora["name"] for lora in pipe.loras] == ["a"]
    assert np.array_equal(pipe("a cat", **call).images, before)
