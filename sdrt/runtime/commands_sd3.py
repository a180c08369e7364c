"""`sdrt generate`'s options for SD3 / SD3.5 (diffusers' argument names): the T5 prompt and its length."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SD3 / SD3.5")
    g.add_argument("--prompt-3", default=None, help="SD3: the prompt for the T5 encoder (default: --prompt)")
    g.add_argument("--negative-prompt-3", default=None, help="SD3: the T5 encoder's negative prompt")
    g.add_argument("--max-sequence-length", type=int, default=None,
                   help="SD3: T5 tokens the prompt may use (default 256, at most 512; shorter is faster)")


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline keywords these flags give (only those set, so other families see none)."""
    return {key: getattr(args, key) for key in ("prompt_3", "negative_prompt_3", "max_sequence_length")
            if getattr(args, key, None) is not None}
