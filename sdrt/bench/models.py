"""Which files a benchmark runs: the ONNX folder for sdrt, and a diffusers folder with the same
weights for the reference.

A preset or a diffusers folder is exported once into a cache (``$SDRT_CACHE``, default
``~/.cache/sdrt``) by `sdrt export` in a subprocess, so this process does not import torch before
sdrt's phase of the benchmark. For the reference, a preset is written once as an ordinary
diffusers folder, so the reference's load time is diffusers' ``from_pretrained`` from local disk
(what a user pays), not the preset's seeded random initialization.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from sdrt.errors import SdrtError
from sdrt.manifest import MANIFEST_NAME, Manifest


def cache_root() -> Path:
    return Path(os.environ.get("SDRT_CACHE") or Path.home() / ".cache" / "sdrt").expanduser()


def _is_onnx_folder(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def onnx_folder(model: str, onnx: str | None = None, log: Callable[[str], None] = print) -> Path:
    """An exported ONNX folder for ``model`` (a preset, a diffusers folder or an ONNX folder).

    ``onnx``: an existing export to use; exported from a preset, it must be ``model``'s (no silent
    mismatch); exported from a folder, the report names that folder as the model.
    """
    if onnx is not None:
        folder = Path(onnx)
        source = Manifest.load(folder).data.get("source", {})
        if source.get("kind") == "preset" and source.get("name") != model:
            raise SdrtError(f"--onnx {folder} was exported from {source.get('kind')} {source.get('name')!r}, "
                            f"not {model!r}: pass the matching folder or drop --onnx")
        return folder
    path = Path(model)
    if _is_onnx_folder(path):
        return path
    name = path.resolve().name if path.exists() else model
    cached = cache_root() / "bench" / "onnx" / name
    if _is_onnx_folder(cached):
        return cached
    log(f"exporting {model} to {cached} (once; later runs reuse it) ...")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sdrt.cli", "export", "--model", str(model), "--out", str(cached)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not _is_onnx_folder(cached):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SdrtError(f"exporting {model} for the benchmark failed ({last}): "
                        f"run `sdrt export --model {model} --out DIR` and pass --onnx DIR")
    return cached


def reference_source(manifest: Manifest) -> Path:
    """A local diffusers folder with the weights ``manifest``'s folder was exported from."""
    source = manifest.data.get("source") or {}
    kind, name, path = source.get("kind"), source.get("name"), source.get("path")
    if kind == "folder" and path and Path(path).is_dir():
        return Path(path)
    if kind == "preset":
        from sdrt.export.presets import write_preset

        seed = int(source.get("seed", 0))
        # keyed by the export's content hash: presets whose weights changed are written anew
        digest = str(source.get("content_hash", "")).split(":")[-1][:12] or "unhashed"
        folder = cache_root() / "bench" / "presets" / f"{name}-seed{seed}-{digest}"
        if not (folder / "model_index.json").is_file():
            write_preset(name, folder, seed=seed, force=folder.exists())
        return folder
    raise SdrtError(f"{manifest.folder}: the source it was exported from ({kind} {name or path!r}) is not "
                    f"available here, so there is no PyTorch reference: export from a preset or a local folder")


def quantized_folder(folder: Path, scheme: str, size: int | None, log: Callable[[str], None] = print) -> Path:
    """``folder`` quantized with ``scheme`` (`sdrt quantize` in a subprocess, once: ``<folder>-<scheme>``
    beside it), calibrated and scored at the benchmark's image size. The gate's verdict is recorded in
    that folder's sdrt.json and the benchmark reports its own quality columns, so a folder below the
    default gate is still written (--accept-quality-loss) and measured."""
    out = folder.parent / f"{folder.name}-{scheme}"
    if _is_onnx_folder(out):
        return out
    log(f"quantizing {folder} ({scheme}) into {out} (once; later runs reuse it) ...")
    cmd = [sys.executable, "-m", "sdrt.cli", "quantize", "--model", str(folder), "--out", str(out),
           "--scheme", scheme, "--accept-quality-loss"] + (["--size", str(size)] if size else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not _is_onnx_folder(out):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SdrtError(f"quantizing {folder} ({scheme}) for the benchmark failed ({last}): "
                        f"run `sdrt quantize --model {folder} --out {out} --scheme {scheme}` and see why")
    return out
