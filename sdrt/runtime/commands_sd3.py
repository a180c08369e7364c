"""`sdrt generate`'s options for SD3 / SD3.5 (diffusers' argument names): the T5 prompt and its length, and
running without T5."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SD3 / SD3.5")
    g.add_argument("--prompt-3", default=None, help="SD3: the prompt for the T5 encoder (default: --prompt)")
    g.add_argument("--negative-prompt-3", default=None, help="SD3: the T5 encoder's negative prompt")
    g.add_argument("--max-sequence-length", type=int, default=None,
                   help="SD3, Flux: T5 tokens the prompt may use (SD3's default 256, Flux's 512; at most 512; "
                        "shorter is faster)")
    g.add_argument("--no-t5", action="store_true",
                   help="SD3: leave the T5 encoder (text_encoder_3) unloaded, as diffusers' text_encoder_3=None: "
                        "zeros in its place, 9.5 GB less memory and no T5 time for SD3.5 (the images change)")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline.load's keywords these flags give."""
    return {"without": ["text_encoder_3"]} if getattr(args, "no_t5", False) else {}


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline keywords these flags give (only those set, so other families see none)."""
    return {key: getattr(args, key) for key in ("prompt_3", "negative_prompt_3", "max_sequence_length")
            if getattr(args, key, None) is not None}
