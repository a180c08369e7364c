"""LoRA switch time and memory on an exported model, per backend: set_loras vs a fresh Pipeline.load (vs re-export).

    python -m sdrt.bench.lora_switch --model DIR [--backends ort-cpu,openvino] [--rank 32] [--repeats 3]
        [--size 256] [--export-seconds S --export-note TEXT] [--out benchmarks/results]

A backend is ``NAME`` or ``NAME:PRECISION`` (``openvino:bf16``). Two random kohya LoRAs (rank --rank,
alpha rank/2) are drawn on the layers LoRA trainers target (the UNet's attention projections,
feed-forward and transformer proj_in/out, the text encoders' attention and MLP) of every component
whose weight map the export has, with the names kohya writes: ``lora_te_`` for SD 1.x/2.x,
``lora_te1_`` / ``lora_te2_`` and the original (LDM) UNet names for SDXL (sdrt.runtime.lora.names).

Per backend, each --repeats times (medians reported): a fresh `Pipeline.load` of the folder (the
first one may compile, so it is reported alone and the median is of the later ones); switching none -> A, A -> B, B -> A and unloading
(`set_loras([])`); the process RSS before and the peak during each switch (background sampler,
10 ms), against the size of the UNet's files (a peak rise below it: no second full UNet copy was
held); then, at --size, that B -> A gives A's image bit for bit and unloading the base image bit
for bit. `--export-seconds` is the wall time of the `sdrt export` that made the folder, measured by
the caller (what a user without run-time LoRA pays per LoRA); `--export-note` says how (e.g. "under
load"). Writes lora-switch-<date>-<model>/lora_switch.json, .md and RUN.md under --out (default
benchmarks/results, or benchmarks/dryruns for a tiny preset's folder).
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

from sdrt.atomic import write_text
from sdrt.bench.output import DEFAULT_OUT, DRY_RUN_OUT, is_dry_run
from sdrt.bench.provenance import record_run

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def kohya_names(manifest, component: str, weight_map) -> tuple[str, dict[str, str]]:
    """(kohya prefix, diffusers module -> the layer name a kohya file gives it) for one component."""
    from sdrt.runtime.lora.names import ldm_blocks, ldm_name

    sdxl = manifest.has("text_encoder_2")
    if component != "unet":
        return ({"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component] if sdxl else "lora_te_"), {}
    if not sdxl:
        return "lora_unet_", {}
    blocks = ldm_blocks(weight_map.config())
    return "lora_unet_", {m: ldm_name(m, blocks) for m in weight_map.modules() if ldm_name(m, blocks)}


def random_kohya(folder: Path, path: Path, rank: int, seed: int) -> tuple[int, list[str]]:
    """A kohya LoRA for the export at `folder`, from its weight maps: (layer count, components)."""
    from safetensors.numpy import save_file

    from sdrt.manifest import Manifest
    from sdrt.weight_map import WeightMap

    manifest = Manifest.load(folder)
    rng = np.random.default_rng(seed)
    tensors, used = {}, []
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS), ("text_encoder_2", TEXT_TARGETS)):
        if not manifest.has(component) or not manifest.components[component].get("weight_map"):
            continue
        weight_map = WeightMap.load(manifest, component)
        prefix, renamed = kohya_names(manifest, component, weight_map)
        used.append(component)
        for name, shape in sorted(weight_map.modules().items()):
            if not name.endswith(targets) or len(shape) not in (2, 4):
                continue
            key = prefix + renamed.get(name, name).replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = rng.standard_normal((rank, *shape[1:]), dtype=np.float32) * np.float32(0.01)
            up_shape = (shape[0], rank) if len(shape) == 2 else (shape[0], rank, 1, 1)
            tensors[f"{key}.lora_up.weight"] = rng.standard_normal(up_shape, dtype=np.float32) * np.float32(0.01)
            tensors[f"{key}.alpha"] = np.array(rank / 2, dtype=np.float32)
    save_file(tensors, str(path))
    return len(tensors) // 3, used


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def median(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "all": [round(x, 3) for x in values]}


def call_seconds(pipe, call: dict, repeats: int = 2) -> dict:
    """One warm-up call, then `repeats` timed ones: the run time of the pipeline as it stands."""
    pipe("a photo of a cat", **call)
    return median([timed(lambda: pipe("a photo of a cat", **call)) for _ in range(repeats)])


def measure(folder: Path, backend: str, a: Path, b: Path, repeats: int, size: int, unet_mb: float) -> dict:
    """One backend's fresh loads, switches, memory, run time and exactness."""
    from sdrt.bench.memory import RssSampler, release_memory, rss_mb
    from sdrt.runtime import Pipeline

    name, _, precision = backend.partition(":")
    options = {"precision": precision} if precision else {}
    loads = []
    for _ in range(repeats):
        holder: list = []
        loads.append(timed(lambda: holder.append(Pipeline.load(folder, name, **options))))
        holder[0].close()
        del holder
        release_memory()
    pipe = Pipeline.load(folder, name, **options)
    memory: dict[str, dict[str, float | None]] = {}

    def switch(label: str, loras: list) -> float:
        before = rss_mb()
        with RssSampler() as sampler:
            seconds = timed(lambda: pipe.set_loras(loras))
        anon_rise = None if sampler.anon_peak_mb is None else round(sampler.anon_peak_mb - sampler.anon_start_mb, 1)
        memory[label] = {"rss_before_mb": round(before, 1), "rss_peak_mb": round(sampler.peak_mb, 1),
                         "rss_after_mb": round(rss_mb(), 1), "anon_rise_mb": anon_rise}
        return seconds

    # the first switch may write the backend's one-time artefacts (ort-cpu: the LoRA-ready graphs)
    first_switch = switch("first none -> A", [(a, 0.8)])
    switch("first A -> none", [])
    phases = {"none -> A": [(a, 0.8)], "A -> B": [(b, 0.8)], "B -> A": [(a, 0.8)], "A -> none": []}
    times: dict[str, list[float]] = {k: [] for k in phases}
    for _ in range(repeats):
        for label, loras in phases.items():
            times[label].append(switch(label, loras))
    rise = max(v["rss_peak_mb"] - v["rss_before_mb"] for v in memory.values())
    anon = [v["anon_rise_mb"] for v in memory.values() if v["anon_rise_mb"] is not None]

    call = dict(num_inference_steps=2, height=size, width=size, seed=3, output_type="np", scheduler="ddim")
    base = pipe("a photo of a cat", **call).images
    base_call = call_seconds(pipe, call)
    pipe.set_loras([(a, 0.8)])
    first = pipe("a photo of a cat", **call).images
    lora_call = call_seconds(pipe, call)
    pipe.set_loras([(b, 0.8)])
    pipe.set_loras([(a, 0.8)])
    again = pipe("a photo of a cat", **call).images
    pipe.set_loras([])
    unloaded = pipe("a photo of a cat", **call).images
    pipe.close()
    del pipe
    release_memory()
    fresh = statistics.median(loads[1:] or loads)  # later loads: the engine caches are warm
    switch_ab = statistics.median(times["A -> B"])
    return {
        "backend": backend, "first_load_s": round(loads[0], 3), "fresh_load_s": median(loads[1:] or loads),
        "first_switch_s": round(first_switch, 3),
        "switch_s": {k: median(v) for k, v in times.items()},
        "switch_over_fresh_load": round(switch_ab / fresh, 3),
        "call_2_steps_s": {"base": base_call, "with LoRA A": lora_call, "size": size},
        "memory_last_repeat": memory, "max_switch_rss_rise_mb": round(rise, 1),
        "max_switch_anon_rise_mb": max(anon) if anon else None,
        "no_second_unet_copy": bool((max(anon) if anon else rise) < unet_mb),
        "exact": {"B -> A equals A": bool(np.array_equal(first, again)),
                  "unload equals base": bool(np.array_equal(unloaded, base)),
                  "A differs from base": bool(not np.array_equal(first, base))},
    }


