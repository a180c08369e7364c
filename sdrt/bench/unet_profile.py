"""Where one UNet step's time goes on the CPU: per-op profiles of openvino f32/bf16 and ort-cpu f32,
the precision each heavy op really ran in, static against dynamic shapes, and the FLOP/s reached.

    python -m sdrt.bench.unet_profile run --model FOLDER [--size 256] [--batch 2] [--reps 3] [--out DIR]

Each configuration runs in its own fresh process on sdrt's own engines (the same binding and
options ``Pipeline.load`` uses; nothing cached to disk): 1 warm-up step, then ``--reps`` timed
steps, median. The configurations:

- ``openvino-{f32,bf16}-{dynamic,static}``: the step time without counters (static = the model
  reshaped to this one input shape before compiling);
- ``openvino-{f32,bf16}-counters``: ``PERF_COUNT`` on; the last step's ``get_profiling_info()``
  summed by op type and by the precision in its ``exec_type`` (e.g. ``brgconv_avx512_bf16``), and
  the kernels (``exec_type``) of the heavy ops;
- ``ort-cpu`` (its defaults: MultiHeadAttention rewrite) and ``ort-cpu-profile``: ONNX Runtime's
  profiler, the last step's node events summed by op type.

The FLOPs of a step come from the ONNX graph as OpenVINO reads it, reshaped static: 2·MACs of every
Convolution/GroupConvolution and MatMul (attention's QK^T and PV included; a fused
ScaledDotProductAttention counted as its two products); the rest (norms, activations, softmax) is
not counted. FLOP/s = those FLOPs / the step's median time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.bench.output import default_folder
from sdrt.bench.provenance import write_result

CONFIGS = ("openvino-f32-dynamic", "openvino-f32-static", "openvino-bf16-dynamic", "openvino-bf16-static",
           "openvino-f32-counters", "openvino-bf16-counters", "ort-cpu", "ort-cpu-profile")
PEAK_ASSUMPTIONS = ("assumed per-core rates, not measured here: FP32 FMA 32 FLOP/cycle (Zen 4: two 256-bit FMA "
                    "pipes; Intel cores with two 512-bit FMA units: 64), AVX512-BF16 `vdpbf16ps` 2x that (two bf16 "
                    "products per 32-bit lane), AMX-BF16 (Sapphire Rapids) about 1,024 FLOP/cycle; without AMX, "
                    "bf16 can at best double the dot products' rate")


def unet_dims(folder: Path, size: int, batch: int) -> dict[str, int]:
    from sdrt.manifest import Manifest

    f = int(Manifest.load(folder).pipeline["vae_scale_factor"])
    return {"B": batch, "h": size // f, "w": size // f}


def make_engine(folder: Path, config: str, dims: dict[str, int]) -> tuple[Any, Any]:
    """(backend, prepared UNet engine) for one configuration, its inputs filled (seed 0)."""
    from sdrt import spec
    from sdrt.manifest import Manifest

    manifest = Manifest.load(folder)
    if config.startswith("openvino"):
        from sdrt.engines.openvino import OpenVinoBackend

        _, precision, mode = config.split("-")
        backend = OpenVinoBackend(precision=precision, shapes="static" if mode == "static" else "dynamic",
                                  cache=False, config={"PERF_COUNT": True} if mode == "counters" else None)
    else:
        from sdrt.engines.ort import OrtCpuBackend

        backend = OrtCpuBackend()
        if config == "ort-cpu-profile":
            plain = backend.session_options

            def with_profiling():
                so = plain()
                so.enable_profiling = True
                so.profile_file_prefix = str(Path(tempfile.gettempdir()) / "sdrt-unet-profile")
                return so

            backend.session_options = with_profiling
    engine = backend.load(manifest, "unet")
    engine.prepare(dims)
    shapes = spec.shapes(engine.spec, {**engine.model_values, **engine.full_dims(dims)}, include_optional=True)
    rng = np.random.default_rng(0)
    for name in engine.spec.input_names:
        dtype = engine.dtype(name)
        value = rng.standard_normal(shapes[name]) if dtype.kind == "f" else np.full(shapes[name], 999)
        engine.set_input(name, np.asarray(value, dtype=dtype))
    return backend, engine


def precision_of(exec_type: str) -> str:
    """The precision an OpenVINO CPU kernel ran in, from its exec_type (``brgconv_avx512_bf16`` -> bf16)."""
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return tail if tail in ("f32", "bf16", "f16", "i8", "u8", "i32", "i64", "fp32") else "other"


CATEGORIES = {"convolution": ("Convolution", "GroupConvolution", "Conv", "FusedConv"),
              "linear": ("FullyConnected", "MatMul", "FusedMatMul", "Gemm"),
              "attention": ("ScaledDotProductAttention", "MultiHeadAttention", "Attention")}


def category(op_type: str, fused: str = "") -> str:
    """convolution | linear | attention | rest; an OpenVINO ``Subgraph`` (a fused kernel) is attention
    when the ops it fused include a softmax or an SDPA (``fused``: its originalLayersNames)."""
    for name, types in CATEGORIES.items():
        if op_type in types:
            return name
    if op_type == "Subgraph" and any(w in fused.lower() for w in ("softmax", "scaled_dot_product")):
        return "attention"
    return "rest"


def openvino_counters(engine: Any) -> dict[str, Any]:
    """The last step's perf counters: ms by op type, by (op type, precision), by category, and the
    heavy ops' kernels (exec_type)."""
    fused = {}
    for op in engine.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        fused[op.get_friendly_name()] = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
    by_type: dict[str, float] = defaultdict(float)
    by_precision: dict[str, float] = defaultdict(float)
    by_category: dict[str, float] = defaultdict(float)
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for p in engine.request.get_profiling_info():
        ms = p.real_time.total_seconds() * 1e3
        if ms <= 0:
            continue
        by_type[p.node_type] += ms
        by_precision[f"{p.node_type} {precision_of(p.exec_type)}"] += ms
        kind = category(p.node_type, fused.get(p.node_name, ""))
        by_category[kind] += ms
        if kind != "rest":
            kernels[p.node_type][p.exec_type] += ms
    return {"ms_by_op_type": _sorted(by_type), "ms_by_op_type_and_precision": _sorted(by_precision),
            "ms_by_category": _sorted(by_category), "heavy_op_kernels_ms": {k: _sorted(v) for k, v in kernels.items()}}


