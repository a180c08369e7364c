"""Where a LoRA switch's time goes: reading the files, the merge, the engines' rebuild, per stage.

    python -m sdrt.bench.probes.switch_breakdown MODEL_DIR [--backend ort-cpu] [--rank 32] [--top 10]

Loads the pipeline, applies a random kohya LoRA A of rank --rank (sdrt.bench.lora_switch's; this first
switch may write one-time graphs), then runs the switch A -> B under Python's profiler (cProfile: no
sdrt code is replaced or wrapped). Printed: for each stage function the switch reached, its calls and
cumulative seconds (a stage called inside another one, such as ort-cpu's release inside its
reweight, is inside that one's time too); the time outside every stage; and the --top sdrt functions
by their own time. The profiler adds a little time to each Python call; the work of a switch is in
numpy and the engines, so the stages' shares hold.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

#: (label, where the function is defined inside sdrt/, its name): the stages of `Pipeline.set_loras`
STAGES = (
    ("read and check files", "runtime/lora/adapters.py", "prepare"),
    ("merge", "runtime/lora/merge.py", "merged_weights"),
    ("release_for_reweight", "engines/", "release_for_reweight"),
    ("reweight", "engines/", "reweight"),
    ("set_lora_factors", "engines/", "set_lora_factors"),
)

Function = tuple[str, int, str]  # cProfile's key: (file, line, name)


def sdrt_path(filename: str) -> str | None:
    """The path inside the sdrt package ('runtime/lora/merge.py'), or None for other code."""
    parts = Path(filename).parts
    if "sdrt" not in parts:
        return None
    return "/".join(parts[len(parts) - parts[::-1].index("sdrt"):])


def stage_of(function: Function) -> str | None:
    path = sdrt_path(function[0])
    if path is None:
        return None
    return next((label for label, where, name in STAGES if function[2] == name and path.startswith(where)), None)


def breakdown(stats: pstats.Stats, total: float, top: int) -> list[str]:
    """The report's lines from the profile of one switch that took `total` seconds."""
    table = stats.stats  # type: ignore[attr-defined]  # {function: (calls, primitive, own s, cumulative s, callers)}
    lines, outermost = [], 0.0
    for label, _, _ in STAGES:
        for function, (_, calls, _, cumulative, callers) in sorted(table.items()):
            if stage_of(function) != label:
                continue
            lines.append(f"  {label} ({sdrt_path(function[0])}:{function[2]}): {calls} calls, {cumulative:.2f} s")
            # the part of its time not already inside another stage
            outermost += sum(c[3] for caller, c in callers.items() if stage_of(caller) is None)
    lines.append(f"switch A -> B {total:.1f} s (outside these stages: {total - outermost:.2f} s)")
    own = sorted(((v[2], f) for f, v in table.items() if sdrt_path(f[0])), reverse=True)[:top]
    if own:
        lines.append(f"the {len(own)} sdrt functions with the most own time:")
        lines += [f"  {seconds:.2f} s  {sdrt_path(f[0])}:{f[1]} {f[2]}" for seconds, f in own]
    return lines


def main(argv: list[str] | None = None) -> int:
    from sdrt.bench.lora_switch import random_kohya
    from sdrt.runtime import Pipeline

    p = argparse.ArgumentParser(prog="python -m sdrt.bench.probes.switch_breakdown",
                                description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported ONNX folder")
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--rank", type=int, default=32, help="rank of the random LoRAs (default 32)")
    p.add_argument("--top", type=int, default=10, help="sdrt functions listed by own time (default 10)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdrt-probe-") as work:
        a, b = Path(work) / "a.safetensors", Path(work) / "b.safetensors"
        random_kohya(args.model, a, args.rank, 1)
        random_kohya(args.model, b, args.rank, 2)
        start = time.perf_counter()
        pipe = Pipeline.load(args.model, args.backend)
        print(f"load {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        pipe.set_loras([(a, 0.8)])
        print(f"first switch none -> A {time.perf_counter() - start:.1f} s", flush=True)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(pipe.set_loras, [(b, 0.8)])
        total = time.perf_counter() - start
        pipe.close()
    print("\n".join(breakdown(pstats.Stats(profiler), total, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
