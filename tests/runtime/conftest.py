"""Runtime fixtures: one sdrt Pipeline and one diffusers reference per exported tiny preset (session-wide)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def pipelines(tiny_onnx, tiny_sd21_onnx, tiny_inpaint_onnx):
    """preset name -> sdrt Pipeline on ort-cpu (loaded once)."""
    from sdrt.runtime import Pipeline

    folders = {"tiny": tiny_onnx, "tiny-sd21": tiny_sd21_onnx, "tiny-inpaint": tiny_inpaint_onnx}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = Pipeline.load(folders[name], backend="ort-cpu")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def references(tiny_onnx, tiny_sd21_onnx, tiny_inpaint_onnx):
    """preset name -> sdrt.reference.Reference (diffusers, fp32, CPU; loaded once)."""
    from sdrt.reference import load_reference

    folders = {"tiny": tiny_onnx, "tiny-sd21": tiny_sd21_onnx, "tiny-inpaint": tiny_inpaint_onnx}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_reference(folders[name])
        return cache[name]

    return get
