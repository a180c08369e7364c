"""`sdrt generate`'s IP-Adapter flags: `--ip-adapter DIR --ip-image PNG [--ip-scale X]`. Kept apart from
`commands_generate` so the IP-Adapter flags read in one place."""

from __future__ import annotations

import argparse
from typing import Any

from sdrt.errors import SdrtError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("IP-Adapter")
    g.add_argument("--ip-adapter", metavar="DIR",
                   help="an exported IP-Adapter folder (sdrt export --model IP_ADAPTER_DIR): an image as a prompt")
    g.add_argument("--ip-image", metavar="PNG", help="the image prompt of --ip-adapter")
    g.add_argument("--ip-scale", type=float, default=None, metavar="X",
                   help="the IP-Adapter's weight (diffusers' set_ip_adapter_scale; default 1.0, 0 = the prompt alone)")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline.load's `ip_adapter=` (empty without --ip-adapter); a flag without it is one line."""
    if not args.ip_adapter:
        if args.ip_image or args.ip_scale is not None:
            raise SdrtError("--ip-image and --ip-scale need --ip-adapter DIR")
        return {}
    if not args.ip_image:
        raise SdrtError("--ip-adapter needs its image prompt: pass --ip-image PNG")
    return {"ip_adapter": args.ip_adapter}


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The call's `ip_adapter_image` (read here, before any engine runs)."""
    if not args.ip_adapter:
        return {}
    from sdrt.runtime import images as imageio

    return {"ip_adapter_image": imageio.load_image(args.ip_image, "IP-Adapter image (--ip-image)")}


def configure(pipe: Any, args: argparse.Namespace) -> None:
    """Apply --ip-scale to the loaded pipeline."""
    if args.ip_adapter and args.ip_scale is not None:
        pipe.set_ip_adapter_scale(args.ip_scale)