def ort_profile(engine: Any, runs: int) -> dict[str, Any]:
    """ONNX Runtime's profile of the last of ``runs`` steps: ms by op type (node kernel events)."""
    path = Path(engine.session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink(missing_ok=True)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    last = starts[-1] if starts else 0
    by_type: dict[str, float] = defaultdict(float)
    by_category: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= last:
            op = e.get("args", {}).get("op_name", "?")
            by_type[op] += e["dur"] / 1e3
            by_category[category(op)] += e["dur"] / 1e3
    return {"ms_by_op_type": _sorted(by_type), "ms_by_category": _sorted(by_category), "model_runs": len(starts),
            "of_runs": runs}


def _sorted(table: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(table.items(), key=lambda kv: -kv[1])}


def step_flops(folder: Path, dims: dict[str, int]) -> dict[str, float]:
    """FLOPs of one UNet step (2·MACs of convolutions and matrix products), from the static-shaped graph."""
    import openvino as ov

    from sdrt import spec
    from sdrt.manifest import Manifest

    manifest = Manifest.load(folder)
    model = ov.Core().read_model(str(manifest.onnx_path("unet")))
    values = {**manifest.values, "L": manifest.values["S"], **dims}  # one text chunk, as the runtime's default
    shapes = spec.shapes(manifest.spec.component("unet"), values, include_optional=True)
    model.reshape({port: ov.PartialShape(list(shapes[name])) for port in model.inputs
                   for name in port.get_names() if name in shapes})
    flops: dict[str, float] = defaultdict(float)
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Convolution", "GroupConvolution"):
            # weights [Cout, Cin, kh, kw] or, grouped, [G, Cout/G, Cin/G, kh, kw]: MACs per output = the last 3
            weights = list(op.get_input_shape(1))
            flops["convolution"] += 2.0 * float(np.prod(list(op.get_output_shape(0)))) * float(np.prod(weights[-3:]))
        elif kind == "MatMul":
            a = list(op.get_input_shape(0))
            k = a[-2] if op.get_attributes().get("transpose_a") else a[-1]
            flops["linear"] += 2.0 * float(np.prod(list(op.get_output_shape(0)))) * k
        elif kind == "ScaledDotProductAttention":
            q, kk, v = (list(op.get_input_shape(i)) for i in range(3))
            batch = float(np.prod(q[:-2]))
            flops["attention"] += 2.0 * batch * q[-2] * kk[-2] * (q[-1] + v[-1])
    flops["total"] = flops["convolution"] + flops["linear"] + flops["attention"]
    return dict(flops)


def measure_config(folder: Path, config: str, size: int, batch: int, reps: int) -> dict[str, Any]:
    dims = unet_dims(folder, size, batch)
    # counted first, so the graph read for it is freed before the engine compiles
    flops = step_flops(folder, dims) if config == "openvino-f32-counters" else None
    start = time.perf_counter()
    backend, engine = make_engine(folder, config, dims)
    load_s = time.perf_counter() - start
    engine.execute()  # warm-up (and, for static shapes, after the compile in prepare)
    steps = []
    for _ in range(reps):
        t = time.perf_counter()
        engine.execute()
        steps.append(time.perf_counter() - t)
    result: dict[str, Any] = {"config": config, "dims": dims, "load_s": round(load_s, 2),
                              "steps_s": [round(s, 4) for s in steps], "step_s": round(statistics.median(steps), 4)}
    if config.endswith("-counters"):
        result["counters"] = openvino_counters(engine)
    if config == "ort-cpu-profile":
        result["counters"] = ort_profile(engine, reps + 1)
    if flops is not None:
        result["flops"] = flops
    engine.close()
    return result


def nominal_peaks(ghz: float, cores: int) -> dict[str, float]:
    """Nominal dense peaks (GFLOP/s) of ``cores`` cores at ``ghz`` (PEAK_ASSUMPTIONS)."""
    fp32 = 32.0 * ghz * cores
    return {"ghz": ghz, "cores": cores, "fp32_fma_gflops": fp32, "avx512_bf16_gflops": 2 * fp32}


def cpu_ghz() -> float:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) / 1000.0, 3)
    except (OSError, ValueError):
        pass
    return 0.0


