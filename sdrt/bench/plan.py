"""From `sdrt bench`'s arguments to runs: which suite, which ONNX folder, which contenders, and
where the results go. Refusals (no GPU for a GPU suite, a bad size) come here, before anything
heavy is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdrt.bench.suites import Suite, custom_suite, get_suite, require_gpu, with_overrides
from sdrt.errors import SdrtError


@dataclass
class Plan:
    suite: Suite
    out: Path
    onnx: str | None
    prompt: str
    seed: int
    backend_options: dict[str, Any] = field(default_factory=dict)
    tuning: str | None = None


def split_contender(label: str) -> tuple[str, dict[str, Any]]:
    """``BACKEND[:WORD[,WORD]]`` -> (backend, options). A word that names one of the backend's options
    turns it on (``ort-cuda:cuda_graph``); otherwise it is the precision of a backend that has one
    (``openvino:bf16``). So one suite times a backend with and without an option."""
    from sdrt.engines.base import backend_class

    backend, _, words = label.partition(":")
    cls = backend_class(backend)
    options: dict[str, Any] = {}
    for word in filter(None, words.split(",")):
        if word in cls.options:
            options[word] = True
        elif "precision" in cls.options and "precision" not in options:
            options["precision"] = word
        else:
            cls.check_options({word: True})  # one line naming the options it has
    return backend, options


def plan_from_args(args: Any) -> Plan:
    """The suite with the command line's overrides; refuses what cannot run here."""
    from sdrt.bench.output import DEFAULT_OUT, DRY_RUN_OUT

    if args.suite:
        suite = get_suite(args.suite)
    else:
        cpu = ("ort-cpu", "openvino")
        suite = custom_suite(args.model, gpu=any(b.partition("@")[0].partition(":")[0] not in cpu
                                                 for b in (args.backend or cpu)))
    suite = with_overrides(
        suite, height=args.height, width=args.width, steps=args.steps, scheduler=args.scheduler,
        guidance_scale=args.guidance_scale, reps=args.reps, warmup=args.warmup,
        soak_generations=args.generations,
        backends=tuple(args.backend) if args.backend else None,
        batches=tuple(args.batch) if args.batch else None,
        peers=tuple(p for p in args.peer if p != "none") if getattr(args, "peer", None) else None,
    )
    for label, value, least in (("--steps", suite.steps, 1), ("--warmup", suite.warmup, 0)):
        if value < least:
            raise SdrtError(f"{label} {value} must be at least {least}")
    if suite.soak_generations == 0 and suite.reps < 1:
        raise SdrtError(f"--reps {suite.reps} must be at least 1")
    if suite.soak_generations and suite.soak_generations < 2:
        raise SdrtError(f"--generations {suite.soak_generations} must be at least 2 to fit a slope")
    if any(b < 1 for b in suite.batches):
        raise SdrtError(f"--batch {min(suite.batches)} must be at least 1")
    for label in suite.backends:
        spec, _, scheme = label.partition("@")
        split_contender(spec)
        if scheme:
            from sdrt.engines.quantized import scheme as known_scheme

            known_scheme(scheme)
    require_gpu(suite)
    from sdrt.engines.ort_tuning import backend_options

    backend_options("ort-cpu", args.tuning)  # an unknown preset is refused here, before any work
    options: dict[str, Any] = {}
    if args.threads is not None:
        if args.threads < 1:
            raise SdrtError(f"--threads {args.threads} must be at least 1")
        options["intra_op_num_threads"] = args.threads
    default_out = DRY_RUN_OUT if suite.dry_run else DEFAULT_OUT
    return Plan(suite=suite, out=Path(args.out) if args.out else default_out, onnx=args.onnx,
                prompt=args.prompt, seed=args.seed, backend_options=options, tuning=args.tuning)


def _method(plan: Plan, manifest: Any, height: int, width: int, batch: int, latents: np.ndarray) -> dict[str, Any]:
    from sdrt.bench.environment import describe_machine

    suite = plan.suite
    guidance = suite.guidance_scale > 1.0
    return describe_machine() | {
        "model": manifest.data.get("source", {}).get("name") or suite.model,
        "onnx_folder": str(manifest.folder),
        "exporter": manifest.data.get("exporter"),
        "precision": {k: v.get("precision") for k, v in manifest.components.items()},
        "reference_precision": suite.reference_precision,
        "height": height, "width": width, "latent_shape": list(latents.shape), "batch": batch,
        "unet_batch": 2 * batch if guidance else batch, "steps": suite.steps, "without": list(suite.without),
        "scheduler": suite.scheduler, "guidance_scale": suite.guidance_scale,
        "prompt": plan.prompt, "seed": plan.seed, "warmup": suite.warmup, "reps": suite.reps,
        "date": datetime.now().isoformat(timespec="seconds"),
    }


