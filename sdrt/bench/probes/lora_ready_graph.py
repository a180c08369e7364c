"""One UNet, ort-cpu: a LoRA session from the LoRA-ready graph vs the full path (optimized with the overrides).

    python lora_ready_graph_probe.py MODEL_DIR [LORA.safetensors]

Times (one process, in order): the base session; the LoRA-ready graph's one-time write plus its
first LoRA session; a second LoRA session from it; a full-path LoRA session (lora_graph_cache off).
Then the UNet output of both LoRA sessions on the same inputs (max |diff|) and 3 timed UNet calls
of each at a 32x32 latent, batch 2. Without a LoRA file, a random rank-32 kohya LoRA on the
attention / feed-forward / proj layers is drawn (benchmarks/lora_switch.py's).
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lora_switch import random_kohya  # noqa: E402

from sdrt.engines.ort import OrtCpuBackend  # noqa: E402
from sdrt.manifest import Manifest  # noqa: E402
from sdrt.runtime.lora.adapters import Adapters  # noqa: E402
from sdrt.runtime.lora.merge import merged_weights  # noqa: E402


def timed(label, work):
    start = time.perf_counter()
    value = work()
    print(f"{label}: {time.perf_counter() - start:.2f} s", flush=True)
    return value


def feeds(engine):
    rng = np.random.default_rng(0)
    dims = {"B": 2, "h": 32, "w": 32}
    engine.prepare(dims)
    shapes = engine.shapes_for(dims)
    return {n: rng.standard_normal(shapes[n]).astype(engine.dtype(n)) if engine.dtype(n).kind == "f"
            else np.full(shapes[n], 500, dtype=engine.dtype(n)) for n in engine.spec.input_names}


def run(engine, inputs, label):
    engine.prepare({"B": 2, "h": 32, "w": 32})
    out = {k: v.copy() for k, v in engine.run(inputs).items()}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        engine.run(inputs)
        times.append(time.perf_counter() - start)
    print(f"{label}: UNet call {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    return out


def main():
    folder = Path(sys.argv[1])
    lora = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp()) / "a.safetensors"
    if len(sys.argv) <= 2:
        print("layers:", random_kohya(folder, lora, 32, 1)[0])
    manifest = Manifest.load(folder)
    adapters = Adapters(manifest)
    _, placed, maps = adapters.prepare([(lora, 0.8)])
    weights = merged_weights([p for p in placed if p.layer.component == "unet"], maps).get("unet", {})
    external = adapters.weight_map("unet").external() & set(weights)
    print(f"UNet initializers changed: {len(weights)} ({sum(w.nbytes for w in weights.values()) / 2**20:.0f} MiB)")
    backend = OrtCpuBackend()
    base = timed("base session (full optimization)", lambda: backend.load(manifest, "unet"))
    inputs = feeds(base)
    run(base, inputs, "base")
    base.close()
    del base
    fast = timed("LoRA session, LoRA-ready graph (first: writes it)", lambda: backend.load(manifest, "unet", weights, external))
    fast.close()
    del fast
    fast = timed("LoRA session, LoRA-ready graph (written)", lambda: backend.load(manifest, "unet", weights, external))
    out_fast = run(fast, inputs, "LoRA-ready")
    fast.close()
    del fast
    backend.lora_graph_cache = False
    full = timed("LoRA session, full path", lambda: backend.load(manifest, "unet", weights, external))
    out_full = run(full, inputs, "full path")
    for name in out_fast:
        print(f"{name}: max |LoRA-ready - full path| = {np.abs(out_fast[name] - out_full[name]).max():.3g}")


if __name__ == "__main__":
    main()
