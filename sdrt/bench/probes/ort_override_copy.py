"""Does ONNX Runtime copy the initializer overrides it is given? (the reason merged LoRA weights go to a file)

    python -m sdrt.bench.probes.ort_override_copy [--size 5792] [--layers 4] [--dir DIR]

A graph of --layers MatMuls with --size x --size float32 weights each (the default: 128 MiB each), in
an external-data file under a temporary folder in --dir (default: the system's temporary folder). A
session is created with all of them replaced through `SessionOptions.add_external_initializers`,
(1) from heap numpy arrays, (2) from arrays in a memory-mapped file. Printed: RssAnon before and
after the session (anonymous memory: what the kernel cannot drop), and whether the output changes
when the given arrays are zeroed after session creation (unchanged: ONNX Runtime holds its own copy).
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile

import numpy as np


def build(folder: str, size: int, layers: int) -> str:
    """The MatMul chain as model.onnx + model.onnx.data in `folder`; its path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.01)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def trial(path: str, arrays: list[np.ndarray], label: str) -> bool:
    """A session with `arrays` as overrides; prints the RssAnon rise; whether ORT reads the given buffers."""
    import onnxruntime as ort

    from sdrt.bench.memory import anon_mb

    size = arrays[0].shape[0]
    x = np.ones((1, size), dtype=np.float32)
    before = anon_mb() or 0.0
    so = ort.SessionOptions()
    so.add_external_initializers([f"w{i}" for i in range(len(arrays))],
                                 [ort.OrtValue.ortvalue_from_numpy(a, "cpu", 0) for a in arrays])
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    after = anon_mb() or 0.0
    out = session.run(None, {"x": x})[0].copy()
    for a in arrays:
        a[...] = 0
    changed = not np.array_equal(session.run(None, {"x": x})[0], out)
    given = sum(a.nbytes for a in arrays) / 2**20
    print(f"{label}: overrides {given:.0f} MiB; RssAnon {before:.0f} -> {after:.0f} MiB (+{after - before:.0f}); "
          f"output changed after zeroing the given arrays: {changed}", flush=True)
    return changed


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(prog="python -m sdrt.bench.probes.ort_override_copy",
                                description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=5792, help="weight side (default 5792: 128 MiB per float32 weight)")
    p.add_argument("--layers", type=int, default=4, help="MatMul layers (default 4)")
    p.add_argument("--dir", default=None, help="where the temporary model and file mapping go (default: $TMPDIR)")
    args = p.parse_args(argv)
    n, layers = args.size, args.layers
    print("onnxruntime", ort.__version__)
    with tempfile.TemporaryDirectory(prefix="sdrt-probe-", dir=args.dir) as folder:
        path = build(folder, n, layers)
        rng = np.random.default_rng(1)
        heap = [rng.standard_normal((n, n), dtype=np.float32) * np.float32(0.01) for _ in range(layers)]
        trial(path, heap, "heap arrays")
        del heap
        store = os.path.join(folder, "scratch")
        size = layers * n * n * 4
        with open(store, "wb") as f:
            f.truncate(size)
        with open(store, "r+b") as f:
            mapped = mmap.mmap(f.fileno(), size)
        filed = [np.frombuffer(mapped, np.float32, n * n, i * n * n * 4).reshape(n, n) for i in range(layers)]
        for a in filed:
            a[...] = rng.standard_normal((n, n), dtype=np.float32) * np.float32(0.01)
        trial(path, filed, "file-backed arrays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
