"""The `Pipeline.load` options that command-line and server options ask for (--cuda-graph, --vae-tiling,
--low-memory).

Shared by `sdrt generate` and `sdrt serve` (and its Ray replicas), so a flag means the same everywhere.
`args` is any object with the option attributes (an argparse namespace, a replica's config).
"""

from __future__ import annotations

from typing import Any


def cuda_graph_options(args: Any) -> dict[str, Any]:
    """--cuda-graph -> the backends' one option for it; a backend without CUDA graphs says so."""
    if not args.cuda_graph:
        return {}
    from sdrt.engines.base import backend_class, offering
    from sdrt.errors import SdrtError

    if args.backend != "auto" and "cuda_graph" not in backend_class(args.backend).options:
        raise SdrtError(f"--cuda-graph needs a GPU backend ({', '.join(offering('cuda_graph'))}); "
                        f"{args.backend} has no CUDA graphs: drop --cuda-graph")
    return {"cuda_graph": True}


def vae_tiling_options(args: Any) -> dict[str, Any]:
    """--vae-tiling / --vae-tile-size -> Pipeline.load's options (checked there)."""
    tiling, size = getattr(args, "vae_tiling", False), getattr(args, "vae_tile_size", None)
    return {"vae_tiling": tiling, "vae_tile_size": size} if tiling or size is not None else {}


def add_low_memory_argument(p: Any) -> None:
    p.add_argument("--low-memory", default="auto", choices=("auto", "on", "off"),
                   help="load the text encoders and the denoiser in turn, never together (auto, the default: when "
                        "they would not fit the memory available, e.g. SD3.5 Medium with T5-XXL on 24 GB); no LoRAs")


def low_memory_options(args: Any) -> dict[str, Any]:
    """--low-memory -> Pipeline.load's `low_memory` (checked there); the default, "auto", is Pipeline.load's own
    and is left out (a server's options list what the user changed)."""
    mode = getattr(args, "low_memory", None)
    return {"low_memory": mode} if mode not in (None, "auto") else {}
