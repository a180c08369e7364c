"""`sdrt generate`: images from an ONNX model folder with the torch-free pipeline.

One PNG per image, named `NNNNN-SEED-INDEX.png` (a running number, so nothing is overwritten; SEED is
that image's own seed: `--seed S` gives image i the seed S + i, and `--seed S+i` alone redraws it), with
the generation parameters in a PNG text chunk "parameters" written the way AUTOMATIC1111's web UI
does (prompt, "Negative prompt: ...", then "Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: ..")
so image viewers and SD tools show them, plus the full call as JSON in a chunk "sdrt".
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sdrt.runtime import commands_a1111, commands_controlnet, commands_ip_adapter, commands_sd3, commands_sdxl
from sdrt.runtime.infotext import a1111_parameters, image_seed
from sdrt.runtime.load_options import (add_low_memory_argument, cuda_graph_options, low_memory_options,
                                       vae_tiling_options)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="ONNX model folder written by `sdrt export` (or by `sdrt demo`: sdrt-demo/shapes-onnx)")
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (needs --guidance-scale > 1)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; Flux 28)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance; <= 1 turns it off and halves the UNet work (default 7.5). "
                        "Flux dev: the embedded guidance (default 3.5); schnell-style Flux ignores it")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the image's, else the model's)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the image's, else the model's)")
    p.add_argument("--seed", type=int, default=None, help="random seed; image i uses seed + i (AUTOMATIC1111's convention). "
                   "-1 or none: a fresh one, printed and written in each PNG")
    p.add_argument("--scheduler", default=None, help="sampler: ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, dpmpp_sde, lms, unipc, lcm, "
                        "or a diffusers class name (default: the model's)")
    p.add_argument("--num-images", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per pipeline call (AUTOMATIC1111's batch size; --num-images is split into "
                        "calls of this many, each image keeping seed + i). Default: all in one call")
    p.add_argument("--image", default=None, help="start image: img2img, or inpainting with --mask")
    p.add_argument("--strength", type=float, default=None,
                   help="how much of --image to repaint, 0..1 (default 0.8; SDXL img2img 0.3, as diffusers)")
    p.add_argument("--mask", default=None, help="inpainting mask: white = repaint, black = keep (needs --image)")
    p.add_argument("--backend", default="auto", help="ort-cpu, openvino, ort-cuda, tensorrt, tensorrt_rtx, or auto (default: the fastest usable)")
    p.add_argument("--precision", default=None, choices=("f32", "bf16", "f16"),
                   help="run-time precision (default: the exported one); bf16/f16 need --backend openvino "
                        "(bf16: a CPU with AVX512-BF16 or AMX)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay the UNet step as a CUDA graph (ort-cuda, tensorrt, tensorrt_rtx; one fixed shape)")
    p.add_argument("--auto-build", action="store_true",
                   help="TensorRT: build a missing engine on the spot (static, for this call's size) instead of "
                        "using the next backend (auto) or failing (a named TensorRT backend)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA .safetensors file (kohya or diffusers format) at SCALE (default 1); repeatable")
    p.add_argument("--lora-dir", default=None,
                   help="folder where AUTOMATIC1111 prompt tags <lora:NAME:SCALE> find NAME.safetensors")
    add_vae_tiling_arguments(p)
    add_low_memory_argument(p)
    p.add_argument("--out", default="sdrt-out", help="output folder (default ./sdrt-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no listing of the written files")
    commands_sdxl.add_arguments(p)
    commands_sd3.add_arguments(p)
    commands_a1111.add_arguments(p)
    commands_controlnet.add_arguments(p)
    commands_ip_adapter.add_arguments(p)


def add_vae_tiling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vae-tiling", action="store_true",
                   help="decode large images in overlapping tiles (diffusers' enable_vae_tiling): less memory, "
                        "pixels slightly unlike the whole decode")
    p.add_argument("--vae-tile-size", type=int, default=None, metavar="PX",
                   help="tile size in pixels for --vae-tiling, a multiple of 4 x the VAE factor (default: the "
                        "VAE's sample_size, 512 for SD 1.5)")


def refiner_pipeline(args: argparse.Namespace, base: Any, options: dict[str, Any]) -> Any:
    """--refiner DIR: the second pipeline of the hand-off, checked against the base before any work."""
    from sdrt.errors import SdrtError

    if args.refiner is None:
        if args.denoising_end is not None:
            raise SdrtError("--denoising-end hands the latents to a refiner: add --refiner DIR (or leave it out)")
        return None
    if args.image is not None or args.mask is not None:
        raise SdrtError("--refiner runs txt2img on the base, then the refiner: drop --image / --mask")
    from sdrt.manifest import Manifest
    from sdrt.runtime import refiner as handoff
    from sdrt.runtime.arguments import check_fraction
    from sdrt.runtime.pipeline import Pipeline

    check_fraction("--denoising-end", args.denoising_end)
    handoff.check_pair(base.manifest, Manifest.load(args.refiner))
    return Pipeline.load(args.refiner, backend=args.backend, **options)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sdrt import __version__
    from sdrt.atomic import terminate_as_exception
    from sdrt.runtime import conditioning, outputs
    from sdrt.errors import SdrtError
    from sdrt.runtime.images import save_png
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.runtime.seeds import image_seeds

    options = (cuda_graph_options(args) | ({"auto_build": True} if args.auto_build else {}) | vae_tiling_options(args)
               | low_memory_options(args))
    out = outputs.check_writable(args.out)  # before any work: an unwritable --out is found in a second
    from sdrt.runtime.lora import parse_lora_arg
    from sdrt.runtime.lora.adapters import prompt_loras

    prompt, tagged = prompt_loras(args.prompt, args.lora_dir)
    loras = [parse_lora_arg(text) for text in args.lora] + tagged
    hires = commands_a1111.hires_of(args)
    a1111_call = commands_a1111.call_options(args)
    control = commands_controlnet.load_options(args)
    control_call = commands_controlnet.call_options(args)  # a bad flag or image fails before any engine loads
    ip = commands_ip_adapter.load_options(args)
    control_call.update(commands_ip_adapter.call_options(args))
    pipe = Pipeline.load(args.model, backend=args.backend, precision=args.precision, loras=loras, **options,
                         **commands_a1111.load_options(args), **commands_sd3.load_options(args), **control,
                         **ip)
    commands_ip_adapter.configure(pipe, args)
    for path in commands_a1111.embedding_files(args):
        pipe.load_textual_inversion(path)
    refiner = refiner_pipeline(args, pipe, {"precision": args.precision, **options})
    flux = pipe.family_spec.guidance == "distilled"
    default_steps = 28 if flux else 50
    expected = args.steps or default_steps
    if args.image is not None and isinstance(expected, int) and 0 <= (args.strength or 0.8) <= 1:
        expected = conditioning.start_index(expected, args.strength or 0.8, 1)[1]
    if hires is not None:
        expected += hires.steps or args.steps or default_steps
    num_images = args.num_images
    if num_images < 1:
        raise SdrtError(f"num_images_per_prompt (--num-images) {num_images!r} must be a whole number >= 1")
    batch_size = num_images if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise SdrtError(f"--batch-size {batch_size} must be >= 1 (images per pipeline call)")
    seeds = image_seeds(args.seed, num_images)  # image i: seed + i, whatever batch it runs in
    batches = [seeds[i:i + batch_size] for i in range(0, num_images, batch_size)]
    bar = tqdm(total=expected * len(batches), unit="step", desc="denoising",
               disable=args.quiet or not sys.stderr.isatty())
    interrupted = "generate interrupted (SIGTERM): the images listed above are complete, no partial file was left"
    index = 0
    with terminate_as_exception(interrupted), outputs.reserved_number(out) as number:
        for batch in batches:
            try:
                steps = {} if flux else {"num_inference_steps": 50, "guidance_scale": 7.5}  # Flux: the pipeline's
                steps.update({k: v for k, v in (("num_inference_steps", args.steps),
                                                ("guidance_scale", args.guidance_scale)) if v is not None})
                call = dict(negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                            num_images_per_prompt=len(batch), seed=batch, scheduler=args.scheduler,
                            callback=lambda i, t, x: bar.update(1), **steps, **commands_sdxl.call_options(args),
                            **commands_sd3.call_options(args), **a1111_call, **control_call)
                if hires is not None:
                    from sdrt.runtime.hires import generate as generate_hires

                    result = generate_hires(pipe, prompt, hires=hires, **call)
                elif refiner is not None:
                    from sdrt.runtime import refiner as handoff

                    result = handoff.generate(pipe, refiner, prompt, denoising_end=args.denoising_end or 0.8,
                                              refiner_options=commands_sdxl.refiner_options(args), **call)
                else:
                    result = pipe(prompt, image=args.image, strength=args.strength, mask_image=args.mask,
                                  **call, **(commands_sdxl.refiner_options(args) if pipe.family_spec.aesthetic_score
                                             else {}))
            except BaseException:
                bar.close()
                raise
            if index == 0 and args.seed in (None, -1):  # printed even with --quiet: the only way back
                print(f"seed {seeds[0]} (random; image i used seed {seeds[0]} + i)", file=sys.stderr)
            params = {**result.parameters, "seed": seeds[0], "seeds": seeds, "num_images_per_prompt": num_images}
            for unit, module in zip(params.get("controlnets", []), args.preprocess * len(args.controlnet)):
                unit["module"] = module
            for image in result.images:  # written after each batch: memory holds one batch at a time
                seed = image_seed(params, index)
                path = out / f"{number:05d}-{seed}-{index}.png"
                save_png(image, path, {"parameters": a1111_parameters(params, index),
                                       "sdrt": json.dumps({**params, "seed": seed, "index": index,
                                                           "sdrt_version": __version__})})
                if not args.quiet:
                    print(path)
                index += 1
    bar.close()
    if not args.quiet:
        t = result.timings
        warmup = " (PNDM's PLMS runs one extra UNet call to warm up its multistep history)" \
            if params.get("scheduler") == "PNDMScheduler" and len(t.unet_steps) == expected + 1 else ""
        calls = f"{len(batches)} calls of up to {batch_size} images, last " if len(batches) > 1 else ""
        label = "UNet" if pipe.denoiser == "unet" else pipe.denoiser
        print(f"{params['mode']} on {params['backend']}: {calls}{t.total:.2f} s ({len(t.unet_steps)} {label} "
              f"calls{warmup}, {label} {t.unet_per_step * 1000:.1f} ms/step)", file=sys.stderr)
    return 0
