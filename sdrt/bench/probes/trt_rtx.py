"""What TensorRT-RTX says on this GPU, verbatim: part of benchmarks/gpu/check.sh.

    python3 -m sdrt.bench.probes.trt_rtx MODEL_FOLDER OUT.json

On an exported folder with engines built by `sdrt build --backend tensorrt_rtx`: the library version,
the GPU and its compute capability, then for each engine the runtime's own answers
(`get_engine_validity`, `deserialize_cuda_engine`) with TensorRT's log lines, and finally what sdrt
makes of it (`Pipeline.load(folder, "tensorrt_rtx")`, a 4-step call compared with ort-cpu). Every
answer is recorded, success or not; the script itself only fails when it cannot run at all. Where
TensorRT-RTX, a GPU or the engines are missing, OUT.json says so in the same places.
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path


def _gpu(cudart) -> dict:
    err, props = cudart.cudaGetDeviceProperties(0)
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return {"error": getattr(err, "name", str(err)), "name": name, "compute_capability": f"{props.major}.{props.minor}"}


def raw_answers(folder: Path) -> dict:
    import tensorrt_rtx as trt

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            self.lines.append(f"{getattr(severity, 'name', severity)}: {msg}")

    try:
        from cuda.bindings import runtime as cudart

        gpu = _gpu(cudart)
    except Exception as e:  # still ask TensorRT-RTX: its answer is the point
        gpu = {"error": f"{type(e).__name__}: {e}"}
    report = {"tensorrt_rtx": trt.__version__, "gpu": gpu, "engines": {}}
    logger = Recorder()
    runtime = trt.Runtime(logger)
    for plan in sorted((folder / "engines" / "tensorrt_rtx").glob("*/engine.plan")):
        data = plan.read_bytes()
        answer: dict = {}
        try:
            validity = runtime.get_engine_validity(data)
            answer["get_engine_validity"] = repr(validity)
        except Exception as e:  # the exact words matter more than the type
            answer["get_engine_validity"] = f"raised {type(e).__name__}: {e}"
        try:
            engine = runtime.deserialize_cuda_engine(data)
            answer["deserialize_cuda_engine"] = "an engine" if engine is not None else "None"
        except Exception as e:
            answer["deserialize_cuda_engine"] = f"raised {type(e).__name__}: {e}"
        answer["log"] = logger.lines[:]
        logger.lines.clear()
        report["engines"][plan.parent.name] = answer
    return report


def sdrt_answer(folder: Path) -> dict:
    import numpy as np

    from sdrt.manifest import Manifest
    from sdrt.runtime import Pipeline

    manifest = Manifest.load(folder)
    f, size = manifest.pipeline["vae_scale_factor"], manifest.default_image_size
    latents = np.random.default_rng(0).standard_normal(
        (1, manifest.pipeline["latent_channels"], size // f, size // f)).astype(np.float32)
    kwargs = {"num_inference_steps": 4, "latents": latents, "output_type": "np"}
    try:
        pipe = Pipeline.load(folder, "tensorrt_rtx")
        got = pipe("a red cube", **kwargs).images
        pipe.close()
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    ref = Pipeline.load(folder, "ort-cpu")("a red cube", **kwargs).images
    mse = float(np.mean((got.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return {"ok": True, "psnr_vs_ort_cpu_db": None if mse == 0 else 10 * float(np.log10(1.0 / mse))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.probes.trt_rtx", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported folder with engines from `sdrt build --backend tensorrt_rtx`")
    p.add_argument("out", type=Path, help="the JSON file to write")
    args = p.parse_args(argv)
    folder, out = args.model, args.out
    report: dict = {}
    try:
        report["raw"] = raw_answers(folder)
    except Exception as e:
        report["raw"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    report["sdrt"] = sdrt_answer(folder)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"raw_gpu": report["raw"].get("gpu"), "sdrt": {k: v for k, v in report["sdrt"].items()
                                                                    if k != "traceback"}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
