"""The quantized model folder: the float folder's files linked (hard links, else copies), the quantized
components' graphs new, and sdrt.json saying what was done.

Hard links share the float folder's bytes (no second copy on disk) and stay valid when the float
folder is deleted or exported again (a new export writes new files; the links keep the old ones).
Never symbolic links: a quantized folder must not change when its source does. `engines/` (what
backends compiled for the float folder) is not carried over.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sdrt import manifest_schema
from sdrt.manifest import ENGINES_DIR, MANIFEST_NAME

#: per-component files about the float graph that a quantized component leaves out (none: its weight map
#: stays, for the names, shapes and layouts a LoRA's side paths need; its byte ranges describe the float
#: file, which a quantized component never reads: a merged LoRA on it is refused, docs/quantize.md)
FLOAT_ONLY: tuple[str, ...] = ()


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(src, dst)


def link_source(source: Path, stage: Path, quantized: dict[str, Path]) -> None:
    """Every file of `source` into `stage`, except engines/, sdrt.json and the quantized components'
    graphs and weight maps (`quantized`: component -> its folder, relative)."""
    skip_dirs = {Path(ENGINES_DIR)}
    for root, dirs, files in os.walk(source):
        rel_root = Path(root).relative_to(source)
        dirs[:] = [d for d in dirs if rel_root / d not in skip_dirs and not d.startswith(".")]
        for name in files:
            rel = rel_root / name
            if rel == Path(MANIFEST_NAME) or name.startswith("."):
                continue
            if rel_root in quantized.values() and (name.startswith("model.onnx") or name in FLOAT_ONLY):
                continue
            link_or_copy(source / rel, stage / rel)


def component_entry(stage: Path, float_entry: dict[str, Any], scheme: str, facts: dict[str, Any],
                    calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest entry of a quantized component (its graph already written into `stage`)."""
    path = stage / float_entry["file"]
    files = manifest_schema.component_files(path)
    entry = {k: v for k, v in float_entry.items() if k not in ("sha256", "bytes", "check")}
    entry.update({
        "external_data": files[1].exists(),
        "precision_note": f"{scheme} Q/DQ graph written by sdrt quantize; inputs and outputs stay "
                          f"{float_entry.get('precision', 'fp32')}",
        "sha256": manifest_schema.component_sha256(files),
        "bytes": manifest_schema.component_bytes(files),
        "quantization": {"scheme": scheme, **facts, "calibration": calibration,
                         "source_sha256": float_entry.get("sha256"),
                         "source_bytes": float_entry.get("bytes")},
    })
    return entry


def quantized_manifest(data: dict[str, Any], source: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from sdrt import __version__

    out = {**data, "components": {**data["components"], **entries}}
    out["quantized_from"] = {"path": str(source.resolve()), "sdrt_version": __version__,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return out