def render(result: dict[str, Any]) -> str:
    runs = result["configs"]
    machine = result["machine"]
    flops = next((r["flops"] for r in runs.values() if "flops" in r), None)
    peaks = result["nominal_peaks"]
    lines = [f"# One UNet step on the CPU: {result['model']}, {result['size']}², batch {result['batch']}", "",
             "| configuration | step (s, median) | load/compile (s) | GFLOP/s (conv + linear + attention) |", "|---|---:|---:|---:|"]
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | |")
            continue
        rate = f"{flops['total'] / r['step_s'] / 1e9:,.0f}" if flops else "–"
        lines.append(f"| {name} | {r['step_s']:.3f} | {r['load_s']:.1f} | {rate} |")
    if flops:
        lines += ["", f"FLOPs per step: {flops['total'] / 1e9:,.1f} GFLOP (convolutions {flops['convolution'] / 1e9:,.1f}, "
                  f"linear layers {flops['linear'] / 1e9:,.1f}, attention QK^T and PV {flops['attention'] / 1e9:,.1f}). "
                  "Nominal peaks at "
                  f"{peaks['ghz']} GHz × {peaks['cores']} cores (assumed per-cycle rates, see the method): FP32 "
                  f"{peaks['fp32_fma_gflops']:,.0f} GFLOP/s, AVX512-BF16 {peaks['avx512_bf16_gflops']:,.0f} GFLOP/s."]
    for name, r in runs.items():
        counters = r.get("counters")
        if not counters:
            continue
        total = sum(counters["ms_by_op_type"].values()) or 1.0
        lines += ["", f"## {name}: time by category (last step, {total:,.0f} ms summed over ops)", "",
                  "| category | ms | share | GFLOP/s in it |", "|---|---:|---:|---:|"]
        for kind, ms in counters["ms_by_category"].items():
            rate = f"{flops[kind] / (ms / 1e3) / 1e9:,.0f}" if flops and kind in flops and ms > 0 else "–"
            lines.append(f"| {kind} | {ms:,.1f} | {ms / total:.1%} | {rate} |")
        lines += ["", "By op type:", "",
                  "| op type | ms | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:,.1f} | {v / total:.1%} |" for k, v in list(counters["ms_by_op_type"].items())[:12]]
        if "ms_by_op_type_and_precision" in counters:
            lines += ["", "By op type and the precision its kernel ran in:", "",
                      "| op type, precision | ms | share |", "|---|---:|---:|"]
            lines += [f"| {k} | {v:,.1f} | {v / total:.1%} |"
                      for k, v in list(counters["ms_by_op_type_and_precision"].items())[:12]]
            lines += ["", "Kernels of the heavy ops: " + "; ".join(
                f"{op}: " + ", ".join(f"`{k}` {v:,.0f} ms" for k, v in kernels.items())
                for op, kernels in counters["heavy_op_kernels_ms"].items())]
    lines += ["", "## Method", "",
              f"- each configuration in a fresh process on sdrt's UNet engine, inputs seeded, 1 warm-up + "
              f"{result['reps']} timed steps, median; openvino compiled without the disk cache",
              "- FLOPs: 2·MACs of Convolution/GroupConvolution/MatMul (and SDPA's two products) in the graph "
              "OpenVINO reads, reshaped static; norms, activations and softmax not counted",
              f"- nominal peaks: {PEAK_ASSUMPTIONS}; the clock is /proc/cpuinfo's `cpu MHz` (a VM may report "
              "the base clock, and the cores may boost above it)",
              f"- **CPU**: {machine['cpu_model']}, {machine['physical_cores']} cores, "
              f"{', '.join(machine.get('cpu_features') or [])}; load average at start {machine['load_average_at_start']}",
              "- **versions**: " + ", ".join(f"{k} {v}" for k, v in (machine.get('versions') or {}).items()
                                            if v and k in ("openvino", "onnxruntime", "sdrt")) + f"; {result['date']}", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Path:
    from sdrt.bench.environment import describe_machine
    from sdrt.bench.models import onnx_folder

    folder = onnx_folder(args.model, args.onnx)
    machine = describe_machine()
    result: dict[str, Any] = {"schema": "sdrt-unet-profile", "version": 1, "model": str(args.model),
                              "onnx": str(folder), "size": args.size, "batch": args.batch, "reps": args.reps,
                              "machine": machine, "date": datetime.now().isoformat(timespec="seconds"),
                              "nominal_peaks": nominal_peaks(args.ghz or cpu_ghz(), machine["physical_cores"]),
                              "configs": {}}
    for config in args.configs.split(","):
        cmd = [sys.executable, "-m", "sdrt.bench.unet_profile", "config", "--model", str(folder), "--config", config,
               "--size", str(args.size), "--batch", str(args.batch), "--reps", str(args.reps)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            if done.returncode == 0:
                result["configs"][config] = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                result["configs"][config] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
        except subprocess.TimeoutExpired:
            result["configs"][config] = {"error": f"timeout after {args.timeout:.0f} s"}
        r = result["configs"][config]
        print(f"{config}: " + (f"step {r['step_s']:.3f} s" if "step_s" in r else r["error"]), flush=True)
    out = Path(args.out) if args.out else default_folder("unet-profile", args.model)
    return write_result(out, result, render(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.unet_profile", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True, help="a preset, a diffusers folder or an ONNX folder")
    r.add_argument("--onnx", help="an existing export of --model")
    r.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    r.add_argument("--batch", type=int, default=2, help="UNet batch (default 2: one step with guidance)")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--configs", default=",".join(CONFIGS))
    r.add_argument("--ghz", type=float, help="clock for the nominal peaks (default: /proc/cpuinfo)")
    r.add_argument("--out", help="results folder (default benchmarks/results/unet-profile-MODEL-DATE, "
                                  "benchmarks/dryruns/ for a tiny preset)")
    r.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    c = sub.add_parser("config", help="(internal) one configuration in this process; prints a JSON line")
    c.add_argument("--model", required=True)
    c.add_argument("--config", required=True, choices=CONFIGS)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--batch", type=int, required=True)
    c.add_argument("--reps", type=int, required=True)
    args = p.parse_args(argv)
    if args.command == "config":
        print(json.dumps(measure_config(Path(args.model), args.config, args.size, args.batch, args.reps)))
    else:
        print(f"results: {run(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