def markdown(result: dict) -> list[str]:
    export = result["export_seconds"]
    machine = result["machine"]
    lines = [f"# LoRA switch on {Path(result['model']).name}", "",
             f"{result['lora_layers']} LoRA layers ({', '.join(result['lora_components'])}), rank {result['rank']}; "
             f"medians of {result['repeats']}; UNet files {result['unet_files_mb']} MB; {machine['cpu_model']} "
             f"({', '.join(machine['cpu_features'])}), {machine['logical_cores']} cores, "
             f"{machine['memory_gb']} GB; load average at start {machine['load_average_at_start']}, at end "
             f"{machine['load_average_at_end']}.", ""]
    runs = result["backends"]
    lines += ["| what | " + " | ".join(r["backend"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    lines.append("| first Pipeline.load s (may compile) | " + " | ".join(str(r["first_load_s"]) for r in runs) + " |")
    lines.append("| later Pipeline.load s (warm caches) | " + " | ".join(str(r["fresh_load_s"]["median"]) for r in runs)
                 + " |")
    for phase in runs[0]["switch_s"]:
        lines.append(f"| set_loras {phase} s | " + " | ".join(str(r["switch_s"][phase]["median"]) for r in runs) + " |")
    lines.append("| first set_loras none -> A s (may write one-time graphs) | " + " | ".join(
        str(r["first_switch_s"]) for r in runs) + " |")
    lines.append("| A -> B / later load | " + " | ".join(str(r["switch_over_fresh_load"]) for r in runs) + " |")
    if export:
        lines.append("| A -> B / re-export | " + " | ".join(
            str(round(r["switch_s"]["A -> B"]["median"] / export, 4)) for r in runs) + " |")
    lines.append("| max RSS rise in a switch MB | " + " | ".join(str(r["max_switch_rss_rise_mb"]) for r in runs) + " |")
    lines.append("| max anonymous-memory rise in a switch MB | " + " | ".join(
        str(r["max_switch_anon_rise_mb"]) for r in runs) + " |")
    lines.append("| 2-step call s, base / with LoRA | " + " | ".join(
        f"{r['call_2_steps_s']['base']['median']} / {r['call_2_steps_s']['with LoRA A']['median']}" for r in runs) + " |")
    lines.append("| exact (B->A, unload) | " + " | ".join(
        str(r["exact"]["B -> A equals A"] and r["exact"]["unload equals base"]) for r in runs) + " |")
    if export:
        lines += ["", f"re-export (sdrt export of this folder): {export} s, {result['export_note'] or 'measured by the caller'}."]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sdrt.bench.lora_switch", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--backends", default="ort-cpu,openvino", help="comma-separated NAME or NAME:PRECISION")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="image side for the bit-exactness check")
    ap.add_argument("--export-seconds", type=float, default=None)
    ap.add_argument("--export-note", default=None, help="how --export-seconds was measured")
    ap.add_argument("--out", default=None, help="parent folder of the result folder (default: benchmarks/results, "
                                                "benchmarks/dryruns for a tiny preset's folder)")
    args = ap.parse_args(argv)

    from sdrt.bench.environment import describe_machine

    machine = describe_machine()
    folder = Path(args.model)
    work = Path(tempfile.mkdtemp(prefix="sdrt-lora-bench-"))
    a, b = work / "style_a.safetensors", work / "style_b.safetensors"
    layers, components = random_kohya(folder, a, args.rank, 1)
    random_kohya(folder, b, args.rank, 2)
    unet_mb = sum(p.stat().st_size for p in (folder / "unet").glob("model.onnx*")) / 2**20
    runs = [measure(folder, backend, a, b, args.repeats, args.size, unet_mb) for backend in args.backends.split(",")]
    result = {
        "model": str(folder), "rank": args.rank, "lora_layers": layers, "lora_components": components,
        "lora_file_mb": round(a.stat().st_size / 2**20, 1), "unet_files_mb": round(unet_mb, 1),
        "repeats": args.repeats, "export_seconds": args.export_seconds, "export_note": args.export_note,
        "backends": runs,
        "machine": {**machine, "platform": platform.platform(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    parent = Path(args.out) if args.out else DRY_RUN_OUT if is_dry_run(folder) else DEFAULT_OUT
    out = parent / f"lora-switch-{date.today().isoformat()}-{folder.name}"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "lora_switch.json", json.dumps(result, indent=2) + "\n")
    lines = markdown(result)
    write_text(out / "lora_switch.md", "\n".join(lines) + "\n")
    record_run(out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
