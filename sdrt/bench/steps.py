"""Run a user's command as one measured step of a results folder: wall time and peak memory, logged as it goes.

    python -m sdrt.bench.steps --out benchmarks/results/NAME --step preset -- sdrt preset sd3.5-medium --out X

The command runs as a child process, its output copied to ``<out>/<step>.log`` line by line. A sampler
thread (sdrt.bench.memory's poller) reads, every 0.2 s, the resident set size of the child and all its
descendants (summed) and the machine's MemAvailable. When the command ends, the step's row — command,
exit status, wall time, peak RSS, peak anonymous RSS (what cannot be paged out to a file), the least
memory available during it, the load average before and after — is added to ``<out>/result.json`` and
the table of ``<out>/result.md`` (with the CPU model and ISA), and RUN.md gets this command
(sdrt.bench.provenance), so a long session's numbers are on disk after each step. A step run again
replaces its row.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from sdrt.bench.memory import start_poller, stop_poller

GIB = 2.0**30


class TreeSampler:
    """Peak RSS (and anonymous RSS) of a process and its descendants, and the least MemAvailable, while open."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_rss = self.peak_anon = 0.0
        self.least_available: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        rss = anon = 0.0
        try:
            tree = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return
        for proc in tree:
            try:
                info = proc.memory_info()  # Linux: rss and shared (file-backed) pages; rss - shared is anonymous
                rss += info.rss
                anon += info.rss - getattr(info, "shared", 0)
            except psutil.Error:
                continue
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
        available = psutil.virtual_memory().available
        self.least_available = available if self.least_available is None else min(self.least_available, available)

    def __enter__(self) -> "TreeSampler":
        self._thread = start_poller(self._sample, self._stop, self.interval_s, "sdrt-tree-sampler")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_poller(self._thread, self._stop)


def run_step(out: Path, step: str, command: Sequence[str]) -> dict[str, Any]:
    """Run `command`, log it to out/<step>.log, and return its measured row."""
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{step}.log"
    load_before = os.getloadavg()[0]
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n# started {started.isoformat(timespec='seconds')}\n")
        log.flush()
        child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)
        with TreeSampler(child.pid) as sampler:
            assert child.stdout is not None
            for line in child.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
            code = child.wait()
        wall = time.perf_counter() - t0
        log.write(f"# ended with exit status {code} after {wall:.1f} s; peak RSS {sampler.peak_rss / GIB:.2f} GiB\n")
    return {"step": step, "command": shlex.join(command), "exit": code, "started": started.isoformat(timespec="seconds"),
            "wall_s": round(wall, 1), "peak_rss_gib": round(sampler.peak_rss / GIB, 2),
            "peak_anon_rss_gib": round(sampler.peak_anon / GIB, 2),
            "least_available_gib": None if sampler.least_available is None else round(sampler.least_available / GIB, 2),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2), "log": log_path.name}


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"# {result['title']}", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('logical_cores', '?')} logical CPUs, ISA "
             f"{', '.join(machine.get('cpu_features') or []) or '?'}, memory {machine.get('memory_gb', '?')} GiB. "
             "Each step is the command as a user types it, run by `python -m sdrt.bench.steps` (wall time; peak "
             "resident memory of the command's process tree, sampled every 0.2 s; the least memory the machine "
             "had available meanwhile; load average before/after: other jobs shared the machine).", "",
             "| step | command | exit | wall | peak RSS | peak anon RSS | least available | load |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in result["steps"]:
        minutes, seconds = divmod(row["wall_s"], 60)
        lines.append(f"| {row['step']} | `{row['command']}` | {row['exit']} | {int(minutes)}:{seconds:04.1f} | "
                     f"{row['peak_rss_gib']:.2f} GiB | {row['peak_anon_rss_gib']:.2f} GiB | "
                     f"{row['least_available_gib']} GiB | {row['load_before']} → {row['load_after']} |")
    return "\n".join(lines) + "\n"


def record(out: Path, row: dict[str, Any], title: str) -> None:
    from sdrt.bench.environment import describe_machine
    from sdrt.bench.provenance import write_result

    path = out / "result.json"
    result = json.loads(path.read_text()) if path.is_file() else {"title": title, "steps": []}
    result["title"] = title or result.get("title", "")
    result["machine"] = describe_machine()
    result["steps"] = [r for r in result["steps"] if r["step"] != row["step"]] + [row]
    write_result(out, result, markdown(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.steps", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results folder (result.json, result.md, RUN.md, logs)")
    parser.add_argument("--step", required=True, help="the step's name (its row and log file)")
    parser.add_argument("--title", default="", help="the results' title (kept from the first step if empty)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    row = run_step(Path(args.out), args.step, command)
    record(Path(args.out), row, args.title)
    print(f"[{args.step}] exit {row['exit']}, {row['wall_s']} s, peak RSS {row['peak_rss_gib']} GiB", file=sys.stderr)
    return int(row["exit"])


if __name__ == "__main__":
    raise SystemExit(main())
