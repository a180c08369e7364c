"""Export full-size Flux on this machine, streamed, one component at a time, and measure it.

`python -m sdrt.bench.flux_full_export --out DIR [--preset flux-schnell] [--precision fp16] [--keep]`
first writes the preset's folder (`sdrt preset PRESET --out DIR/source`: fp16 weights, one module at a
time), then runs `sdrt export --model DIR/source --components C [--stream C]` for each component group
in its own process under `/usr/bin/time -v` (wall time, peak RSS: the process's whole life; T5 and the
transformer streamed: sdrt.export.streamed), records the folder's size on disk and what `sdrt.json`
says (precision, storage, notes, check), then deletes the exports unless `--keep` (the transformer
alone is 24 GB in fp16: this machine's disk is shared). A step that fails is recorded with its last
error line and the next still runs. Results go to `benchmarks/results/flux-full-export-DATE/`
(result.json, result.md, RUN.md). Run it under `flock /work/cache/heavy.lock`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

#: the component groups exported one process at a time (the VAE halves share one source module)
GROUPS = (("text_encoder",), ("text_encoder_2",), ("transformer",), ("vae_decoder", "vae_encoder"))
#: the components exported streamed (larger than memory in fp32; `--stream`)
STREAMED = ("text_encoder_2", "transformer")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export_command(source: Path, precision: str, components: tuple[str, ...], out: Path) -> list[str]:
    streamed = [c for c in components if c in STREAMED]
    return [sys.executable, "-m", "sdrt.cli", "export", "--model", str(source), "--out", str(out), "--precision",
            precision, "--force", "--components", *components, *(["--stream", *streamed] if streamed else [])]


def run_step(command: list[str], components: tuple[str, ...], out: Path) -> dict[str, Any]:
    """One `sdrt` process: its wall time, peak RSS, exit code, what it wrote (an export: its sdrt.json)."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    result: dict[str, Any] = {"components": list(components), "command": " ".join(command), "exit_code": done.returncode,
                              "wall_s": round(seconds, 1), "peak_rss_gib": round(int(peak.group(1)) / 2**20, 2) if peak else None,
                              "log": [line for line in done.stdout.splitlines() if line.strip()][-8:]}
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    if errors:
        result["error"] = errors[-1]
    if done.returncode == 0 and (out / "sdrt.json").is_file():
        manifest = json.loads((out / "sdrt.json").read_text())
        result["bytes_on_disk"] = folder_bytes(out)
        result["components_written"] = {name: {k: entry.get(k) for k in ("precision", "storage", "precision_note",
                                                                        "bytes", "export_seconds", "check")}
                                        for name, entry in manifest["components"].items()}
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Full-size {result['preset']} export, streamed ({result['date']})", "",
             f"Machine: {result['machine']['cpu']} ({', '.join(result['machine']['isa'])}), "
             f"{result['machine']['memory_gib']} GiB memory, {result['machine']['cores']} cores, load "
             f"{result['machine']['load_average_at_start']} at start; precision {result['precision']}; each "
             f"component group in its own process (`/usr/bin/time -v`).", "",
             "| step | exit | wall | peak RSS | on disk |", "|---|---|---|---|---|"]
    for run in result["runs"]:
        size = f"{run['bytes_on_disk'] / 2**30:.1f} GiB" if "bytes_on_disk" in run else "—"
        lines.append(f"| {', '.join(run['components'])} | {run['exit_code']} | {run['wall_s']:.0f} s | "
                     f"{run['peak_rss_gib']} GiB | {size} |")
    failed = [run for run in result["runs"] if run["exit_code"] != 0]
    lines += ["", f"Total: {sum(r['wall_s'] for r in result['runs']):.0f} s; the largest peak RSS "
              f"{max(r['peak_rss_gib'] or 0 for r in result['runs'])} GiB."]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{', '.join(r['components'])}: {r.get('error', 'see result.json')}"
                                            for r in failed)]
    lines += [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sdrt.bench.environment import describe_machine
    from sdrt.bench.provenance import write_result

    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.flux_full_export", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="scratch folder for the exports (deleted unless --keep)")
    parser.add_argument("--preset", default="flux-schnell")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--keep", action="store_true", help="keep the exported folders")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results/flux-full-export-DATE)")
    args = parser.parse_args(argv)
    scratch = Path(args.out)
    machine = describe_machine()
    result: dict[str, Any] = {"preset": args.preset, "precision": args.precision, "date": date.today().isoformat(),
                              "machine": {"cpu": machine["cpu_model"], "cores": machine["logical_cores"],
                                          "memory_gib": machine["memory_gb"], "isa": machine["cpu_features"],
                                          "load_average_at_start": machine["load_average_at_start"]},
                              "runs": []}
    results = Path(args.results or f"benchmarks/results/flux-full-export-{result['date']}")
    source = scratch / "source"
    preset = [sys.executable, "-m", "sdrt.cli", "preset", args.preset, "--out", str(source), "--force"]
    steps = [(preset, ("preset",), source)]
    steps += [(export_command(source, args.precision, group, scratch / "-".join(group)), group,
               scratch / "-".join(group)) for group in GROUPS]
    for command, group, out in steps:
        run = run_step(command, group, out)
        result["runs"].append(run)
        print(f"{', '.join(group)}: exit {run['exit_code']}, {run['wall_s']} s, peak RSS {run['peak_rss_gib']} GiB",
              flush=True)
        if not args.keep and out != source:
            shutil.rmtree(out, ignore_errors=True)
        write_result(results, result, markdown(result))  # after each group: a long run keeps what it measured
    if not args.keep:
        shutil.rmtree(source, ignore_errors=True)
    return 0 if all(run["exit_code"] == 0 for run in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
