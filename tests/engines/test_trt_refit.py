"""LoRA on TensorRT by refitting (sdrt.engines.trt_refit), on the fake `tensorrt` and CUDA: no GPU here.

What is checked: weights go to `set_named_weights` by initializer name and the engine is refitted
once per switch; a switch also restores the base values of weights no longer overridden (A -> B -> A
ends with A's values); an engine loaded later gets the overrides; the one-line errors for an engine
that is not refittable or lacks a weight; `sdrt build --refit` asks polygraphy for a refittable
engine and keys it apart from a plain one. UNVERIFIED against a real TensorRT.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from sdrt.engines import trt_build, trt_refit
from sdrt.errors import SdrtError
from tests.engines.test_trt_runtime import setup

WEIGHTS = ("unet.conv_in.weight", "val_93", "val_94")


class FakeRefitter:
    """Records what a refit sets; knows the engine's weight names."""

    log: list = []

    def __init__(self, engine, logger):
        self.engine, self.set = engine, {}

    def get_all_weights(self):
        return list(WEIGHTS)

    def set_named_weights(self, name, weights):
        self.set[name] = np.array(weights.array)
        return True

    def get_missing_weights(self):
        return []

    def refit_cuda_engine(self):
        self.engine.weights = {**getattr(self.engine, "weights", {}), **self.set}
        FakeRefitter.log.append(dict(self.set))
        return True


def with_refitter(engine, refittable=True):
    trt = engine.session.trt
    trt.Refitter = FakeRefitter
    trt.Weights = lambda array: types.SimpleNamespace(array=array)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    FakeRefitter.log = []
    engine.prepare({"B": 2, "h": 8, "w": 8})
    engine._engine.refittable = refittable
    return engine


def test_switching_refits_in_place_and_restores_the_base(tmp_path):
    engine = with_refitter(setup(tmp_path)[0])
    base = {n: np.zeros(3, np.float16) for n in WEIGHTS}
    a = {"val_93": np.full(3, 1, np.float16), "val_94": np.full(3, 2, np.float16)}
    b = {"unet.conv_in.weight": np.full(3, 5, np.float16)}
    loaded = engine._engine
    assert trt_refit.reweight(engine, a, {}) is engine
    assert trt_refit.reweight(engine, b, {n: base[n] for n in a}) is engine
    trt_refit.reweight(engine, a, {"unet.conv_in.weight": base["unet.conv_in.weight"]})
    assert engine._engine is loaded  # never rebuilt nor reloaded
    assert len(FakeRefitter.log) == 3 and sorted(FakeRefitter.log[1]) == sorted(WEIGHTS)
    final = loaded.weights
    assert all(np.array_equal(final[n], a[n]) for n in a)
    assert np.array_equal(final["unet.conv_in.weight"], base["unet.conv_in.weight"])
    trt_refit.reweight(engine, {}, {n: base[n] for n in a})
    assert all(np.array_equal(loaded.weights[n], base[n]) for n in WEIGHTS) and engine.weights == {}


def test_an_engine_loaded_later_gets_the_overrides(tmp_path):
    engine = setup(tmp_path)[0]
    engine.session.trt.Refitter = FakeRefitter
    engine.session.trt.Weights = lambda array: types.SimpleNamespace(array=array)
    engine.session.trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    FakeRefitter.log = []
    trt_refit.reweight(engine, {"val_93": np.ones(3, np.float16)}, {})  # nothing loaded yet: only recorded
    assert FakeRefitter.log == []
    from tests.engines import trt_fakes

    original = trt_fakes.FakeEngine.__init__

    def refittable_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.refittable = True

    trt_fakes.FakeEngine.__init__ = refittable_init
    try:
        engine.prepare({"B": 2, "h": 8, "w": 8})
    finally:
        trt_fakes.FakeEngine.__init__ = original
    assert list(FakeRefitter.log[0]) == ["val_93"]


def test_not_refittable_and_unknown_weights_are_one_line_errors(tmp_path):
    engine = with_refitter(setup(tmp_path)[0], refittable=False)
    with pytest.raises(SdrtError, match=r"not refittable.*sdrt build --refit --force"):
        trt_refit.reweight(engine, {"val_93": np.ones(3, np.float16)}, {})
    engine._engine.refittable = True
    with pytest.raises(SdrtError, match="no refittable weight 'val_999'"):
        trt_refit.reweight(engine, {"val_999": np.ones(3, np.float16)}, {})


def test_build_refit_option():
    plain, refit = trt_build.BuildOptions(), trt_build.BuildOptions(refit=True)
    assert "refit" not in plain.key_fields() and refit.key_fields()["refit"] is True


def test_build_cli_passes_refit(monkeypatch, tmp_path):
    from sdrt.engines import commands_build

    parser = __import__("argparse").ArgumentParser()
    commands_build.add_arguments(parser)
    assert parser.parse_args(["--model", "x", "--refit"]).refit is True
    assert parser.parse_args(["--model", "x"]).refit is False
