"""What a call records about itself beyond its arguments: enough to tell two images apart and redo one.

- `scheduler_name`: the registry name (`dpmpp_2m_karras`, ...) whose settings the scheduler has, so
  DPM++ 2M, its Karras form and DPM++ 2M SDE (one class, three configs) are told apart; `sampler`:
  AUTOMATIC1111's name for it (`DPM++ 2M Karras`, `Euler a`, ...), the class name when none fits;
  `schedule_type`: for a flow-matching sampler, A1111's schedule type when not "Automatic" (`Karras`, ...);
- `precision`: each component's, from the manifest;
- `model_hash`: the first 10 hex digits of a sha256 over the components' recorded sha256s (what
  AUTOMATIC1111's "Model hash" field holds for a checkpoint: a short content hash);
- `image_hash` / `mask_hash`: sha256 (first 16 hex digits) of the decoded input pixels (size, mode
  and bytes), so the same picture gives the same hash whatever file format it came in.
"""

from __future__ import annotations

import hashlib
from typing import Any

from PIL import Image


def pixels_hash(images: list[Image.Image]) -> str | None:
    if not images:
        return None
    digest = hashlib.sha256()
    for img in images:
        digest.update(f"{img.mode}:{img.width}x{img.height}:".encode())
        digest.update(img.tobytes())
    return digest.hexdigest()[:16]


def model_hash(manifest: Any) -> str | None:
    # the exported files' hashes (a graph rewritten for ControlNets keeps its export's: sdrt.residual_graph)
    digests = [entry.get("exported_sha256", entry.get("sha256")) for _, entry in sorted(manifest.components.items())]
    if not all(digests):
        return None
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:10]


def describe(manifest: Any, scheduler: Any, images: list[Image.Image], masks: list[Image.Image]) -> dict[str, Any]:
    from sdrt.runtime.schedulers import A1111_NAMES, FLOW_A1111_NAMES, FLOW_CLASSES, registry_name

    name = registry_name(scheduler)
    sampler, schedule = A1111_NAMES.get(name, type(scheduler).__name__), None
    if type(scheduler).__name__ in FLOW_CLASSES and name in FLOW_A1111_NAMES:  # SD3's "Euler" + "Karras", ...
        sampler, schedule = FLOW_A1111_NAMES[name]
    recorded = {
        "scheduler_name": name or type(scheduler).__name__,
        "sampler": sampler,
        "precision": {c: manifest.precision(c) for c in sorted(manifest.components)},
        "model_hash": model_hash(manifest),
    }
    if schedule not in (None, "Automatic"):
        recorded["schedule_type"] = schedule
    if images:
        recorded["image_hash"] = pixels_hash(images)
    if masks:
        recorded["mask_hash"] = pixels_hash(masks)
    return recorded