def sdrt_contender(folder: Path, spec: str, plan: Plan, log: Callable[[str], None] = print) -> Any:
    """``backend``, ``backend:precision`` (openvino:bf16) or ``backend:option`` (ort-cuda:cuda_graph) -> an sdrt
    contender with its options; ``...@SCHEME`` (ort-cpu@int8, openvino:bf16@int8) runs it on the folder
    quantized with that scheme (`sdrt quantize`, once, at the suite's size; sdrt.bench.models)."""
    from sdrt.bench.contenders import SdrtContender
    from sdrt.bench.models import quantized_folder
    from sdrt.engines.ort_tuning import backend_options

    from sdrt.engines.base import backend_class

    spec, _, scheme = spec.partition("@")
    if scheme:
        folder = quantized_folder(folder, scheme, plan.suite.height, log=log)
    backend, words = split_contender(spec)
    given = dict(plan.backend_options)
    if backend == "openvino" and "intra_op_num_threads" in given:  # --threads, in OpenVINO's words
        given["num_threads"] = given.pop("intra_op_num_threads")
    # only the options the backend declares (--threads is ONNX Runtime's and OpenVINO's)
    options = backend_options(backend, plan.tuning, folder) | {
        k: v for k, v in given.items() if k in backend_class(backend).options}
    flags = [k for k, v in words.items() if k != "precision"]
    label = spec if flags else None
    if scheme:
        label = f"{label or backend} {scheme}" + (f" ({words['precision']} elsewhere)" if "precision" in words else "")
    without = {"without": list(plan.suite.without)} if plan.suite.without else {}
    return SdrtContender(folder, backend, options | words | without, label=label)


def peer_contender(folder: Path, spec: str, suite: Suite, log: Callable[[str], None] = print) -> Any:
    """``diffusers:bf16`` or ``openvino-genai:PRECISION[@SCHEME]`` -> the peer's contender (``@int8``: GenAI on
    the IR of the folder sdrt quantized, the same int8 graphs as sdrt's int8 contenders)."""
    from sdrt.bench.contenders import ReferenceContender

    spec, _, scheme = spec.partition("@")
    kind, _, precision = spec.partition(":")
    if scheme and kind == "openvino-genai":
        from sdrt.bench.genai_peer import GenaiContender
        from sdrt.bench.models import quantized_folder

        return GenaiContender(quantized_folder(folder, scheme, suite.height, log=log), precision or "f32",
                              scheme=scheme)
    if kind == "diffusers":
        return ReferenceContender(folder, suite.reference_device, precision or "bf16", without=suite.without)
    if kind == "openvino-genai":
        from sdrt.bench.genai_peer import GenaiContender

        return GenaiContender(folder, precision or "f32")
    raise SdrtError(f"unknown benchmark peer {spec!r}: use diffusers:bf16 or openvino-genai:f32|bf16")


def run_plan(plan: Plan, log: Callable[[str], None] = print) -> list[dict[str, Path]]:
    """Run every batch of the suite (or the soak); write each report; return their paths."""
    from sdrt.bench.contenders import Generation, ReferenceContender
    from sdrt.bench.models import onnx_folder
    from sdrt.bench.output import result_dir, write_report
    from sdrt.bench.runner import run_benchmark
    from sdrt.bench.soak import run_soak
    from sdrt.engines.ort_tuning import DEFAULT_PRESET
    from sdrt.manifest import Manifest

    suite = plan.suite
    folder = onnx_folder(suite.model, plan.onnx, log=log)
    manifest = Manifest.load(folder)
    height = suite.height or manifest.default_image_size
    width = suite.width or manifest.default_image_size
    manifest.sizes.check_image_size(height, width)
    f, channels = manifest.pipeline["vae_scale_factor"], manifest.pipeline["latent_channels"]
    out_dir = result_dir(plan.out, suite.name)
    written = []
    for batch in suite.batches:
        latents = np.random.default_rng(plan.seed).standard_normal(
            (batch, channels, height // f, width // f), dtype=np.float32)
        if manifest.family == "flux":  # FluxPipeline (and sdrt's) take its latents packed into 2x2 tokens
            from sdrt.runtime.flux_latents import pack

            latents = pack(latents)
        gen = Generation(prompt=plan.prompt, steps=suite.steps, guidance_scale=suite.guidance_scale,
                         height=height, width=width, batch=batch, scheduler=suite.scheduler, latents=latents)
        method = _method(plan, manifest, height, width, batch, latents)
        sdrt_runs = [sdrt_contender(folder, spec, plan, log) for spec in suite.backends]
        threads = {r.backend: r.options.get("intra_op_num_threads", r.options.get("num_threads", "default"))
                   for r in sdrt_runs}
        method["threads"] = ", ".join(f"{b} intra-op {t}" for b, t in threads.items())
        method["tuning"] = plan.tuning or DEFAULT_PRESET
        if suite.soak_generations:
            log(f"soak: {suite.soak_generations} generations on {suite.model} ({suite.backends[0]})")
            report = run_soak(sdrt_runs[0], gen, generations=suite.soak_generations, warmup=suite.warmup,
                              method=method, log=log)
        else:
            log(f"{suite.name}: {suite.model} {height}x{width}, {suite.steps} steps, batch {batch}")
            reference = ReferenceContender(folder, suite.reference_device, suite.reference_precision,
                                           without=suite.without)
            peers = [peer_contender(folder, spec, suite, log) for spec in suite.peers]
            report = run_benchmark(suite.name, [*sdrt_runs, *peers, reference], gen, warmup=suite.warmup,
                                   reps=suite.reps, method=method, log=log)
            report.method["threads"] += f", torch {report.method.get('torch_threads')}"
        # a load that rose during the run is visible next to the one at its start
        report.method["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        stem = "result" if len(suite.batches) == 1 else f"result-b{batch}"
        written.append(write_report(report, out_dir, stem=stem))
    return written
