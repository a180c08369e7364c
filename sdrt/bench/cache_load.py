"""First load against a cached second load of the openvino backend, each load in a fresh process.

    python -m sdrt.bench.cache_load run --model FOLDER [--precisions f32,bf16] [--warm 2] [--out DIR]

For each precision, a scratch copy of the exported folder (symlinks to its files, but its own
empty ``engines/``, so the folder's own cache is neither used nor touched) is loaded by
``Pipeline.load(folder, "openvino", precision=P)`` in a new process: the first load compiles every
component and writes OpenVINO's cache; then ``--warm`` more processes load it again from that
cache. Before the first load the ONNX files are read once, so both kinds of load find them in the
OS page cache and the ratio compares compiling with importing, not a cold disk with a warm one.
Reported per load: wall time of ``Pipeline.load``, each component's compile/import seconds and
whether OpenVINO says it came from the cache, and the process's peak RSS. The target (issue 10):
second load <= 1/3 of the first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sdrt.atomic import temp_folder
from sdrt.bench.output import default_folder
from sdrt.bench.provenance import write_result
from sdrt.manifest import ENGINES_DIR


def scratch_folder(folder: Path, parent: Path) -> Path:
    """``folder``'s entries as symlinks in a new directory under ``parent``, without ``engines/``."""
    scratch = temp_folder(parent, "sdrt-cache-load-")  # deleted after the run (see run)
    for entry in folder.iterdir():
        if entry.name != ENGINES_DIR:
            (scratch / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return scratch


def preread(folder: Path, chunk: int = 64 * 2**20) -> int:
    """Read every file of the export (not its engines/) once, so later loads find them in the page cache."""
    total = 0
    root = folder.resolve()
    for path in sorted(root.rglob("*")):
        if path.is_file() and ENGINES_DIR not in path.relative_to(root).parts:
            with open(path, "rb") as f:
                while data := f.read(chunk):
                    total += len(data)
    return total


def measure_load(folder: Path, precision: str) -> dict[str, Any]:
    """One Pipeline.load in this process: seconds, per-component cache status, peak RSS (MB)."""
    from sdrt.bench.memory import kernel_peak_mb
    from sdrt.runtime.pipeline import Pipeline

    start = time.perf_counter()
    pipe = Pipeline.load(folder, "openvino", precision=precision)
    seconds = time.perf_counter() - start
    components = {name: {"seconds": round(e.compile_seconds or 0.0, 3), "from_cache": e.loaded_from_cache}
                  for name, e in pipe.engines.items()}
    pipe.close()
    return {"load_s": round(seconds, 3), "components": components, "peak_mb": kernel_peak_mb()}


def load_in_child(folder: Path, precision: str, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "sdrt.bench.cache_load", "load", "--model", str(folder), "--precision", precision]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"a load of {folder} at {precision} failed ({last})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(first: dict[str, Any], warm: list[dict[str, Any]]) -> dict[str, Any]:
    """The first load against the median cached one: whole Pipeline.load, and the engines alone
    (the sum of the components' compile or import seconds, without imports and tokenizers)."""
    if not warm:
        raise ValueError("no cached load to compare with the first")
    second = statistics.median(w["load_s"] for w in warm)
    engines = lambda load: sum(c["seconds"] for c in load["components"].values())  # noqa: E731
    first_engines, warm_engines = engines(first), statistics.median(engines(w) for w in warm)
    cached = all(c["from_cache"] for w in warm for c in w["components"].values())
    return {"first": first, "warm": warm, "first_s": first["load_s"], "warm_median_s": round(second, 3),
            "ratio": round(second / first["load_s"], 3), "engines_first_s": round(first_engines, 3),
            "engines_warm_median_s": round(warm_engines, 3),
            "engines_ratio": round(warm_engines / first_engines, 3) if first_engines else None,
            "all_warm_components_from_cache": cached, "meets_one_third": second <= first["load_s"] / 3}


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"# openvino: first load vs cached load — {result['model']}", "",
             "| precision | first load (s, empty cache) | cached load (s, median) | ratio | ≤ 1/3? | "
             "engines only: first → cached (s) | engines ratio | from cache |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for precision, r in result["precisions"].items():
        lines.append(f"| {precision} | {r['first_s']:.2f} | {r['warm_median_s']:.2f} | {r['ratio']:.2f} | "
                     f"{'yes' if r['meets_one_third'] else 'no'} | {r['engines_first_s']:.2f} → {r['engines_warm_median_s']:.2f} | "
                     f"{r['engines_ratio'] or 0:.2f} | "
                     f"{'every component' if r['all_warm_components_from_cache'] else 'NOT every component'} |")
    lines += ["", "Ratio: cached / first `Pipeline.load` (imports, tokenizers, Core() included); engines only: "
              "the sum of the components' compile (first) or cache import (cached) seconds.", "",
              "Per component (s): first → cached loads.", ""]
    for precision, r in result["precisions"].items():
        parts = [f"{name} {c['seconds']:.2f} → " + ", ".join(f"{w['components'][name]['seconds']:.2f}" for w in r["warm"])
                 for name, c in r["first"]["components"].items()]
        lines.append(f"- **{precision}**: " + "; ".join(parts) +
                     f"; peak RSS first {r['first']['peak_mb'] or 0:,.0f} MB, cached "
                     f"{max(w['peak_mb'] or 0 for w in r['warm']):,.0f} MB")
    lines += ["", "## Method", "",
              "- each load is `Pipeline.load(folder, \"openvino\", precision=P)` in a fresh process; the first on a "
              "scratch folder with an empty `engines/` (symlinks to the export), the others on the cache it wrote",
              f"- the ONNX files were read once before ({result['preread_mb']:,.0f} MB), so every load finds them "
              "in the page cache",
              f"- **CPU**: {machine['cpu_model']}, {machine['physical_cores']} cores, "
              f"{', '.join(machine.get('cpu_features') or [])}; load average at start {machine['load_average_at_start']}",
              f"- **versions**: openvino {machine['versions'].get('openvino')}; {result['date']}", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Path:
    from sdrt.bench.environment import describe_machine
    from sdrt.bench.models import onnx_folder

    folder = onnx_folder(args.model, args.onnx)
    out = Path(args.out) if args.out else default_folder("openvino-cache", args.model)
    result: dict[str, Any] = {"schema": "sdrt-cache-load", "version": 1, "model": str(args.model),
                              "onnx": str(folder), "machine": describe_machine(),
                              "date": datetime.now().isoformat(timespec="seconds"),
                              "preread_mb": round(preread(folder) / 2**20, 1), "precisions": {}}
    for precision in args.precisions.split(","):
        scratch = scratch_folder(folder, Path(args.scratch) if args.scratch else folder.resolve().parent)
        try:
            first = load_in_child(scratch, precision, args.timeout)
            print(f"{precision}: first load {first['load_s']:.2f} s", flush=True)
            warm = []
            for i in range(args.warm):
                warm.append(load_in_child(scratch, precision, args.timeout))
                print(f"{precision}: cached load {i + 1}: {warm[-1]['load_s']:.2f} s", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # the links and the scratch cache, not the export
        result["precisions"][precision] = summarize(first, warm)
    return write_result(out, result, render(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.cache_load", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True, help="a preset, a diffusers folder or an ONNX folder")
    r.add_argument("--onnx", help="an existing export of --model")
    r.add_argument("--precisions", default="f32,bf16")
    r.add_argument("--warm", type=int, default=2, help="cached loads after the first (default 2)")
    r.add_argument("--out", help="results folder (default benchmarks/results/openvino-cache-MODEL-DATE, "
                                  "benchmarks/dryruns/ for a tiny preset)")
    r.add_argument("--scratch", help="where the scratch folder goes (default: beside the export)")
    r.add_argument("--timeout", type=float, default=1200.0, help="seconds per load (default 1200)")
    one = sub.add_parser("load", help="(internal) one load in this process; prints a JSON line")
    one.add_argument("--model", required=True)
    one.add_argument("--precision", required=True)
    args = p.parse_args(argv)
    if args.command == "load":
        print(json.dumps(measure_load(Path(args.model), args.precision)))
    else:
        print(f"results: {run(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
