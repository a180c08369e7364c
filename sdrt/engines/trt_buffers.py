"""Buffer plan and dtype policy for TensorRT engines (pure logic; the GPU calls live in trt_runtime).

Why a plan: device buffers are allocated once per loaded engine, sized for the profile's *max*
shape, so any shape inside the profile reuses them (only `set_input_shape` changes); and every
engine's activation (scratch) memory comes from one shared block sized to the largest engine,
because the stages run one after another on one stream. That keeps VRAM near PyTorch's.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from sdrt.errors import SdrtError

#: TensorRT DataType member name -> numpy dtype (BF16/FP8/INT4/FP4 have no numpy dtype).
TRT_TO_NUMPY: dict[str, np.dtype] = {
    "FLOAT": np.dtype("float32"),
    "HALF": np.dtype("float16"),
    "INT32": np.dtype("int32"),
    "INT64": np.dtype("int64"),
    "INT8": np.dtype("int8"),
    "UINT8": np.dtype("uint8"),
    "BOOL": np.dtype("bool"),
}
NUMPY_TO_TRT: dict[np.dtype, str] = {v: k for k, v in TRT_TO_NUMPY.items()}

#: TensorRT wants 256-byte aligned device memory; every buffer is rounded up to it.
ALIGNMENT = 256


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType (matched by member name, so fakes and both flavors work)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in TRT_TO_NUMPY:
        raise SdrtError(f"engine tensor type {name} has no numpy equivalent: export the model in fp16 or fp32")
    return TRT_TO_NUMPY[name]


def trt_dtype(trt: Any, dtype: np.dtype | str) -> Any:
    """The TensorRT DataType member for a numpy dtype."""
    return getattr(trt.DataType, NUMPY_TO_TRT[np.dtype(dtype)])


def aligned(nbytes: int) -> int:
    return max(ALIGNMENT, -(-int(nbytes) // ALIGNMENT) * ALIGNMENT)


def tensor_bytes(shape: tuple[int, ...], dtype: np.dtype | str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def plan(max_shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype]) -> dict[str, int]:
    """Bytes of each tensor's device buffer: its shape at the profile max, aligned."""
    return {name: aligned(tensor_bytes(shape, dtypes[name])) for name, shape in max_shapes.items()}


def check_io(component: str, engine_io: Mapping[str, tuple[str, np.dtype]],
             expected: Mapping[str, tuple[str, np.dtype]], optional: tuple[str, ...] = ()) -> None:
    """The engine's IO tensors must be the spec's (names, direction, dtype); else it is foreign."""
    for name, (mode, dtype) in expected.items():
        if name not in engine_io:
            if name in optional:
                continue
            raise SdrtError(f"the {component} engine has no tensor {name!r} (it has {', '.join(engine_io)}): "
                            f"rebuild it with `sdrt build --force`")
        got_mode, got_dtype = engine_io[name]
        if got_mode != mode or np.dtype(got_dtype) != np.dtype(dtype):
            raise SdrtError(f"the {component} engine's {name} is {got_mode} {np.dtype(got_dtype)}, the spec wants "
                            f"{mode} {np.dtype(dtype)}: rebuild it with `sdrt build --force`")
    extra = sorted(set(engine_io) - set(expected))
    if extra:
        raise SdrtError(f"the {component} engine has tensors the spec does not know ({', '.join(extra)}): "
                        f"export the model again with sdrt, then `sdrt build --force`")


class SharedActivations:
    """One device block for every engine's activation memory, grown to the largest engine.

    Engines register their context and the size it needs; when a larger one arrives the block is
    replaced and every registered context is pointed at the new one (the old address is dead).
    Pointing a context again is not enough for work recorded earlier: a CUDA graph captured on the
    old block replays the old address. So each user also registers ``on_move``, called whenever the
    block it runs on moved, and drops (then re-captures) its graphs there.
    `malloc`/`free` are injected so this logic runs in tests without a GPU.
    """

    def __init__(self, malloc: Callable[[int], int], free: Callable[[int], None]):
        self._malloc = malloc
        self._free = free
        self.ptr = 0
        self.size = 0
        self._users: dict[int, tuple[Any, int, Callable[[], None] | None]] = {}
        self.allocations = 0

    def attach(self, context: Any, nbytes: int, on_move: Callable[[], None] | None = None) -> None:
        """Give a context the shared block (growing it first if this context needs more).

        ``on_move`` is called each time the block this context runs on is replaced later.
        """
        nbytes = aligned(nbytes)
        self._users[id(context)] = (context, nbytes, on_move)
        if nbytes > self.size:
            if self.ptr:
                self._free(self.ptr)
            self.ptr = self._malloc(nbytes)
            self.size = nbytes
            self.allocations += 1
            for ctx, need, moved in list(self._users.values()):
                self._point(ctx, need)
                if moved is not None and ctx is not context:
                    moved()
        else:
            self._point(context, nbytes)

    def _point(self, context: Any, nbytes: int) -> None:
        if hasattr(context, "set_device_memory"):
            context.set_device_memory(self.ptr, self.size)
        else:  # TensorRT 8.x spells it as a property
            context.device_memory = self.ptr

    def detach(self, context: Any) -> None:
        self._users.pop(id(context), None)

    def close(self) -> None:
        if self.ptr:
            self._free(self.ptr)
        self.ptr, self.size = 0, 0
        self._users.clear()
