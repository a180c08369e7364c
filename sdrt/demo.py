"""`sdrt demo`: the whole product in one command, on an embedded preset, with nothing to download.

Writes the preset as a diffusers folder, exports it to ONNX (reused when a previous export's
manifest matches the folder's content hash), generates with the best backend installed, runs
diffusers on the same weights and the same initial latents, and prints per-stage timings, the
speedup over PyTorch and the PSNR between the two images. Each side is warmed up by one untimed call
(the same call, so the same shapes) before its timed calls, and the numbers are medians. Everything
lands in one folder (`./sdrt-demo/` by default): the image of each side, `report.md`, and inputs to try
next (`sample.png`, `mask.png`); the demo ends by printing the commands that use them
(sdrt/demo_next_steps.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

#: exported components: all four, so the demo's folder also serves `sdrt generate --image/--mask`
DEMO_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
#: quick calls are repeated (medians steady the numbers on a busy machine); slow ones run once
QUICK_REPEAT, QUICK_CALL_S = 5, 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="sdrt-demo",
                   help="output folder (default ./sdrt-demo): the model (PRESET-diffusers, PRESET-onnx), the "
                        "pictures, report.md, sample.png and mask.png")
    p.add_argument("--preset", default="shapes",
                   help="built-in model (sdrt preset --list): shapes (default: trained by sdrt, real pictures in "
                        "seconds), or a random-weight one (tiny, sd15, ...: timings only, noise pictures)")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the preset's)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    p.add_argument("--scheduler", default=None, help="sampler name (default: the preset's)")
    p.add_argument("--backend", default="auto",
                   help="sdrt backend, as for `sdrt generate` (default auto: the fastest usable)")
    p.add_argument("--prompt", default="a red circle on a blue background",
                   help="the prompt (shapes knows \"a COLOUR SHAPE on a COLOUR background\": red, green, blue, "
                        "yellow, white; circle, square, triangle)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared initial latents (default 0)")
    p.add_argument("--repeat", type=int, default=None,
                   help=f"timed calls per side after one untimed warm-up call each, medians reported (default "
                        f"{QUICK_REPEAT} when the warm-up took under {QUICK_CALL_S:g} s, else 1)")


def log(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """The demo prints its own lines: silence diffusers' / transformers' progress bars and notices."""
    from sdrt.errors import SdrtError

    try:
        import diffusers
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        raise SdrtError(f"sdrt demo exports and runs PyTorch, which is not installed here ({e}): "
                        f"pip install 'sdrt[export]'") from None

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def prepare_model(preset: str, out: Path) -> tuple[Path, Path]:
    """(diffusers folder, ONNX folder) in `out`, each made only when missing or stale."""
    from sdrt.errors import SdrtError
    from sdrt.export.exporter import export_model
    from sdrt.export.presets import write_preset
    from sdrt.export.source import hash_folder
    from sdrt.manifest import Manifest

    src, onnx = out / f"{preset}-diffusers", out / f"{preset}-onnx"
    if not (src / "model_index.json").is_file():
        started = time.perf_counter()
        write_preset(preset, src, force=src.exists())
        log(f"wrote the {preset} preset to {src} in {time.perf_counter() - started:.1f} s")
    content_hash = hash_folder(src)
    try:
        manifest = Manifest.load(onnx)
        stale = (manifest.data.get("source", {}).get("content_hash") != content_hash
                 or any(not manifest.has(c) or manifest.precision(c) != "fp32" for c in DEMO_COMPONENTS))
    except SdrtError:
        stale = True
    if stale:
        started = time.perf_counter()
        log(f"exporting {src} to ONNX (once; later runs reuse it)")
        export_model(str(src), onnx, components=DEMO_COMPONENTS, force=onnx.exists(),
                     log=lambda line: log("  " + line))
        log(f"exported in {time.perf_counter() - started:.1f} s")
    else:
        log(f"reusing {onnx} (its manifest matches {src})")
    return src, onnx


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def table(rows: list[tuple[str, float, float]], backend: str) -> list[str]:
    lines = [f"| stage | sdrt ({backend}) | PyTorch (diffusers) | speedup |", "|---|---:|---:|---:|"]
    for name, ours, theirs in rows:
        speedup = f"{theirs / ours:.2f}x" if ours > 0 else "-"
        lines.append(f"| {name} | {_ms(ours)} | {_ms(theirs)} | {speedup} |")
    return lines


def warm_and_time(sides: dict[str, Callable[[], Any]], repeat: int | None,
                  log: Callable[[str], None] = lambda line: None) -> dict[str, list[Any]]:
    """Each side's call once, untimed (the very same call as the timed ones: same shapes, so lazy
    initialisation and kernel choices happen there), then `repeat` rounds of timed calls, the sides
    taking turns so both meet the same machine load. Returns each side's timed results. `repeat`
    None: QUICK_REPEAT when the slowest warm-up took under QUICK_CALL_S, else 1."""
    slowest = 0.0
    for name, call in sides.items():
        log(f"{name}: one untimed warm-up call")
        started = time.perf_counter()
        call()
        slowest = max(slowest, time.perf_counter() - started)
    if repeat is None:
        repeat = QUICK_REPEAT if slowest < QUICK_CALL_S else 1
    repeat = max(1, repeat)
    log(f"{repeat} timed call(s) per side, taking turns")
    results: dict[str, list[Any]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, call in sides.items():
            results[name].append(call())
    return results


def busy_machine_note(load: float | None = None, cpus: int | None = None) -> str:
    """A warning when other work shares the CPUs (1-min load over the CPU count plus one: the demo's own
    threads count about one per CPU): PyTorch's worker threads wait for each other at every operator,
    so a descheduled one stalls them all and its times grow many-fold, far more than sdrt's."""
    load = os.getloadavg()[0] if load is None else load
    cpus = cpus or os.cpu_count() or 1
    if load <= cpus + 1:
        return ""
    return (f" The machine looks busy (load {load:.1f} on {cpus} CPUs): PyTorch slows down far more than sdrt "
            f"when other work shares the CPUs, so rerun `sdrt demo` on an idle machine before quoting this ratio.")


