"""`sdrt preset NAME --out DIR`: write a built-in model as an ordinary diffusers folder.

`shapes` carries weights sdrt trained (sdrt/data/shapes); every other preset is a released
architecture or a tiny variant with seeded random weights. `--help` lists them all (sdrt.export.presets).
"""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from typing import Any

from sdrt.errors import SdrtError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdrt.export.presets import PRESETS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the preset list, one per line
    parser.description = textwrap.fill(parser.description or "", 79)
    width = max(map(len, PRESETS))

    def listing(trained: bool) -> list[str]:
        return [textwrap.fill(p.description, 79, initial_indent=f"  {name:<{width}}  ",
                              subsequent_indent=" " * (width + 4))
                for name, p in PRESETS.items() if p.trained == trained]

    from sdrt.export.controlnet_presets import CONTROLNET_PRESETS
    from sdrt.export.ip_adapter_presets import IP_ADAPTER_PRESETS

    controlnets = [textwrap.fill(p.description, 79, initial_indent=f"  {name:<{width}}  ",
                                 subsequent_indent=" " * (width + 4))
                   for name, p in {**CONTROLNET_PRESETS, **IP_ADAPTER_PRESETS}.items()]
    parser.epilog = "\n".join(["presets with weights trained by sdrt (real pictures):", *listing(True),
                                "presets with seeded random weights (for timings and tests; noise pictures):",
                                *listing(False), "ControlNets and IP-Adapters (diffusers' folder layouts; export them the same way):",
                                *controlnets])
    parser.add_argument("name", nargs="?", metavar="NAME", help="preset name (listed below and by --list)")
    parser.add_argument("--out", metavar="DIR", help="folder to write (must not exist, unless --force)")
    parser.add_argument("--seed", type=int, default=0,
                        help="weight seed of the random-weight presets: the same seed gives the same weights "
                             "(default 0; shapes' trained weights do not use it)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def _quiet_libraries() -> None:
    """Keep the terminal to sdrt's own line: no torchvision notices or per-shard progress bars."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run(args: argparse.Namespace) -> int:
    from sdrt.export.controlnet_presets import CONTROLNET_PRESETS
    from sdrt.export.ip_adapter_presets import IP_ADAPTER_PRESETS
    from sdrt.export.presets import PRESETS, get_preset, write_preset

    if args.list:
        width = max(map(len, PRESETS))
        for name, preset in PRESETS.items():
            print(f"{name:<{width}}  {preset.description}")
        return 0
    if not args.name:
        raise SdrtError("give a preset name (sdrt preset --list shows them) and --out DIR")
    if args.name in CONTROLNET_PRESETS or args.name in IP_ADAPTER_PRESETS:
        kind, write, trained = _add_on(args.name)
        what, done = f"{args.name} {kind}", f"{kind} preset"
    else:
        preset = get_preset(args.name)  # unknown name: fail before anything else
        write, trained = write_preset, preset.trained
        what, done = f"{args.name} preset", "preset"
    if not args.out:
        raise SdrtError(f"missing --out DIR: where to write the {what}")
    if args.seed < 0:
        raise SdrtError(f"--seed {args.seed} is negative: use a seed >= 0")
    _quiet_libraries()
    start = time.perf_counter()
    out = write(args.name, args.out, seed=args.seed, force=args.force)
    weights = "trained weights" if trained else f"seed {args.seed}"
    print(f"wrote {done} {args.name} ({weights}) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _add_on(name: str) -> tuple[str, Any, bool]:
    """A ControlNet or IP-Adapter preset (diffusers' folder layout): its kind, writer and whether it is trained."""
    from sdrt.export.controlnet_presets import CONTROLNET_PRESETS, get_controlnet_preset, write_controlnet
    from sdrt.export.ip_adapter_presets import write_ip_adapter

    if name in CONTROLNET_PRESETS:
        return "ControlNet", write_controlnet, get_controlnet_preset(name).trained
    return "IP-Adapter", write_ip_adapter, False
