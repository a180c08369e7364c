"""The fault soak: 4 threads share one Pipeline for N generations with bad inputs interleaved.

Every good call must equal its serial twin bit for bit (each distinct good call is run once alone
first), every bad call must fail with a one-line SdrtError (any other exception is a crash), and
RSS is read after each call; the slope (KB per call, least squares over the second half, after the
arenas have grown) is the leak indicator. `sdrt bench --suite fault-soak` runs it on `tiny`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdrt.errors import SdrtError

#: good calls (size, scheduler, mode) and bad ones (each must be one SdrtError line)
GOOD = [
    dict(prompt="a cat", height=32, width=32, scheduler="ddim", seed=1),
    dict(prompt="a dog", height=24, width=40, scheduler="euler_a", seed=2, num_images_per_prompt=2),
    dict(prompt="a boat", height=40, width=24, scheduler="dpmpp_sde", seed=3, guidance_scale=1.0),
    dict(prompt="a tree", height=32, width=32, scheduler="dpmpp_2m_karras", seed=4, image="IMAGE", strength=0.7),
]
BAD = [
    dict(prompt="x", height=33, width=32),                      # not a multiple of the VAE factor
    dict(prompt="x", height=32, width=32, seed=-5),             # seed out of range
    dict(prompt="x", height=32, width=32, scheduler="nope"),    # unknown scheduler
    dict(prompt="caf\udce9", height=32, width=32),              # invalid UTF-8 from argv
    dict(prompt="x", height=32, width=32, image="/no/such.png"),
    dict(prompt="x", height=32, width=32, guidance_scale=float("nan")),
]


def _call(pipe: Any, call: dict, image: np.ndarray, steps: int) -> np.ndarray:
    call = {**call, "image": image} if call.get("image") == "IMAGE" else call
    return pipe(**call, num_inference_steps=steps, output_type="np").images


def run_fault_soak(folder: str | Path, generations: int = 200, threads: int = 4, steps: int = 2,
                   bad_every: int = 4, log: Callable[[str], None] = print) -> dict[str, Any]:
    from sdrt.bench.memory import rss_mb, slope_per_item
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(folder, backend="ort-cpu")
    image = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    twins = [_call(pipe, call, image, steps) for call in GOOD]
    jobs = [("bad", i % len(BAD)) if i % bad_every == bad_every - 1 else ("good", i % len(GOOD))
            for i in range(generations)]
    lock = threading.Lock()
    counts = {"good": 0, "good_equal": 0, "bad": 0, "bad_one_line": 0, "crashes": 0}
    crashes: list[str] = []
    rss: list[float] = []
    start = time.perf_counter()

    def worker(k: int) -> None:
        for j in range(k, len(jobs), threads):
            kind, index = jobs[j]
            try:
                out = _call(pipe, (GOOD if kind == "good" else BAD)[index], image, steps)
                ok = kind == "good" and np.array_equal(out, twins[index])
                problem = None if ok else ("bad input accepted" if kind == "bad" else "differs from serial twin")
            except SdrtError as e:
                ok = kind == "bad" and "\n" not in str(e)
                problem = None if ok else f"SdrtError on a good call: {e}"
            except Exception as e:  # noqa: BLE001 - a crash is what this soak counts
                ok, problem = False, f"{type(e).__name__}: {e}"
            with lock:
                counts[kind] += 1
                counts["good_equal" if kind == "good" else "bad_one_line"] += ok
                if problem:
                    counts["crashes"] += 1
                    crashes.append(f"job {j} ({kind} {index}): {problem}"[:300])
                rss.append(rss_mb())

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    half = len(rss) // 2
    slope_kb = slope_per_item(list(range(half, len(rss))), rss[half:]) * 1024
    result = {
        "suite": "fault-soak", "model": str(folder), "backend": "ort-cpu", "threads": threads,
        "generations": generations, "steps": steps, "bad_every": bad_every, **counts,
        "first_problems": crashes[:10], "seconds": round(seconds, 1),
        "rss_mb_first": round(rss[0], 1) if rss else None, "rss_mb_last": round(rss[-1], 1) if rss else None,
        "rss_slope_kb_per_call_second_half": round(slope_kb, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    log(f"fault soak: {counts['good_equal']}/{counts['good']} good calls equal their serial twins, "
        f"{counts['bad_one_line']}/{counts['bad']} bad calls one line, {counts['crashes']} problems, "
        f"RSS slope {slope_kb:.1f} KB/call, {seconds:.0f} s")
    return result


def write_result(result: dict[str, Any], folder: str | Path) -> Path:
    import json

    from sdrt.atomic import write_text
    from sdrt.bench.provenance import record_run

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
    md = ["# sdrt bench fault-soak", "",
          f"{result['threads']} threads share one Pipeline ({result['backend']}, `tiny`, {result['steps']} steps, "
          f"32x32..40x24, 4 schedulers incl. ancestral/SDE, txt2img and img2img); {result['generations']} calls, "
          f"every {result['bad_every']}th a bad input (bad size, seed, scheduler, UTF-8, missing image, NaN guidance).",
          "", "| measure | value |", "|---|---:|",
          f"| good calls equal to their serial twin (bit-identical) | {result['good_equal']} / {result['good']} |",
          f"| bad calls refused with one SdrtError line | {result['bad_one_line']} / {result['bad']} |",
          f"| crashes / wrong results | {result['crashes']} |",
          f"| RSS first → last (MB) | {result['rss_mb_first']} → {result['rss_mb_last']} |",
          f"| RSS slope, second half (KB per call) | {result['rss_slope_kb_per_call_second_half']} |",
          f"| wall time (s) | {result['seconds']} |", "",
          f"Method: `sdrt bench --suite fault-soak`; serial twins computed first, one per distinct good call; RSS "
          f"read after every call (psutil); load average at the end {result['load_average']} on {result['cpus']} "
          f"CPUs (a shared machine: timings are not comparable).", ""]
    write_text(folder / "result.md", "\n".join(md))
    record_run(folder)
    return folder / "result.md"
