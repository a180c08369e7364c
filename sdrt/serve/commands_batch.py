"""`sdrt batch requests.jsonl --out DIR [--ray]`: offline generation, resumable (see sdrt.serve.batch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("requests", help="JSONL file: one request per line ({\"prompt\": ..., \"seed\": ..., ...})")
    p.add_argument("--model", required=True, help="ONNX model folder written by `sdrt export` or `sdrt demo`")
    p.add_argument("--out", required=True, help="output folder: the PNGs and results.jsonl (reused to resume)")
    p.add_argument("--backend", default="auto", help="engine backend, as for `sdrt generate` (default auto)")
    p.add_argument("--precision", default=None, choices=("f32", "bf16", "f16"),
                   help="run-time precision, as for `sdrt generate` (default: the exported one)")
    p.add_argument("--steps", type=int, default=20, help="steps for requests that do not say (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of requests without one: SEED + line index (default 0)")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="folder where prompts' <lora:NAME:SCALE> tags find NAME.safetensors (as for generate)")
    p.add_argument("--max-batch", type=int, default=4, help="images of compatible requests per UNet batch (default 4)")
    p.add_argument("--ray", action="store_true", help="run on Ray Data with pipeline-holding actors (sdrt[ray])")
    p.add_argument("--ray-actors", type=int, default=2, help="Ray Data actors, each holding a pipeline (default 2)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: start a local one bound to 127.0.0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from sdrt.errors import SdrtError
    from sdrt.manifest import Manifest
    from sdrt.serve import batch

    if args.max_batch < 1 or args.steps < 1 or args.ray_actors < 1:
        raise SdrtError("--max-batch, --steps and --ray-actors must be >= 1")
    manifest = Manifest.load(args.model)
    items = batch.read_requests(args.requests, model="model", default_size=manifest.default_image_size,
                                default_steps=args.steps, seed_base=args.seed, lora_dir=args.lora_dir,
                                flow=batch.is_flow_folder(args.model))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = batch.finished_ids(out)
    pending = [item for item in items if item.id not in done]
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    log(f"{len(items)} requests, {len(items) - len(pending)} already done in {out}, {len(pending)} to make")
    if pending:
        batch.remove_leftovers(out, pending)
        if args.ray:
            from sdrt.serve.ray_batch import run_ray

            run_ray(args, pending, out, log)
        else:
            from sdrt.runtime.pipeline import Pipeline

            pipe = Pipeline.load(args.model, backend=args.backend, precision=args.precision)
            batch.run_local(pipe, pending, out, args.max_batch, log)
    missing = [item.id for item in items if item.id not in batch.finished_ids(out)]
    if missing:
        raise SdrtError(f"{len(missing)} requests were not made (first: {missing[0]}): run the same command again")
    print(out / batch.RESULTS)
    return 0
