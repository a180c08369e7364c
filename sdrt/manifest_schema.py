"""The schema `sdrt.json` is validated against on load, and the integrity check of its components.

Validation uses pydantic (already in every install that serves, and the library the HTTP service's
request models use): one model per section lists the keys the engines and the runtime read, with
their types; unknown keys are allowed (newer exports, other model families add their own). A
manifest that parses as JSON but is not what sdrt wrote (a list, a missing key, a string where a
number belongs) is one line naming the JSON path, never a KeyError later.

`verify` recomputes each component's sha256 (model.onnx, then its .data when there is one: what
export records) and names the first file that changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdrt import hashing
from sdrt.errors import SdrtError


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class PipelineFacts(_Section):
    scaling_factor: Optional[float] = None  # the runtime needs it (checked there); engines do not
    shift_factor: Optional[float] = None
    vae_scale_factor: int = Field(ge=1)
    latent_channels: int = Field(ge=1)
    unet_in_channels: int = Field(ge=1)
    sample_size: Optional[int] = Field(default=None, ge=1)  # none in a ControlNet folder (no default size)
    vae_sample_size: Optional[int] = Field(default=None, ge=1)  # older manifests: none (see vae_tiling)
    text_hidden_size: int = Field(ge=1)
    token_length: int = Field(ge=1)
    family: str = Field(min_length=1)  # a key of sdrt.spec.FAMILIES (checked by Manifest.spec)
    variants: list[str] = Field(default_factory=list)
    dims: dict[str, int] = Field(default_factory=dict)  # the family's own shape symbols


class Component(_Section):
    file: str = Field(min_length=1)
    precision: str
    external_data: bool = False
    sha256: Optional[str] = None  # hex; checked by verify()
    bytes: Optional[int] = Field(default=None, ge=0)  # model.onnx + .data; checked by Manifest.component_hash


class Sizes(_Section):
    latent_multiple: int = Field(ge=1)
    min_latent: int = Field(ge=1)
    max_latent: int = Field(ge=1)


class ManifestSchema(_Section):
    format: str
    format_version: int = Field(ge=1)
    pipeline: PipelineFacts
    components: dict[str, Component] = Field(min_length=1)
    sizes: Sizes


def validate(data: Any, path: Path) -> None:
    """Raise one SdrtError line when `data` is not a manifest sdrt can run."""
    if not isinstance(data, dict):
        raise SdrtError(f"{path} holds a JSON {type(data).__name__}, not an sdrt manifest object: "
                        f"export the model again with --force")
    try:
        ManifestSchema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise SdrtError(f"{path} is malformed at {where}: {first['msg']} ({len(e.errors())} problem(s) in all): "
                        f"export the model again with --force") from None


def component_files(onnx_path: Path) -> list[Path]:
    """The files a component's recorded sha256 covers, in order: model.onnx, then its .data."""
    return [onnx_path, onnx_path.with_name(onnx_path.name + ".data")]


def component_bytes(paths: list[Path]) -> int:
    """Total size of the files (absent files skipped): a component's recorded `bytes`."""
    return sum(path.stat().st_size for path in paths if path.exists())


def component_sha256(paths: list[Path]) -> str:
    """sha256 over the files' bytes in order (absent files skipped): a component's recorded hash."""
    return hashing.files_sha256(paths)


def verify(folder: Path, components: dict[str, dict[str, Any]]) -> None:
    """Check every component's file against its recorded sha256; one line naming the first that differs."""
    for name, entry in sorted(components.items()):
        path = folder / entry["file"]
        recorded = entry.get("sha256")
        if not recorded:
            raise SdrtError(f"{folder}: no sha256 is recorded for {name}, so it cannot be verified: "
                            f"export the model again with this sdrt")
        if not path.is_file():
            raise SdrtError(f"{path} is missing: export the model again with --force")
        actual = component_sha256(component_files(path))
        if actual != recorded:
            changed = path.name + (" (or its .data)" if entry.get("external_data") else "")
            raise SdrtError(f"{path.parent / changed} changed since export: sha256 {actual[:12]}... but "
                            f"sdrt.json records {recorded[:12]}...: restore the file or export the model again")
