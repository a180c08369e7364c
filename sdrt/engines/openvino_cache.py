"""The OpenVINO compiled-model store: one folder per compiled model, keyed like the other engines.

    DIR/engines/openvino/<component>-<key>/   OpenVINO's own cache blob (``CACHE_DIR``, written by
                                               OpenVINO at compile time, read back memory-mapped)
                                      /key.json  what the key hashed; written last, so it marks a
                                                 complete entry

The key hashes everything that makes a compiled model valid: the ONNX content (the manifest's
sha256 of model.onnx and its external data, `Manifest.component_hash`; never an mtime), the
OpenVINO version, the device and its name, the inference precision, the shape policy (dynamic, or
the static dims) and the compile options.
Another value of any of them is another folder, so a stale compiled model is never loaded.

An entry whose key.json exists but whose blob OpenVINO could not import is corrupt: the loader
says so, deletes the folder and compiles again (``rebuild``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from sdrt import atomic
from sdrt.manifest import engines_dir

KEY_FORMAT = 1
KEY_FILE = "key.json"


def identity(component: str, onnx_hash: str, library: str, device: str, device_name: str,
             precision: str, shapes: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every field a compiled model must match to be loaded."""
    return {"format": KEY_FORMAT, "component": component, "onnx": onnx_hash, "library": library,
            "device": device, "device_name": device_name, "precision": precision, "shapes": shapes,
            "options": {k: options[k] for k in sorted(options)}}


def cache_key(ident: Mapping[str, Any]) -> str:
    """``<component>-<16 hex digits>`` of the identity."""
    text = json.dumps(dict(ident), sort_keys=True)
    return f"{ident['component']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def store_root(folder: str | os.PathLike) -> Path:
    return engines_dir(folder, "openvino")


def entry_dir(folder: str | os.PathLike, ident: Mapping[str, Any]) -> Path:
    return store_root(folder) / cache_key(ident)


def is_complete(entry: Path) -> bool:
    """A finished entry: its key.json was written after OpenVINO wrote the blob."""
    return (entry / KEY_FILE).is_file()


def mark_complete(entry: Path, ident: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
    """Write key.json atomically (temp file, then rename): the entry is complete from here on."""
    entry.mkdir(parents=True, exist_ok=True)
    atomic.write_text(entry / KEY_FILE, json.dumps({"identity": dict(ident), **dict(extra or {})}, indent=2) + "\n")


def discard(entry: Path) -> None:
    """Remove a corrupt or half-written entry (the next compile writes it again)."""
    shutil.rmtree(entry, ignore_errors=True)


def blob_files(entry: Path) -> list[Path]:
    return sorted(p for p in entry.glob("*.blob") if p.is_file()) if entry.is_dir() else []
