"""LoRA switch time and memory on an exported model: set_loras vs a fresh Pipeline.load (vs re-export).

    python benchmarks/lora_switch.py --model DIR [--backend ort-cpu] [--rank 32] [--repeats 3]
        [--export-seconds S] [--out benchmarks/results]

Two random kohya LoRAs (rank --rank, alpha rank/2) are drawn on the layers SD 1.5 LoRA trainers
target (the UNet's attention projections, feed-forward and transformer proj_in/out, the text
encoder's attention and MLP), with the layer names and shapes taken from the export's weight map.
Measured, each --repeats times (medians reported): a fresh `Pipeline.load` of the folder; switching
none -> A, A -> B, B -> A and unloading (`set_loras([])`); the process RSS before and the peak
during each switch (background sampler, 10 ms); then, at a small size, that B -> A gives A's image
bit for bit and that unloading gives the base image bit for bit. `--export-seconds` is the wall
time of the `sdrt export` that made the folder, measured by the caller (re-export is what a user
without run-time LoRA would pay per LoRA). Writes lora-switch-<date>/lora_switch.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def random_kohya(folder: Path, path: Path, rank: int, seed: int) -> int:
    """A kohya LoRA for the export at `folder`, from its weight maps; returns its layer count."""
    from safetensors.numpy import save_file

    from sdrt.manifest import Manifest
    from sdrt.runtime.lora.base_weights import WeightMap

    manifest = Manifest.load(folder)
    rng = np.random.default_rng(seed)
    tensors = {}
    for component, prefix, targets in (("unet", "lora_unet_", UNET_TARGETS), ("text_encoder", "lora_te_", TEXT_TARGETS)):
        for name, shape in sorted(WeightMap.load(manifest, component).modules().items()):
            if not name.endswith(targets) or len(shape) not in (2, 4):
                continue
            key = prefix + name.replace(".", "_")
            down = rng.standard_normal((rank, *shape[1:]), dtype=np.float32) * np.float32(0.01)
            up_shape = (shape[0], rank) if len(shape) == 2 else (shape[0], rank, 1, 1)
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = rng.standard_normal(up_shape, dtype=np.float32) * np.float32(0.01)
            tensors[f"{key}.alpha"] = np.array(rank / 2, dtype=np.float32)
    save_file(tensors, str(path))
    return len(tensors) // 3


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="image side for the bit-exactness check")
    ap.add_argument("--export-seconds", type=float, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    from sdrt.bench.memory import RssSampler, rss_mb
    from sdrt.runtime import Pipeline

    folder = Path(args.model)
    work = Path(tempfile.mkdtemp(prefix="sdrt-lora-bench-"))
    a, b = work / "style_a.safetensors", work / "style_b.safetensors"
    layers = random_kohya(folder, a, args.rank, 1)
    random_kohya(folder, b, args.rank, 2)

    loads = []
    for _ in range(args.repeats):
        holder: list = []
        loads.append(timed(lambda: holder.append(Pipeline.load(folder, args.backend))))
        holder[0].close()
        del holder
    pipe = Pipeline.load(folder, args.backend)
    phases = {"none -> A": [(a, 0.8)], "A -> B": [(b, 0.8)], "B -> A": [(a, 0.8)], "A -> none": []}
    times: dict[str, list[float]] = {k: [] for k in phases}
    memory: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for label, loras in phases.items():
            before = rss_mb()
            with RssSampler() as sampler:
                times[label].append(timed(lambda: pipe.set_loras(loras)))
            memory[label] = {"rss_before_mb": round(before, 1), "rss_peak_mb": round(sampler.peak_mb, 1),
                             "rss_after_mb": round(rss_mb(), 1)}

    call = dict(num_inference_steps=2, height=args.size, width=args.size, seed=3, output_type="np",
                scheduler="ddim")
    base = pipe("a photo of a cat", **call).images
    pipe.set_loras([(a, 0.8)])
    first = pipe("a photo of a cat", **call).images
    pipe.set_loras([(b, 0.8)])
    pipe.set_loras([(a, 0.8)])
    again = pipe("a photo of a cat", **call).images
    pipe.set_loras([])
    unloaded = pipe("a photo of a cat", **call).images

    unet_bytes = sum(p.stat().st_size for p in (folder / "unet").glob("model.onnx*"))
    result = {
        "model": str(folder), "backend": args.backend, "rank": args.rank, "lora_layers": layers,
        "lora_file_mb": round(a.stat().st_size / 2**20, 1), "unet_files_mb": round(unet_bytes / 2**20, 1),
        "repeats": args.repeats,
        "fresh_load_s": {"median": round(statistics.median(loads), 3), "all": [round(x, 3) for x in loads]},
        "switch_s": {k: {"median": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]}
                     for k, v in times.items()},
        "memory_last_repeat": memory,
        "export_seconds": args.export_seconds,
        "exact": {"B -> A equals A": bool(np.array_equal(first, again)),
                  "unload equals base": bool(np.array_equal(unloaded, base)),
                  "A differs from base": bool(not np.array_equal(first, base))},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    out = Path(args.out) / f"lora-switch-{date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora_switch.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# LoRA switch on {folder.name} ({args.backend})", "",
             f"{layers} LoRA layers, rank {args.rank}; medians of {args.repeats}; load average at end "
             f"{result['machine']['load_average_at_end']}.", "",
             "| what | seconds |", "|---|---|",
             f"| fresh Pipeline.load | {result['fresh_load_s']['median']} |"]
    lines += [f"| set_loras {k} | {v['median']} |" for k, v in result["switch_s"].items()]
    if args.export_seconds:
        lines.append(f"| re-export (sdrt export, measured) | {args.export_seconds} |")
    lines += ["", "| switch | RSS before MB | peak MB | after MB |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['rss_before_mb']} | {v['rss_peak_mb']} | {v['rss_after_mb']} |" for k, v in memory.items()]
    lines += ["", f"exact: {result['exact']}"]
    (out / "lora_switch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
