"""Does ONNX Runtime copy the initializer overrides it is given? (the reason merged LoRA weights go to a file)

A graph of 4 MatMuls with 128 MiB float32 weights each, in an external-data file. A session is
created with all four replaced through `SessionOptions.add_external_initializers`, (1) from heap
numpy arrays, (2) from arrays in a memory-mapped file. Printed: RssAnon before and after the
session (anonymous memory: what the kernel cannot drop), and whether the output changes when the
given arrays are zeroed after session creation (unchanged: ONNX Runtime holds its own copy).

    python ort_override_copy_probe.py
"""

import mmap
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

N, LAYERS = 5792, 4  # 5792^2 * 4 bytes = 128 MiB per weight


def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024


def build(folder):
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((N, N), dtype=np.float32) * 0.01)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
    return path


def trial(path, arrays, label):
    x = np.ones((1, N), dtype=np.float32)
    before = anon_mb()
    so = ort.SessionOptions()
    so.add_external_initializers([f"w{i}" for i in range(LAYERS)],
                                 [ort.OrtValue.ortvalue_from_numpy(a, "cpu", 0) for a in arrays])
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    after = anon_mb()
    out = session.run(None, {"x": x})[0].copy()
    for a in arrays:
        a[...] = 0
    changed = not np.array_equal(session.run(None, {"x": x})[0], out)
    given = sum(a.nbytes for a in arrays) / 2**20
    print(f"{label}: overrides {given:.0f} MiB; RssAnon {before:.0f} -> {after:.0f} MiB (+{after - before:.0f}); "
          f"output changed after zeroing the given arrays: {changed}")


def main():
    print("onnxruntime", ort.__version__)
    with tempfile.TemporaryDirectory(dir=os.environ.get("PROBE_DIR")) as folder:
        path = build(folder)
        rng = np.random.default_rng(1)
        heap = [rng.standard_normal((N, N), dtype=np.float32) * 0.01 for _ in range(LAYERS)]
        trial(path, heap, "heap arrays")
        del heap
        store = os.path.join(folder, "scratch")
        size = LAYERS * N * N * 4
        with open(store, "wb") as f:
            f.truncate(size)
        with open(store, "r+b") as f:
            mapped = mmap.mmap(f.fileno(), size)
        filed = [np.frombuffer(mapped, np.float32, N * N, i * N * N * 4).reshape(N, N) for i in range(LAYERS)]
        for a in filed:
            a[...] = rng.standard_normal((N, N), dtype=np.float32) * 0.01
        trial(path, filed, "file-backed arrays")


if __name__ == "__main__":
    main()
