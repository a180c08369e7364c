"""Where a LoRA switch's time goes, per component: merge (into the scratch file) and engine rebuild.

    python switch_breakdown.py MODEL_DIR [BACKEND]

Loads the pipeline, applies a random rank-32 kohya LoRA A (benchmarks/lora_switch.py's; this first
switch may write one-time graphs), then times the switch A -> B with the merge and each backend
call wrapped in timers.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lora_switch import random_kohya  # noqa: E402

import sdrt.runtime.lora.adapters as adapters  # noqa: E402
from sdrt.runtime import Pipeline  # noqa: E402

SPENT: list[tuple[str, float]] = []


def timer(label, function):
    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT.append((label, time.perf_counter() - start))
    return wrapped


def main():
    folder = Path(sys.argv[1])
    backend = sys.argv[2] if len(sys.argv) > 2 else "ort-cpu"
    work = Path(tempfile.mkdtemp())
    a, b = work / "a.safetensors", work / "b.safetensors"
    random_kohya(folder, a, 32, 1)
    random_kohya(folder, b, 32, 2)
    start = time.perf_counter()
    pipe = Pipeline.load(folder, backend)
    print(f"load {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    pipe.set_loras([(a, 0.8)])
    print(f"first switch none -> A {time.perf_counter() - start:.1f} s", flush=True)
    adapters.merged_weights = timer("merge", adapters.merged_weights)
    for name in ("release_for_reweight", "reweight", "set_lora_factors"):
        if hasattr(pipe.backend, name):
            setattr(pipe.backend, name, timer(name, getattr(pipe.backend, name)))
    prepare = pipe.adapters.prepare
    pipe.adapters.prepare = timer("read and check files", prepare)
    start = time.perf_counter()
    pipe.set_loras([(b, 0.8)])
    total = time.perf_counter() - start
    for label, seconds in SPENT:
        print(f"  {label}: {seconds:.2f} s")
    print(f"switch A -> B {total:.1f} s (the rest: {total - sum(s for _, s in SPENT):.2f} s)")


if __name__ == "__main__":
    main()
