"""`sdrt preset NAME --out DIR`: write a seeded random-weight preset as an ordinary diffusers folder."""

from __future__ import annotations

import argparse
import os
import time

from sdrt.errors import SdrtError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="preset name (see --list)")
    parser.add_argument("--out", metavar="DIR", help="folder to write (must not exist, unless --force)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed: the same seed gives the same weights")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def _quiet_libraries() -> None:
    """Keep the terminal to sdrt's own line: no torchvision notices or per-shard progress bars."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run(args: argparse.Namespace) -> int:
    from sdrt.export.presets import PRESETS, get_preset, write_preset

    if args.list:
        width = max(map(len, PRESETS))
        for name, preset in PRESETS.items():
            print(f"{name:<{width}}  {preset.description}")
        return 0
    if not args.name:
        raise SdrtError("give a preset name (sdrt preset --list shows them) and --out DIR")
    preset = get_preset(args.name)  # unknown name: fail before anything else
    if not args.out:
        raise SdrtError(f"missing --out DIR: where to write the {args.name} preset")
    if args.seed < 0:
        raise SdrtError(f"--seed {args.seed} is negative: use a seed >= 0")
    _quiet_libraries()
    start = time.perf_counter()
    out = write_preset(args.name, args.out, seed=args.seed, force=args.force)
    weights = "trained weights" if preset.trained else f"seed {args.seed}"
    print(f"wrote preset {args.name} ({weights}) to {out} in {time.perf_counter() - start:.1f} s")
    return 0
