"""`sdrt generate`'s AUTOMATIC1111 options: prompt syntax, the hires fix, variation seeds, embeddings, VAE.

The prompt is read the diffusers way unless `--prompt-syntax a1111` (the Python API's default too;
`sdrt serve`'s A1111 API reads A1111's syntax by default).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from sdrt.errors import SdrtError


def _size(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" -> (width, height)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 1024x768)")
    return int(match.group(1)), int(match.group(2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AUTOMATIC1111: prompt syntax, hires fix, variation seeds, embeddings, VAE")
    g.add_argument("--prompt-syntax", choices=("diffusers", "a1111"), default="diffusers",
                   help="how the prompts are read: diffusers (default: brackets are text, cut at 77 tokens) or "
                        "a1111 ((word:1.3), [word], BREAK, prompts past 75 tokens in chunks)")
    g.add_argument("--hires-scale", type=float, default=None, metavar="F",
                   help="hires fix: draw at --width x --height, upscale by F, then img2img at the larger size")
    g.add_argument("--hires-resize", type=_size, default=None, metavar="WxH",
                   help="hires fix to this size instead of a scale (W or H 0: keep the aspect ratio)")
    g.add_argument("--hires-upscaler", default="Latent",
                   help="Latent (default), Latent (antialiased), Latent (bicubic), Latent (bicubic antialiased), "
                        "Latent (nearest), Latent (nearest-exact), Lanczos, Nearest")
    g.add_argument("--hires-steps", type=int, default=0, help="hires pass steps (default 0: as many as --steps)")
    g.add_argument("--hires-denoising", type=float, default=0.7,
                   help="hires pass denoising strength, 0..1 (default 0.7)")
    g.add_argument("--hires-scheduler", default=None, help="hires pass sampler (default: --scheduler)")
    g.add_argument("--hires-prompt", default=None, help="hires pass prompt (default: --prompt)")
    g.add_argument("--hires-negative-prompt", default=None, help="hires pass negative prompt (default: the first's)")
    g.add_argument("--subseed", type=int, default=None, help="variation seed (image i uses subseed + i)")
    g.add_argument("--subseed-strength", type=float, default=0.0,
                   help="how far towards the variation seed's image, 0..1 (default 0: the seed's image)")
    g.add_argument("--seed-resize-from", type=_size, default=None, metavar="WxH",
                   help="draw the seed's noise at this image size (keeps a seed's composition at a new size)")
    g.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="a textual-inversion embedding (A1111 .pt/.safetensors or diffusers .bin/.safetensors), "
                        "named in the prompt by its file name (repeatable)")
    g.add_argument("--embeddings-dir", default=None, metavar="DIR",
                   help="load every embedding in DIR (A1111's embeddings/ folder)")
    g.add_argument("--vae", default=None, metavar="DIR",
                   help="decode (and encode) with this VAE: an sdrt export holding vae_decoder (e.g. "
                        "sdrt export --model BASE --vae FILE --components vae_decoder vae_encoder)")


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline keywords these flags give (only those set)."""
    options: dict[str, Any] = {}
    if args.prompt_syntax == "a1111":
        options["prompt_syntax"] = "a1111"
    if args.subseed_strength:
        options.update(subseed=args.subseed if args.subseed is not None else -1, subseed_strength=args.subseed_strength)
    elif args.subseed is not None:
        raise SdrtError("--subseed needs --subseed-strength (how far towards it, 0..1)")
    if args.seed_resize_from is not None:
        options.update(seed_resize_from_w=args.seed_resize_from[0], seed_resize_from_h=args.seed_resize_from[1])
    return options


def hires_of(args: argparse.Namespace) -> Any:
    """The hires fix the flags ask for, or None (--hires-scale or --hires-resize turns it on)."""
    if args.hires_scale is None and args.hires_resize is None:
        others = [flag for flag, value in (("--hires-steps", args.hires_steps), ("--hires-prompt", args.hires_prompt),
                                           ("--hires-scheduler", args.hires_scheduler)) if value]
        if others:
            raise SdrtError(f"{others[0]} belongs to the hires fix: add --hires-scale F or --hires-resize WxH")
        return None
    if args.image is not None or args.mask is not None:
        raise SdrtError("the hires fix follows txt2img: drop --image / --mask, or the --hires-* flags")
    from sdrt.runtime.hires import HiresFix

    resize = args.hires_resize or (0, 0)
    return HiresFix(scale=args.hires_scale if args.hires_scale is not None else 1.0, resize_x=resize[0],
                    resize_y=resize[1], upscaler=args.hires_upscaler, steps=args.hires_steps,
                    denoising_strength=args.hires_denoising, scheduler=args.hires_scheduler,
                    prompt=args.hires_prompt, negative_prompt=args.hires_negative_prompt)


def embedding_files(args: argparse.Namespace) -> list[str]:
    """--embedding files, then every embedding file of --embeddings-dir (sorted)."""
    from sdrt.runtime.textual_inversion import files_in

    return [*args.embedding, *(files_in(args.embeddings_dir) if args.embeddings_dir else [])]


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline.load's keywords these flags give."""
    return {"vae": args.vae} if args.vae is not None else {}
