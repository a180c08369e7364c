"""Load test of `sdrt serve` on loopback: C concurrent clients x R requests each, batching on and off.

    python -m sdrt.bench.serve_load --model TINY_ONNX [--clients 16 --requests 200] [--out DIR]

For each mode the server runs as its own `sdrt serve` process on 127.0.0.1 (a free port); its RSS is
sampled every 0.5 s with psutil. Every request must end with an image (200) or a clean 429 (queue
full, with Retry-After): anything else, or a request that never came back, counts as lost. Bounded:
each client stops at R requests or at --deadline-s, whichever comes first, and the server is
stopped at the end. Also measures the pipeline alone, batch 1 vs batch B, in this process.
Writes result.json, result.md (with the machine's load average: the machine may be shared) and RUN.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from sdrt.atomic import write_text
from sdrt.bench.provenance import record_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, queue_size: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "sdrt.cli", "serve", "--model", f"tiny={model}", "--backend", "ort-cpu",
               "--port", str(port), "--max-batch", str(max_batch), "--queue-size", str(queue_size)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except requests.ConnectionError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"server did not start: {server.stderr.read()[-2000:]}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.samples, self.stop = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic() - t0, self.process.memory_info().rss))
            except psutil.Error:
                return
            self.stop.wait(0.5)


def load(url: str, clients: int, per_client: int, size: int, steps: int, deadline_s: float) -> dict:
    outcomes: list[tuple[int, float]] = []  # (status or -1 for lost, seconds)
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client(k: int) -> None:
        session = requests.Session()
        for i in range(per_client):
            if time.monotonic() > stop_at:
                return
            body = {"prompt": f"client {k} request {i}", "width": size, "height": size, "steps": steps,
                    "seed": k * 100_000 + i, "cfg_scale": 7.0}
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=300)
                status = r.status_code
                if status == 200 and len(r.json()["images"]) != 1:
                    status = -1
                elif status == 429 and "Retry-After" not in r.headers:
                    status = -1
            except (requests.RequestException, ValueError):
                status = -1
            with lock:
                outcomes.append((status, time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [s for status, s in outcomes if status == 200]
    statuses: dict[str, int] = {}
    for status, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    q = (lambda p: round(float(np.percentile(ok, p)) * 1000, 1)) if ok else (lambda p: None)
    return {"sent": len(outcomes), "planned": clients * per_client, "statuses": statuses,
            "lost": statuses.get("-1", 0) + sum(v for k, v in statuses.items() if k not in ("200", "429", "-1")),
            "wall_s": round(wall, 2), "images_per_s": round(len(ok) / wall, 2),
            "latency_ms": {"p50": q(50), "p95": q(95), "p99": q(99), "max": q(100)}}


def metric(url: str, name: str) -> str:
    return "\n".join(line for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines()
                     if line.startswith(name))


def run_mode(args: argparse.Namespace, max_batch: int) -> dict:
    server, url = start_server(args.model, max_batch, args.queue_size)
    try:
        ready = requests.get(f"{url}/readyz", timeout=10).json()
        load(url, 2, 5, args.size, args.steps, 120)  # warm-up, not counted
        sampler = RssSampler(server.pid)
        sampler.start()
        result = load(url, args.clients, args.requests, args.size, args.steps, args.deadline_s)
        sampler.stop.set()
        sampler.join()
        rss = np.array([r for _, r in sampler.samples], dtype=np.float64) / 2**20
        times = np.array([t for t, _ in sampler.samples])
        half = len(rss) // 2
        slope = float(np.polyfit(times[half:], rss[half:], 1)[0]) if len(rss) - half >= 3 else None
        result.update({
            "max_batch": max_batch, "batching_active": ready.get("batching", {}).get("tiny"),
            "rss_mb": {"start": round(rss[0], 1), "middle": round(rss[half], 1), "end": round(rss[-1], 1),
                       "peak": round(rss.max(), 1),
                       "second_half_slope_mb_per_min": round(slope * 60, 3) if slope is not None else None},
            "batch_histogram": metric(url, "sdrt_batch_images_bucket"),
        })
        return result
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def pipeline_alone(model: str, size: int, steps: int, batch: int, reps: int) -> dict:
    """Seconds per image, batch 1 vs one call of `batch` images (same prompts, sizes, steps)."""
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(model, backend="ort-cpu")
    kw = dict(num_inference_steps=steps, guidance_scale=7.0, height=size, width=size, seed=0, output_type="np")
    pipe(["warm"] * batch, **kw)
    pipe("warm", **kw)
    singles, batched = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(batch):
            pipe(f"p{i}", **kw)
        singles.append((time.perf_counter() - t0) / batch)
        t0 = time.perf_counter()
        pipe([f"p{i}" for i in range(batch)], **kw)
        batched.append((time.perf_counter() - t0) / batch)
    single, together = float(np.median(singles)), float(np.median(batched))
    return {"batch": batch, "reps": reps, "ms_per_image_alone": round(single * 1000, 2),
            "ms_per_image_batched": round(together * 1000, 2), "speedup": round(single / together, 2)}


def markdown(report: dict) -> str:
    m = report["method"]
    lines = [f"# sdrt serve load test ({report['date']})", "",
             f"{m['clients']} concurrent clients x {m['requests_per_client']} requests, txt2img {m['size']}x{m['size']}, "
             f"{m['steps']} steps, CFG 7 (UNet batch 2 per image), tiny preset on ort-cpu, loopback, "
             f"queue size {m['queue_size']}. Each client stops after its requests or at the mode's deadline of "
             f"{m.get('deadline_s')} s, whichever comes first (`sent` < planned means the deadline ended it); "
             f"warm-up requests are not counted. `lost` = answered with anything but an image or a 429 with "
             f"Retry-After, or not answered. RSS: the server process, sampled every 0.5 s.", "",
             f"Machine: {m['machine']}, {m['cores']} cores; load average before / after: "
             f"{m['load_before']} / {m['load_after']} (shared machine: other jobs were running).", "",
             "| mode | sent | 200 | 429 | lost | images/s | p50 ms | p95 ms | p99 ms | RSS start → end MB | "
             "RSS slope (2nd half) MB/min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["modes"].items():
        lat, rss = r["latency_ms"], r["rss_mb"]
        lines.append(f"| {name} (max-batch {r['max_batch']}, active: {r['batching_active']}) | {r['sent']} | "
                     f"{r['statuses'].get('200', 0)} | {r['statuses'].get('429', 0)} | {r['lost']} | "
                     f"{r['images_per_s']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | "
                     f"{rss['start']} → {rss['end']} | {rss['second_half_slope_mb_per_min']} |")
    if "pipeline_alone" in report:
        p = report["pipeline_alone"]
        lines += ["", f"Pipeline alone (no HTTP), median of {p['reps']}: {p['ms_per_image_alone']} ms/image one at a "
                  f"time vs {p['ms_per_image_batched']} ms/image in one batch of {p['batch']} "
                  f"({p['speedup']}x)."]
    return "\n".join(lines) + "\n"


def rewrite(folder: Path) -> None:
    """Re-render result.md from result.json (after a change of wording; no new measurement)."""
    report = json.loads((folder / "result.json").read_text())
    write_text(folder / "result.md", markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.serve_load", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="tiny ONNX folder")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--deadline-s", type=float, default=900.0, help="per mode")
    parser.add_argument("--out", default=None, help="folder for result.json / result.md")
    args = parser.parse_args(argv)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "method": {
        "clients": args.clients, "requests_per_client": args.requests, "size": args.size, "steps": args.steps,
        "queue_size": args.queue_size, "deadline_s": args.deadline_s, "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "load_before": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version()}, "modes": {}}
    report["modes"]["batching on"] = run_mode(args, args.max_batch)
    report["modes"]["batching off"] = run_mode(args, 1)
    report["pipeline_alone"] = pipeline_alone(args.model, args.size, args.steps, args.max_batch, reps=5)
    report["method"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    text = markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "result.json", json.dumps(report, indent=2) + "\n")
        write_text(out / "result.md", text)
        record_run(out)
    lost = sum(r["lost"] for r in report["modes"].values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
