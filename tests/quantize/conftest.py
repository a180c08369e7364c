"""Quantized folders of the tiny exports, made once per session (seconds: 2 calibration prompts, few steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

#: calibration and gate settings that keep every quantization of `tiny` to a few seconds
FAST = {"steps": 3, "size": 64}


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "prompts.txt"
    path.write_text("a photograph of a cat\n\n  a watercolour of a lighthouse  \n")
    return path


@pytest.fixture(scope="session")
def quantize_tiny(tiny_onnx: Path, calibration_file: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, dict]]:
    """(scheme, **Request fields) -> (the quantized folder, its quality report), each made once."""
    from sdrt.quantize import Request, quantize_model

    made: dict[tuple, tuple[Path, dict]] = {}

    def make(scheme: str = "int8", **fields) -> tuple[Path, dict]:
        key = (scheme, *sorted(fields.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("quantized") / f"tiny-{scheme}"
            calibration = calibration_file if scheme != "int8-weights" else None
            req = Request(model=tiny_onnx, out=out, scheme=scheme, calibration_file=calibration,
                          **{**FAST, **fields})
            made[key] = (out, quantize_model(req))
        return made[key]

    return make
