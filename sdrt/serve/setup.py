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
        from sdrt.runtime.optimum_view import is_optimum_folder

        if not (path / "sdrt.json").is_file() and not is_optimum_folder(path):
            raise SdrtError(f"--model {spec}: {path} is not an ONNX model folder (no sdrt.json): run sdrt export")
        if name in folders:
            raise SdrtError(f"--model {spec}: the name {name!r} is taken: use NAME=DIR to name it")
        folders[name] = path
    return folders


def vae_folders(specs: list[str]) -> dict[str, Path]:
    """["NAME=DIR", ...] -> {name: folder} (the --vae exports requests pick with sd_vae=NAME)."""
    folders: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise SdrtError(f"--vae {spec}: write NAME=DIR (NAME is what requests send as sd_vae)")
        if not (Path(folder) / "sdrt.json").is_file():
            raise SdrtError(f"--vae {spec}: {folder} is not an ONNX export (no sdrt.json): export the VAE with "
                            f"sdrt export --model BASE --vae FILE --components vae_decoder vae_encoder")
        if name in folders or name in ("Automatic", "None"):
            raise SdrtError(f"--vae {spec}: the name {name!r} is taken: pick another NAME")
        folders[name] = Path(folder)
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
    from sdrt.serve.styles import Styles
    from sdrt.serve.controlnets import ControlNetCatalog

    loras = LoraCatalog(getattr(args, "lora_dir", None))
    styles = Styles(getattr(args, "styles", None))
    controlnets = ControlNetCatalog(getattr(args, "controlnet_dir", None))
    folders = model_folders(args.model)
    options = backend_options(args)
    pipelines = {name: Pipeline.load(folder, backend=args.backend, precision=args.precision, **options)
                 for name, folder in folders.items()}
    vaes = vae_folders(getattr(args, "vae", []))
    for pipe in pipelines.values():  # a VAE that does not fit a model is one line before serving
        from sdrt.runtime.vae_swap import vae_manifest

        for folder in vaes.values():
            vae_manifest(pipe.manifest, folder)
    embeddings = getattr(args, "embeddings_dir", None)
    if embeddings:
        from sdrt.runtime.textual_inversion import files_in

        for pipe in pipelines.values():
            for path in files_in(embeddings):
                pipe.load_textual_inversion(path)
    return Service(pipelines, limits=limits_from(args), queue_size=args.queue_size, max_batch=args.max_batch,
                   batch_wait_s=args.batch_wait_ms / 1000.0, timeout_s=args.timeout, metrics=Metrics(), loras=loras,
                   styles=styles, vaes=vaes, controlnets=controlnets)
