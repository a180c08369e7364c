"""One UNet, ort-cpu: a LoRA session from the LoRA-ready graph vs the full path (optimized with the overrides).

    python -m sdrt.bench.probes.lora_ready_graph MODEL_DIR [--lora FILE.safetensors] [--rank 32]
        [--latent 32] [--batch 2] [--calls 3]

Times (one process, in order): the base session; the LoRA-ready graph's one-time write plus its
first LoRA session; a second LoRA session from it; a full-path LoRA session (a backend with
`lora_graph_cache` off, as ort-cuda has). Then the UNet output of both LoRA sessions on the same
inputs (max |diff|) and --calls timed UNet calls of each at a --latent square latent, batch --batch.
Without --lora, a random kohya LoRA of rank --rank on the attention / feed-forward / proj layers is
drawn (sdrt.bench.lora_switch's). The LoRA-ready graph is written into MODEL_DIR/engines/ort-cpu
(as a switch does).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def timed(label: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    value = work()
    print(f"{label}: {time.perf_counter() - start:.2f} s", flush=True)
    return value


def feeds(engine: Any, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Seeded inputs for every input of the engine at `dims` (timesteps 500)."""
    rng = np.random.default_rng(0)
    engine.prepare(dims)
    shapes = engine.shapes_for(dims)
    return {n: rng.standard_normal(shapes[n]).astype(engine.dtype(n)) if engine.dtype(n).kind == "f"
            else np.full(shapes[n], 500, dtype=engine.dtype(n)) for n in engine.spec.input_names}


def run(engine: Any, inputs: dict[str, np.ndarray], dims: dict[str, int], calls: int, label: str) -> dict:
    """One untimed call (its outputs returned), then `calls` timed ones."""
    engine.prepare(dims)
    out = {k: v.copy() for k, v in engine.run(inputs).items()}
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.run(inputs)
        times.append(time.perf_counter() - start)
    print(f"{label}: UNet call {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    return out


def unet_overrides(folder: Path, lora: Path) -> tuple[Any, dict[str, np.ndarray], frozenset[str]]:
    """(manifest, the UNet's merged weights for `lora` at 0.8, which of them are external-data initializers)."""
    from sdrt.manifest import Manifest
    from sdrt.runtime.lora.adapters import Adapters
    from sdrt.runtime.lora.merge import merged_weights

    manifest = Manifest.load(folder)
    adapters = Adapters(manifest)
    _, placed, maps = adapters.prepare([(lora, 0.8)])
    weights = merged_weights([p for p in placed if p.layer.component == "unet"], maps).get("unet", {})
    external = frozenset(adapters.weight_map("unet").external() & set(weights))
    return manifest, weights, external


def main(argv: list[str] | None = None) -> int:
    from sdrt.engines.ort import OrtCpuBackend

    p = argparse.ArgumentParser(prog="python -m sdrt.bench.probes.lora_ready_graph",
                                description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported ONNX folder")
    p.add_argument("--lora", type=Path, help="a LoRA file (default: a random kohya one)")
    p.add_argument("--rank", type=int, default=32, help="rank of the random LoRA (default 32)")
    p.add_argument("--latent", type=int, default=32, help="latent side of the timed calls (default 32)")
    p.add_argument("--batch", type=int, default=2, help="UNet batch of the timed calls (default 2)")
    p.add_argument("--calls", type=int, default=3, help="timed UNet calls per session (default 3)")
    args = p.parse_args(argv)
    dims = {"B": args.batch, "h": args.latent, "w": args.latent}
    with tempfile.TemporaryDirectory(prefix="sdrt-probe-") as scratch:
        lora = args.lora
        if lora is None:
            from sdrt.bench.lora_switch import random_kohya

            lora = Path(scratch) / "a.safetensors"
            print("layers:", random_kohya(args.model, lora, args.rank, 1)[0])
        manifest, weights, external = unet_overrides(args.model, lora)
        print(f"UNet initializers changed: {len(weights)} "
              f"({sum(w.nbytes for w in weights.values()) / 2**20:.0f} MiB)")
        backend = OrtCpuBackend()
        base = timed("base session (full optimization)", lambda: backend.load(manifest, "unet"))
        inputs = feeds(base, dims)
        run(base, inputs, dims, args.calls, "base")
        base.close()
        del base
        ready = timed("LoRA session, LoRA-ready graph (first: writes it)",
                      lambda: backend.load(manifest, "unet", weights, external))
        ready.close()
        del ready
        ready = timed("LoRA session, LoRA-ready graph (written)", lambda: backend.load(manifest, "unet", weights, external))
        out_ready = run(ready, inputs, dims, args.calls, "LoRA-ready")
        ready.close()
        del ready
        full_path = OrtCpuBackend()
        full_path.lora_graph_cache = False  # the path a backend without LoRA-ready graphs takes
        full = timed("LoRA session, full path", lambda: full_path.load(manifest, "unet", weights, external))
        out_full = run(full, inputs, dims, args.calls, "full path")
        full.close()
    for name in out_ready:
        print(f"{name}: max |LoRA-ready - full path| = {np.abs(out_ready[name] - out_full[name]).max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