def _spread(runs: list[Any]) -> str:
    """The end-to-end times of the timed calls, fastest to slowest (how much to trust their median)."""
    totals = sorted(r.timings.total for r in runs)
    return _ms(totals[0]) if len(totals) == 1 else f"{_ms(totals[0])} to {_ms(totals[-1])}"


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from sdrt import __version__
    from sdrt.demo_next_steps import next_steps_text, write_sample_inputs
    from sdrt.demo_picture import compose
    from sdrt.reference import TorchReplay, load_reference
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr, save_png, to_pil
    from sdrt.runtime.timing import merge

    started = time.perf_counter()
    quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src, onnx = prepare_model(args.preset, out)

    pipe = Pipeline.load(onnx, backend=args.backend)
    height = args.height or pipe.manifest.default_image_size
    width = args.width or pipe.manifest.default_image_size
    pipe.manifest.sizes.check_image_size(height, width)
    f = pipe.vae_scale_factor
    latents = np.random.default_rng(args.seed).standard_normal(
        (1, pipe.latent_channels, height // f, width // f), dtype=np.float32)
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, height=height, width=width,
                latents=latents, scheduler=args.scheduler)
    ref = load_reference(onnx, source=src)
    log(f"timing sdrt on {pipe.backend_name} and PyTorch (diffusers, fp32, CPU): {args.steps} steps at "
        f"{width}x{height}")
    # the sampler's own draws (ancestral / SDE schedulers) replay torch's, so any --scheduler compares
    timed = warm_and_time({"sdrt": lambda: pipe(args.prompt, **call, generator=TorchReplay(args.seed),
                                                output_type="np"),
                           "PyTorch": lambda: ref(args.prompt, **call, seed=args.seed)},
                          args.repeat, log=lambda line: log("  " + line))
    runs, ref_runs = timed["sdrt"], timed["PyTorch"]
    repeat = len(runs)
    ours, theirs = runs[0], ref_runs[0]
    quality = psnr(ours.images, theirs.images)

    save_png(to_pil(ours.images)[0], out / "sdrt.png")
    save_png(to_pil(theirs.images)[0], out / "pytorch.png")
    compose(out / "demo.png", f"\"{args.prompt}\"  ({args.preset}, {width}x{height}, {args.steps} steps)",
            [(f"sdrt ({pipe.backend_name})", ours.images[0]), ("PyTorch (diffusers)", theirs.images[0])],
            footer=f"PSNR sdrt vs PyTorch {quality:.1f} dB")
    a, b = merge([r.timings for r in runs]), merge([r.timings for r in ref_runs])
    rows = [("text encoder", a.text_encoder, b.text_encoder),
            ("UNet per step (median)", a.unet_per_step, b.unet_per_step),
            ("VAE decode", a.vae_decoder, b.vae_decoder),
            ("end to end", a.total, b.total)]
    lines = table(rows, pipe.backend_name)
    summary = "\n".join([
        f"PSNR sdrt vs PyTorch: {quality:.1f} dB (>= 40 dB: the same image)",
        f"End-to-end speedup {b.total / a.total:.2f}x: both sides warmed up (one untimed call each), then the "
        f"median of {repeat} timed call{'s' if repeat > 1 else ''} per side (sdrt {_spread(runs)}, PyTorch "
        f"{_spread(ref_runs)}). A model this small runs in milliseconds a step, so this ratio mostly measures "
        f"per-call overhead and swings with machine load (1-min load {os.getloadavg()[0]:.1f}); `sdrt bench` "
        f"times real model sizes.{busy_machine_note()}",
    ])
    print("\n".join(lines))
    print(summary)
    write_report(out, args, pipe, (width, height), lines, summary, ours, __version__, repeat)
    sample, mask = write_sample_inputs(out, ours.images[0])
    log(f"wrote {out / 'demo.png'} (side by side), {out / 'sdrt.png'}, {out / 'pytorch.png'}, {out / 'report.md'}, "
        f"{sample} and {mask} ({time.perf_counter() - started:.1f} s in all)")
    print()
    print(next_steps_text(out, onnx, args.prompt, args.steps, args.preset), flush=True)
    return 0


def write_report(out: Path, args: argparse.Namespace, pipe: Any, size: tuple[int, int], lines: list[str],
                 summary: str, ours: Any, version: str, repeat: int) -> None:
    import diffusers
    import numpy
    import onnxruntime
    import torch

    method = (f"One process, one untimed warm-up call each (the same call as the timed ones), then {repeat} "
              f"timed call(s) each, the two sides taking turns (medians; UNet: median over all steps); sdrt on `{pipe.backend_name}` "
              f"(fp32 ONNX), PyTorch = "
              f"diffusers StableDiffusionPipeline fp32 on the CPU, same weights, prompt, scheduler "
              f"({ours.parameters['scheduler']}) and initial latents (seed {args.seed}). A quick look, not a "
              f"benchmark: use `sdrt bench` for measurements.")
    text = [
        f"# sdrt demo — {args.preset}, {size[0]}x{size[1]}, {args.steps} steps",
        "",
        f"Prompt: \"{args.prompt}\", guidance scale {args.guidance_scale}.",
        "",
        *lines,
        "",
        summary,
        "",
        "![sdrt and PyTorch side by side](demo.png)",
        "",
        f"Method: {method}",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}; Python "
        f"{platform.python_version()}, sdrt {version}, onnxruntime {onnxruntime.__version__}, numpy "
        f"{numpy.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), diffusers "
        f"{diffusers.__version__}; {datetime.datetime.now().isoformat(timespec='seconds')}.",
        "",
    ]
    from sdrt.atomic import write_text

    write_text(out / "report.md", "\n".join(text))
