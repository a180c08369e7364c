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


def warm_and_time(call: Callable[[], Any], repeat: int | None) -> list[Any]:
    """One untimed warm-up `call()` (the very same call: same shapes, so every lazy initialisation and
    kernel choice happens there), then `repeat` timed calls, their results returned. `repeat` None:
    QUICK_REPEAT when the warm-up took under QUICK_CALL_S, else 1."""
    started = time.perf_counter()
    call()
    if repeat is None:
        repeat = QUICK_REPEAT if time.perf_counter() - started < QUICK_CALL_S else 1
    return [call() for _ in range(max(1, repeat))]


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
    log(f"sdrt on {pipe.backend_name}: one untimed warm-up call, then the timed calls ({args.steps} steps at "
        f"{width}x{height})")
    # the sampler's own draws (ancestral / SDE schedulers) replay torch's, so any --scheduler compares
    runs = warm_and_time(lambda: pipe(args.prompt, **call, generator=TorchReplay(args.seed), output_type="np"),
                         args.repeat)
    repeat = len(runs)
    log(f"PyTorch reference (diffusers, fp32, CPU): one untimed warm-up call, then {repeat} timed call(s)")
    ref = load_reference(onnx, source=src)
    ref_runs = warm_and_time(lambda: ref(args.prompt, **call, seed=args.seed), repeat)
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
        f"median of {repeat} timed call{'s' if repeat > 1 else ''} per side. A model this small runs in "
        f"milliseconds a step, so this ratio mostly measures per-call overhead and swings with machine load "
        f"(1-min load {os.getloadavg()[0]:.1f}); `sdrt bench` times real model sizes.",
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
              f"timed call(s) each (medians; UNet: median over all steps); sdrt on `{pipe.backend_name}` "
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
