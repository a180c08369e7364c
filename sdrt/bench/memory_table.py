"""Peak RSS of one generation per CPU contender and size, each cell in its own fresh process.

    python -m sdrt.bench.memory_table run --model sd15 [--onnx DIR] [--sizes 512,768,1024]
        [--contenders diffusers-fp32,ort-cpu,openvino-f32,openvino-bf16] [--vae-tiling] [--out DIR]
        [--timeout 1800] [--max-rss-gb 20] [--retry-failed]
    python -m sdrt.bench.memory_table render DIR      # result.md again from the cells

A cell is one contender at one square size: a fresh ``python -m sdrt.bench.memory_table cell``
process loads the contender (timed; its own peak is the "load peak"), resets the kernel's RSS
high-water mark, then generates once -- 1 denoising step with classifier-free guidance (UNet batch
2), DDIM, the same injected latents for every contender, and the VAE decode. The generation's peak
is the kernel's VmHWM after the call (nothing can slip between samples), and a 5 ms sampler
(``sdrt.bench.memory.RssSampler``) splits it into the peak before the VAE decode (text encoder +
UNet) and the peak during it: the decode starts ``vae_decode_s`` before the call returns.

Cells run one after another (peak RSS is per process), smallest size first, each under a wall-time
limit and an RSS watchdog (the parent kills a cell whose tree grows past ``--max-rss-gb``: the
machine is shared). Each cell's record is written to ``DIR/cells/<contender>-<size>.json`` when it
ends, so a second ``run`` with the same ``--out`` skips finished cells (and failed ones unless
``--retry-failed``). ``DIR/result.json`` and ``result.md`` are rewritten after every cell.

A contender named ``NAME+tiling`` is NAME with the tiled VAE decode: sdrt's ``vae_tiling=True``,
diffusers' ``vae.enable_tiling()``, both at the default tile (the VAE's sample_size, 512 px for
SD 1.5); ``--vae-tiling`` runs every listed contender that way. Its cells are their own
(``ort-cpu+tiling-1024.json``), so tiled and whole cells share one ``--out`` and resume alike; the
ratio in the table is always to the untiled diffusers fp32 cell of the same size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sdrt.atomic import write_text
from sdrt.bench.output import default_folder
from sdrt.bench.provenance import record_run

CONTENDERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name -> (kind, backend or dtype, options); "sdrt" runs sdrt's Pipeline, "reference" diffusers
    "diffusers-fp32": ("reference", "fp32", {}),
    "ort-cpu": ("sdrt", "ort-cpu", {}),                       # the default: Attention -> MultiHeadAttention
    "ort-cpu-plain": ("sdrt", "ort-cpu", {"graph_rewrites": ()}),  # ONNX Runtime's own Attention kernel
    "openvino-f32": ("sdrt", "openvino", {"precision": "f32"}),
    "openvino-bf16": ("sdrt", "openvino", {"precision": "bf16"}),
    # static shapes: compiled for the prepared size, so the CPU plugin can plan and reuse its buffers
    "openvino-f32-static": ("sdrt", "openvino", {"precision": "f32", "shapes": "static"}),
}
DEFAULT_CONTENDERS = ("diffusers-fp32", "ort-cpu", "openvino-f32", "openvino-bf16")
TILING = "+tiling"  # suffix: the contender with the tiled VAE decode
REFERENCE = "diffusers-fp32"
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
SCHEDULER = "ddim"  # one UNet call per step (PNDM's first step calls it twice)


def cell_name(contender: str, size: int) -> str:
    return f"{contender}-{size}"


def split_name(name: str) -> tuple[str, bool]:
    """"ort-cpu+tiling" -> ("ort-cpu", True); an unknown base is a one-line error."""
    base, tiled = (name[:-len(TILING)], True) if name.endswith(TILING) else (name, False)
    if base not in CONTENDERS:
        raise SystemExit(f"unknown contender {name}: choose from {', '.join(CONTENDERS)}, each optionally with "
                         f"{TILING} (the tiled VAE decode)")
    return base, tiled


# -- one cell, in its own process -------------------------------------------------------------------
def make_contender(name: str, folder: Path) -> Any:
    from sdrt.bench.contenders import ReferenceContender, SdrtContender

    base, tiled = split_name(name)
    kind, what, options = CONTENDERS[base]
    if kind == "reference":
        return ReferenceContender(folder, dtype_name=what, vae_tiling=tiled)
    return SdrtContender(folder, what, {**options, **({"vae_tiling": True} if tiled else {})}, label=name)


def measure_cell(folder: Path, contender: str, size: int) -> dict[str, Any]:
    """Load ``contender``, generate once at size x size; times and peaks (MB) of this process."""
    import numpy as np

    from sdrt.bench.contenders import Generation
    from sdrt.bench.memory import RssSampler, kernel_peak_mb, peak_since, reset_kernel_peak, rss_mb
    from sdrt.manifest import Manifest

    pipeline = Manifest.load(folder).pipeline
    f, channels = int(pipeline["vae_scale_factor"]), int(pipeline["latent_channels"])
    latents = np.random.default_rng(0).standard_normal((1, channels, size // f, size // f)).astype(np.float32)
    gen = Generation(prompt=PROMPT, steps=1, guidance_scale=GUIDANCE, height=size, width=size, batch=1,
                     scheduler=SCHEDULER, latents=latents)
    runner = make_contender(contender, folder)
    runner.prepare()  # the reference's diffusers folder, written once (untimed)
    start = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - start
    load_peak, after_load = kernel_peak_mb(), rss_mb()
    exact = reset_kernel_peak()
    with RssSampler(interval_s=0.005, keep_samples=True) as rss:
        images, times, _ = runner(gen)
        returned = time.perf_counter() - rss.t0
    generation_peak = kernel_peak_mb() if exact else None
    vae_start = returned - times.vae_decode_s
    runner.close()
    return {
        "contender": contender, "size": size, "status": "ok", "vae_tiling": split_name(contender)[1],
        "load_s": round(load_s, 3), "call_s": round(times.end_to_end_s, 3),
        "text_encoder_s": round(times.text_encoder_s, 3), "unet_s": round(sum(times.unet_steps_s), 3),
        "vae_decode_s": round(times.vae_decode_s, 3),
        "rss_after_load_mb": round(after_load, 1), "load_peak_mb": _round(load_peak),
        "peak_mb": _round(generation_peak if generation_peak is not None else rss.peak_mb),
        "peak_source": "VmHWM (kernel)" if generation_peak is not None else "sampler (5 ms)",
        "sampled_peak_mb": round(rss.peak_mb, 1),
        "before_vae_peak_mb": _round(peak_since(rss.samples, 0.0, vae_start)),
        "vae_peak_mb": _round(peak_since(rss.samples, vae_start)),
        "image_mean": round(float(np.mean(images)), 4),  # a sanity figure: not blank, not NaN
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- the run: cells in fresh processes, resumable ----------------------------------------------------
def _tree_rss_mb(proc: Any) -> float:
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def child_command(folder: Path, contender: str, size: int, record: Path) -> list[str]:
    return [sys.executable, "-m", "sdrt.bench.memory_table", "cell", "--model", str(folder),
            "--contender", contender, "--size", str(size), "--record", str(record)]


def run_cell(folder: Path, contender: str, size: int, record: Path, timeout_s: float,
             max_rss_mb: float | None) -> dict[str, Any]:
    """One cell in a child process; the child writes ``record`` itself, the parent writes failures."""
    import psutil

    cmd = child_command(folder, contender, size, record)
    log = record.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        proc = psutil.Process(child.pid)
        why, most = None, 0.0
        while child.poll() is None:
            most = max(most, _tree_rss_mb(proc))
            if time.perf_counter() - start > timeout_s:
                why = f"timeout after {timeout_s:.0f} s"
            elif max_rss_mb is not None and most > max_rss_mb:
                why = f"over the RSS limit ({most:,.0f} MB > {max_rss_mb:,.0f} MB)"
            if why:
                child.kill()
                child.wait()
                break
            time.sleep(0.25)
    wall = time.perf_counter() - start
    if why is None and child.returncode == 0 and record.is_file():
        result = json.loads(record.read_text())
        result["wall_s"] = round(wall, 1)
    else:
        if why is None:
            code = child.returncode
            why = "killed by SIGKILL (the kernel's OOM killer?)" if code == -9 else f"exit status {code}"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        result = {"contender": contender, "size": size, "status": "failed", "why": why,
                  "watchdog_peak_mb": round(most, 1), "log_tail": tail, "wall_s": round(wall, 1)}
    write_text(record, json.dumps(result, indent=2) + "\n")
    return result


def load_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def run(args: argparse.Namespace) -> Path:
    from sdrt.bench.environment import describe_machine
    from sdrt.bench.models import onnx_folder

    folder = onnx_folder(args.model, args.onnx)
    sizes = [int(s) for s in args.sizes.split(",")]
    contenders = [c + (TILING if getattr(args, "vae_tiling", False) and not c.endswith(TILING) else "")
                  for c in args.contenders.split(",")]
    for name in contenders:
        split_name(name)
    out = Path(args.out) if args.out else default_folder("memory", args.model)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    record_run(out)  # a resumed run with other arguments adds its own entry
    meta_path = out / "machine.json"
    if not meta_path.is_file():
        write_text(meta_path, json.dumps({"model": str(args.model), "onnx": str(folder), "machine": describe_machine(),
                                          "started": datetime.now().isoformat(timespec="seconds")}, indent=2) + "\n")
    for size in sizes:
        for contender in contenders:
            record = out / "cells" / f"{cell_name(contender, size)}.json"
            if record.is_file():
                done = json.loads(record.read_text())
                if done.get("status") == "ok" or not args.retry_failed:
                    print(f"{cell_name(contender, size)}: done before ({done.get('status')}), skipped", flush=True)
                    continue
            print(f"{cell_name(contender, size)}: running ...", flush=True)
            result = run_cell(folder, contender, size, record, args.timeout,
                              args.max_rss_gb * 1024 if args.max_rss_gb else None)
            print(f"{cell_name(contender, size)}: {summary_line(result)}", flush=True)
            write_results(out)
    return out


def summary_line(cell: dict[str, Any]) -> str:
    if cell["status"] != "ok":
        return f"FAILED ({cell['why']})"
    return (f"peak {cell['peak_mb']:,.0f} MB (before the VAE decode {cell['before_vae_peak_mb'] or 0:,.0f}, "
            f"during it {cell['vae_peak_mb'] or 0:,.0f}), load {cell['load_s']:.1f} s, call {cell['call_s']:.1f} s")


# -- result.json / result.md -------------------------------------------------------------------------
def write_results(out: Path) -> None:
    meta = json.loads((out / "machine.json").read_text())
    cells = load_cells(out)
    write_text(out / "result.json", json.dumps({"schema": "sdrt-memory-table", "version": 1, **meta,
                                                "protocol": protocol(), "cells": cells}, indent=2) + "\n")
    write_text(out / "result.md", render(meta, cells))


def protocol() -> dict[str, Any]:
    return {"steps": 1, "guidance_scale": GUIDANCE, "unet_batch": 2, "scheduler": SCHEDULER, "prompt": PROMPT,
            "latents": "numpy default_rng(0) standard normal", "process": "one fresh process per cell",
            "peak": "VmHWM after resetting it (clear_refs 5) when load finished; phases from a 5 ms sampler"}


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def render(meta: dict[str, Any], cells: list[dict[str, Any]]) -> str:
    machine = meta["machine"]
    by = {(c["contender"], c["size"]): c for c in cells}
    contenders = [c for base in CONTENDERS for c in (base, base + TILING) if any(k[0] == c for k in by)]
    sizes = sorted({c["size"] for c in cells})
    lines = [f"# Peak RSS of one generation: {meta['model']}", "",
             "Peak RSS (MB) of one generation (1 DDIM step with guidance, UNet batch 2, then the VAE decode), "
             "each cell in its own fresh process; in brackets the ratio to diffusers fp32 at the same size "
             f"(untiled). {TILING}: the tiled VAE decode (sdrt vae_tiling, diffusers vae.enable_tiling(); "
             "default tile, the VAE's sample_size).", "",
             "| px | " + " | ".join(contenders) + " |", "|---|" + "---:|" * len(contenders)]
    for size in sizes:
        ref = by.get((REFERENCE, size))
        row = []
        for name in contenders:
            cell = by.get((name, size))
            if cell is None:
                row.append("not run")
            elif cell["status"] != "ok":
                row.append(f"failed: {cell['why']}")
            else:
                ratio = (f" ({cell['peak_mb'] / ref['peak_mb']:.2f}×)" if ref and ref.get("status") == "ok"
                         and name != REFERENCE else "")
                row.append(f"{_mb(cell['peak_mb'])}{ratio}")
        lines.append(f"| {size}² | " + " | ".join(row) + " |")
    lines += ["", "Per cell: the peak before the VAE decode (text encoder + UNet step) and during it, "
              "RSS after load, the load's own peak, and times (s).", "",
              "| cell | peak | before VAE | during VAE | after load | peak − after load | load peak | load s | UNet s | "
              "VAE s | wall s |", "|---|" + "---:|" * 10]
    for size in sizes:
        for name in contenders:
            c = by.get((name, size))
            if c is None or c["status"] != "ok":
                continue
            lines.append(f"| {name} {size}² | {_mb(c['peak_mb'])} | {_mb(c['before_vae_peak_mb'])} | "
                         f"{_mb(c['vae_peak_mb'])} | {_mb(c['rss_after_load_mb'])} | {_mb(c['peak_mb'] - c['rss_after_load_mb'])} | "
                         f"{_mb(c['load_peak_mb'])} | "
                         f"{c['load_s']:.1f} | {c['unet_s']:.1f} | {c['vae_decode_s']:.1f} | {c.get('wall_s', 0):.0f} |")
    features = ", ".join(machine.get("cpu_features") or [])
    lines += ["", "## Method", "",
              f"- **CPU**: {machine['cpu_model']} — {machine['physical_cores']} physical / "
              f"{machine['logical_cores']} logical cores, {features}; memory {machine['memory_gb']} GB",
              f"- **model**: {meta['model']} (ONNX folder {meta['onnx']}); the reference is diffusers on the "
              "same weights (PyTorch SDPA)",
              "- **protocol**: " + "; ".join(f"{k}: {v}" for k, v in protocol().items()),
              f"- **load average at start**: {machine.get('load_average_at_start')}; started {meta['started']}",
              "- **versions**: " + ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items() if v),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.memory_table", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="every cell, serially, resuming a partly done --out")
    r.add_argument("--model", required=True, help="a preset, a diffusers folder or an ONNX folder")
    r.add_argument("--onnx", help="an existing export of --model")
    r.add_argument("--sizes", default="512,768,1024")
    r.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                   help=f"of: {', '.join(CONTENDERS)}, each optionally NAME{TILING} (tiled VAE decode)")
    r.add_argument("--vae-tiling", action="store_true", help=f"run every contender as NAME{TILING}")
    r.add_argument("--out", help="results folder (default benchmarks/results/memory-MODEL-DATE, benchmarks/dryruns/ for a "
                                  "tiny preset); reused to resume")
    r.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell (default 1800)")
    r.add_argument("--max-rss-gb", type=float, default=20.0, help="kill a cell past this RSS (0: no limit)")
    r.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    c = sub.add_parser("cell", help="(internal) one cell in this process")
    c.add_argument("--model", required=True)
    c.add_argument("--contender", required=True, help=f"NAME or NAME{TILING}")
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--record", required=True)
    g = sub.add_parser("render", help="result.json and result.md again from DIR/cells")
    g.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "cell":
        result = measure_cell(Path(args.model), args.contender, args.size)
        write_text(Path(args.record), json.dumps(result, indent=2) + "\n")
    elif args.command == "run":
        print(f"results: {run(args)}")
    else:
        write_results(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
