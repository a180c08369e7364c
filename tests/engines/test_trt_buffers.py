"""dtype mapping, the buffer plan, engine IO checks and the shared activation block."""

from __future__ import annotations

import types

import numpy as np
import pytest

from sdrt.engines import trt_buffers as tb
from sdrt.errors import SdrtError
from tests.engines.trt_fakes import fake_trt


@pytest.mark.parametrize("name, dtype", [("FLOAT", "float32"), ("HALF", "float16"), ("INT32", "int32"),
                                         ("INT64", "int64"), ("BOOL", "bool")])
def test_dtype_mapping_both_ways(name, dtype):
    trt = fake_trt()
    member = types.SimpleNamespace(name=name)
    assert tb.numpy_dtype(member) == np.dtype(dtype)
    if hasattr(trt.DataType, name):
        assert tb.trt_dtype(trt, dtype) is getattr(trt.DataType, name)


def test_types_without_numpy_twin_are_refused():
    with pytest.raises(SdrtError, match="BF16 has no numpy equivalent"):
        tb.numpy_dtype(types.SimpleNamespace(name="BF16"))
    assert tb.numpy_dtype("DataType.HALF") == np.float16  # str() of a pybind enum works too


def test_plan_sizes_buffers_for_the_profile_max_aligned():
    sizes = tb.plan({"sample": (4, 4, 128, 128), "timestep": (4,)},
                    {"sample": np.dtype("float16"), "timestep": np.dtype("float32")})
    assert sizes == {"sample": 4 * 4 * 128 * 128 * 2, "timestep": 256}
    assert tb.aligned(257) == 512 and tb.aligned(0) == 256


SPEC_IO = {"sample": ("input", np.dtype("float16")), "timestep": ("input", np.dtype("float32")),
           "out_sample": ("output", np.dtype("float16"))}


def test_check_io_accepts_the_spec_and_refuses_a_foreign_engine():
    tb.check_io("unet", dict(SPEC_IO), SPEC_IO)
    with pytest.raises(SdrtError, match="sample is input float32, the spec wants input float16"):
        tb.check_io("unet", {**SPEC_IO, "sample": ("input", np.dtype("float32"))}, SPEC_IO)
    with pytest.raises(SdrtError, match="has no tensor 'timestep'"):
        tb.check_io("unet", {k: v for k, v in SPEC_IO.items() if k != "timestep"}, SPEC_IO)
    with pytest.raises(SdrtError, match="does not know \\(extra\\)"):
        tb.check_io("unet", {**SPEC_IO, "extra": ("output", np.dtype("float16"))}, SPEC_IO)
    optional = {**SPEC_IO, "pooler": ("output", np.dtype("float16"))}
    tb.check_io("te", dict(SPEC_IO), optional, optional=("pooler",))


class _Ctx:
    def __init__(self):
        self.memory = []

    def set_device_memory(self, ptr, size):
        self.memory.append((ptr, size))


def test_shared_block_grows_to_the_largest_engine_and_repoints_every_context():
    allocated, freed = [], []
    ptrs = iter(range(0x1000, 0x100000, 0x1000))

    def malloc(n):
        allocated.append(n)
        return next(ptrs)

    shared = tb.SharedActivations(malloc, freed.append)
    a, b, c = _Ctx(), _Ctx(), _Ctx()
    shared.attach(a, 1000)
    shared.attach(b, 5000)   # larger: new block, a is moved onto it
    shared.attach(c, 3000)   # smaller: reuses the block, no allocation
    assert allocated == [1024, 5120] and freed == [0x1000]
    assert a.memory == [(0x1000, 1024), (0x2000, 5120)]
    assert b.memory == [(0x2000, 5120)] and c.memory == [(0x2000, 5120)]
    assert shared.allocations == 2
    shared.close()
    assert freed == [0x1000, 0x2000]


def test_shared_block_uses_the_tensorrt8_property_when_there_is_no_setter():
    ctx = types.SimpleNamespace(device_memory=None)
    shared = tb.SharedActivations(lambda n: 0x5000, lambda p: None)
    shared.attach(ctx, 10)
    assert ctx.device_memory == 0x5000
