"""From server options to a running `Service`: the models to serve, their limits and backend options.

`sdrt serve` (uvicorn) and each Ray Serve replica build their service here, from the command line's
options (an argparse namespace, or the replica's copy of it), so both serve exactly the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdrt.errors import SdrtError


def model_folders(specs: list[str]) -> dict[str, Path]:
    """["[NAME=]DIR", ...] -> {name: folder}; names must be unique."""
    folders: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        path = Path(folder if sep else spec)
        name = name if sep else path.resolve().name
        if not (path / "sdrt.json").is_file():
            raise SdrtError(f"--model {spec}: {path} is not an ONNX model folder (no sdrt.json): run sdrt export")
        if name in folders:
            raise SdrtError(f"--model {spec}: the name {name!r} is taken: use NAME=DIR to name it")
        folders[name] = path
    return folders


def limits_from(args: Any) -> Any:
    from sdrt.serve.limits import Limits

    for flag in ("queue_size", "max_batch", "max_pixels", "max_steps", "max_images", "max_prompt_chars"):
        if getattr(args, flag) < 1:
            raise SdrtError(f"--{flag.replace('_', '-')} must be >= 1")
    return Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels,
                  max_steps=args.max_steps, max_images=args.max_images, max_prompt_chars=args.max_prompt_chars)


def backend_options(args: Any) -> dict[str, Any]:
    from sdrt.runtime.load_options import cuda_graph_options, low_memory_options, vae_tiling_options

    return cuda_graph_options(args) | vae_tiling_options(args) | low_memory_options(args)


def build_service(args: Any) -> Any:
    """Load every model (only these are ever served) and start their workers."""
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.serve.loras import LoraCatalog
    from sdrt.serve.metrics import Metrics
    from sdrt.serve.service import Service

    from sdrt.serve.controlnets import ControlNetCatalog

    loras = LoraCatalog(getattr(args, "lora_dir", None))
    controlnets = ControlNetCatalog(getattr(args, "controlnet_dir", None))
    folders = model_folders(args.model)
    options = backend_options(args)
    pipelines = {name: Pipeline.load(folder, backend=args.backend, precision=args.precision, **options)
                 for name, folder in folders.items()}
    return Service(pipelines, limits=limits_from(args), queue_size=args.queue_size, max_batch=args.max_batch,
                   batch_wait_s=args.batch_wait_ms / 1000.0, timeout_s=args.timeout, metrics=Metrics(), loras=loras,
                   controlnets=controlnets)
