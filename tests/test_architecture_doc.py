"""docs/architecture.md stays true: every sdrt.json field is documented there, every family is named.

The manifest section lists each field as a dotted path in backticks (`pipeline.scaling_factor`,
`components.<name>.check.max_rel_error`, list items as `sizes.probed[].h`). A field that the schema
declares or that a real export writes, and that the page does not list, fails this test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import BaseModel

from sdrt import manifest_schema, spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def documented() -> set[str]:
    return set(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_.<>\[\]]*)`", DOC.read_text()))


def schema_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field of the pydantic schema, as dotted paths (a dict of sections: `<name>`)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from schema_paths(annotation, path + ".")
        elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):  # dict[str, Component]
            yield from schema_paths(args[-1], path + ".<name>.")


def data_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every key of a manifest as written, components and dims generalised to `<name>`."""
    if isinstance(value, dict):
        for key, item in value.items():
            label = "<name>" if prefix in ("components.", "pipeline.dims.") else key
            yield prefix + label
            yield from data_paths(item, prefix + label + ".")
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for item in value:
            yield from data_paths(item, prefix[:-1] + "[].")


def test_every_schema_field_is_documented():
    missing = sorted(set(schema_paths(manifest_schema.ManifestSchema)) - documented())
    assert not missing, f"sdrt.json fields missing from docs/architecture.md: {missing}"


@pytest.mark.parametrize("fixture", ["tiny_onnx", "tiny_sdxl_onnx", "tiny_sdxl_refiner_onnx", "tiny_lcm_onnx",
                                     "tiny_sd3_onnx", "tiny_sd3_streamed_onnx"])
def test_every_field_a_real_export_writes_is_documented(fixture, request):
    folder = request.getfixturevalue(fixture)
    data = json.loads((folder / "sdrt.json").read_text())
    missing = sorted(set(data_paths(data)) - documented())
    assert not missing, f"{fixture}: sdrt.json fields missing from docs/architecture.md: {missing}"


def test_every_family_and_package_is_named():
    text = DOC.read_text()
    for name in spec.FAMILIES:
        assert f"`{name}`" in text, name
    package = Path(__file__).resolve().parents[1] / "sdrt"
    for sub in sorted(p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        assert f"sdrt/{sub}/" in text, sub
