"""`sdrt generate`'s options for the SDXL family, LCM and the refiner hand-off (diffusers' argument names)."""

from __future__ import annotations

import argparse
from typing import Any

#: CLI flag -> pipeline keyword, for the (height, width) pairs of SDXL's size conditioning
SIZE_FLAGS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
              "negative_crops_coords_top_left", "negative_target_size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SDXL, Turbo, LCM and the refiner")
    g.add_argument("--prompt-2", default=None, help="SDXL, SD3: the prompt for the second text encoder (default: --prompt)")
    g.add_argument("--negative-prompt-2", default=None, help="SDXL, SD3: the second encoder's negative prompt")
    for key in SIZE_FLAGS:
        g.add_argument("--" + key.replace("_", "-"), type=int, nargs=2, metavar=("H", "W"), default=None,
                       help=f"SDXL micro-conditioning {key} (two whole numbers)")
    g.add_argument("--aesthetic-score", type=float, default=6.0, help="SDXL refiner: aesthetic score (default 6)")
    g.add_argument("--negative-aesthetic-score", type=float, default=2.5,
                   help="SDXL refiner: negative aesthetic score (default 2.5)")
    g.add_argument("--guidance-rescale", type=float, default=0.0,
                   help="rescale the guided prediction's std toward the text one, 0..1 (default 0; 0.7 is usual)")
    g.add_argument("--clip-skip", type=int, default=None,
                   help="use an earlier text-encoder layer (1 = the one before the last; SD 1.x/2.x need an "
                        "export with --hidden-states)")
    g.add_argument("--refiner", default=None, metavar="DIR",
                   help="an SDXL refiner export: the base stops at --denoising-end, the refiner finishes")
    g.add_argument("--denoising-end", type=float, default=None,
                   help="fraction of the schedule the base runs (with --refiner; default 0.8)")


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline keywords these flags give (only those set, so other families see none)."""
    options: dict[str, Any] = {}
    for key in ("prompt_2", "negative_prompt_2", "clip_skip", *SIZE_FLAGS):
        value = getattr(args, key)
        if value is not None:
            options[key] = tuple(value) if isinstance(value, list) else value
    if args.guidance_rescale:
        options["guidance_rescale"] = args.guidance_rescale
    return options


def refiner_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"aesthetic_score": args.aesthetic_score, "negative_aesthetic_score": args.negative_aesthetic_score}
