"""`sdrt generate`'s ControlNet flags: `--controlnet DIR[:SCALE] --control-image PNG` (repeatable, in pairs),
`--control-start`, `--control-end`, `--preprocess` (one value for all, or one per ControlNet) and
`--guess-mode`. Kept apart from `commands_generate` so the ControlNet flags read in one place."""

from __future__ import annotations

import argparse
from typing import Any

from sdrt.errors import SdrtError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ControlNet")
    g.add_argument("--controlnet", action="append", default=[], metavar="DIR[:SCALE]",
                   help="an exported ControlNet folder (sdrt export --model CONTROLNET_DIR), at SCALE (default 1); "
                        "repeatable, each with its --control-image")
    g.add_argument("--control-image", action="append", default=[], metavar="PNG",
                   help="the control image of each --controlnet (resized to the output size)")
    g.add_argument("--control-start", action="append", type=float, default=[], metavar="S",
                   help="fraction of the steps where the ControlNet starts (default 0); one for all or one each")
    g.add_argument("--control-end", action="append", type=float, default=[], metavar="E",
                   help="fraction of the steps where it stops (default 1); one for all or one each")
    g.add_argument("--preprocess", action="append", default=[], metavar="NAME",
                   help="make the control image from --control-image first: none (default), canny, invert, "
                        "binary, tile_resample; one for all or one each")
    g.add_argument("--guess-mode", action="store_true",
                   help="the ControlNets see only the prompt's half of the guidance batch, scaled from 0.1 to 1 "
                        "down the blocks (diffusers' guess_mode; A1111's 'ControlNet is more important')")


def parse_controlnet_arg(text: str) -> tuple[str, float]:
    """DIR[:SCALE] -> (DIR, SCALE); a folder name with a colon keeps it when the tail is no number."""
    folder, sep, tail = text.rpartition(":")
    if sep:
        try:
            return folder, float(tail)
        except ValueError:
            pass
    return text, 1.0


def _each(label: str, values: list[Any], count: int, default: Any) -> list[Any]:
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise SdrtError(f"{len(values)} {label} values for {count} --controlnet: pass one for all, or one each")
    return values


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline.load's `controlnet=` (empty without --controlnet)."""
    if not args.controlnet:
        if args.control_image or args.control_start or args.control_end or args.preprocess or args.guess_mode:
            raise SdrtError("--control-image and the other ControlNet flags need --controlnet DIR")
        return {}
    return {"controlnet": [parse_controlnet_arg(text)[0] for text in args.controlnet]}


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The call's ControlNet arguments (control images preprocessed here, before any engine runs)."""
    if not args.controlnet:
        return {}
    from sdrt.runtime import images as imageio, preprocessors

    count = len(args.controlnet)
    if len(args.control_image) != count:
        raise SdrtError(f"{len(args.control_image)} --control-image for {count} --controlnet: pass one control "
                        f"image after each --controlnet")
    modules = _each("--preprocess", args.preprocess, count, "none")
    for module in modules:
        preprocessors.get(module)  # an unknown or model-based one fails before any image is read
    images = [preprocessors.run(module, imageio.load_image(path, "control image"))
              for module, path in zip(modules, args.control_image)]
    return {"control_image": images if count > 1 else images[0],
            "controlnet_conditioning_scale": [parse_controlnet_arg(text)[1] for text in args.controlnet],
            "control_guidance_start": _each("--control-start", args.control_start, count, 0.0),
            "control_guidance_end": _each("--control-end", args.control_end, count, 1.0),
            "guess_mode": args.guess_mode}
