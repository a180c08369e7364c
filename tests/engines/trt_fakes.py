"""Test doubles for the engine tests: a UNet-shaped ONNX graph (ORT uses it too), a model folder, a fake `tensorrt` module and a fake CUDA.

The fakes keep TensorRT's attribute names, so `trt_api.detect` and the runtime take the same code
path as with the real module; the fake device memory is a dict of bytearrays, so data really moves
through the engine's buffers and a wrong copy shows up as a wrong number.

Like a real CUDA graph, a captured fake enqueue keeps the addresses it was recorded with (tensor
addresses and the activation block); replaying it after any of them was freed raises
`FakeIllegalAddress` (what the GPU would answer with cudaErrorIllegalAddress, or silently corrupt).
A context that must run on user-managed activation memory fails the same way without a live block
of the engine's size. `set_input_shape` returns False outside the engine's profile (``max_shape``).
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from sdrt.manifest import Manifest
from sdrt.manifest_schema import component_files, component_sha256

C, S, D, F = 4, 77, 8, 8


def fake_unet_onnx(path: Path, elem: int = TensorProto.FLOAT16) -> None:
    """out_sample = 2*sample + timestep + mean(encoder_hidden_states), per batch item (spec names)."""
    f = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", elem, [], [2.0])),
            helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [3], [1, 2, 3])),
            helper.make_node("Constant", [], ["axes12"], value=helper.make_tensor("b", TensorProto.INT64, [2], [1, 2])),
            helper.make_node("Constant", [], ["axis3"], value=helper.make_tensor("c", TensorProto.INT64, [1], [3])),
            helper.make_node("Mul", ["sample", "two"], ["s2"]),
            helper.make_node("Cast", ["timestep"], ["tc"], to=elem),
            helper.make_node("Unsqueeze", ["tc", "axes"], ["t4"]),
            helper.make_node("ReduceMean", ["encoder_hidden_states", "axes12"], ["m3"], keepdims=1),
            helper.make_node("Unsqueeze", ["m3", "axis3"], ["m4"]),
            helper.make_node("Add", ["s2", "t4"], ["a1"]),
            helper.make_node("Add", ["a1", "m4"], ["out_sample"]),
        ],
        "fake_unet",
        [f("sample", elem, ["B", C, "h", "w"]), f("timestep", TensorProto.FLOAT, ["B"]),
         f("encoder_hidden_states", elem, ["B", S, D])],
        [f("out_sample", elem, ["B", C, "h", "w"])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))


def model_folder(root: Path, precision: str = "fp16", components=("unet",)) -> Manifest:
    """A minimal sdrt ONNX folder: latent sizes 1..64 (8..512 px), default 64 px; each component's
    sha256 recorded as export records it (what the engine caches are keyed by)."""
    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    entries = {}
    for name in components:
        path = root / name / "model.onnx"
        fake_unet_onnx(path, elem)
        entries[name] = {"file": f"{name}/model.onnx", "precision": precision,
                         "sha256": component_sha256(component_files(path))}
    data = {
        "format": "sdrt-onnx", "format_version": 1,
        "pipeline": {"latent_channels": C, "unet_in_channels": C, "text_hidden_size": D,
                     "vae_scale_factor": F, "token_length": S, "sample_size": 8},
        "components": entries,
        "sizes": {"latent_multiple": 1, "min_latent": 1, "max_latent": 64},
    }
    (root / "sdrt.json").write_text(json.dumps(data))
    return Manifest.load(root)


def reexported(manifest: Manifest) -> Manifest:
    """The folder's sdrt.json with each component's sha256 recorded again from its files (what a new
    export writes), loaded afresh."""
    data = json.loads((manifest.folder / "sdrt.json").read_text())
    for entry in data["components"].values():
        entry["sha256"] = component_sha256(component_files(manifest.folder / entry["file"]))
    (manifest.folder / "sdrt.json").write_text(json.dumps(data))
    return Manifest.load(manifest.folder)


# -- a fake `tensorrt` module ----------------------------------------------------------------------
class _Enum:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<{self.name}>"


def _enum(*names):
    return types.SimpleNamespace(**{n: _Enum(n) for n in names})


class FakeIllegalAddress(RuntimeError):
    """The fake GPU touched memory that is not (or no longer) allocated."""


class FakeContext:
    def __init__(self, engine, strategy):
        self.engine = engine
        self.strategy = strategy
        self.calls: list[tuple] = []
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory = None

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        limit = self.engine.max_shape.get(name)
        if limit is not None and any(d > m for d, m in zip(shape, limit)):
            return False  # TensorRT: outside the optimization profile
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name, ptr))
        self.addresses[name] = ptr
        return True

    def set_device_memory(self, ptr, size):
        self.calls.append(("set_device_memory", ptr, size))
        self.device_memory = (ptr, size)

    def execute_async_v3(self, stream):
        """out_sample = 2*sample + timestep + mean(encoder_hidden_states), on fake device memory.

        While the stream is captured nothing runs: the work is recorded with today's addresses.
        """
        self.calls.append(("execute_async_v3", stream))
        cuda = self.engine.cuda
        recorded = (dict(self.addresses), dict(self.shapes), self.device_memory)
        if cuda.capturing:
            cuda.captured.append(lambda: self.execute_async_v3_body(*recorded))
            return True
        self.execute_async_v3_body(*recorded)
        return True

    def execute_async_v3_body(self, addresses, shapes, device_memory):
        cuda, io = self.engine.cuda, self.engine.io
        if self.strategy is not None and self.strategy.name == "USER_MANAGED":
            ptr, size = device_memory or (0, 0)
            if ptr not in cuda.mem or size < self.engine.device_memory_size_v2:
                raise FakeIllegalAddress(f"activation memory {ptr:#x} ({size} bytes) is not allocated "
                                         f"(the engine needs {self.engine.device_memory_size_v2})")
            cuda.mem[ptr][:8] = b"scratch!"  # the engine really uses its activation block
        for name, ptr in addresses.items():
            if ptr not in cuda.mem:
                raise FakeIllegalAddress(f"tensor {name} at {ptr:#x} is not allocated")

        def read(name):
            dtype, shape = io[name][1], shapes.get(name) or shapes["sample"]
            n = int(np.prod(shape))
            return np.frombuffer(bytes(cuda.mem[addresses[name]][: n * dtype.itemsize]), dtype).reshape(shape)
        sample, t, ehs = read("sample"), read("timestep"), read("encoder_hidden_states")
        out = (2 * sample.astype(np.float32) + t[:, None, None, None]
               + ehs.astype(np.float32).mean(axis=(1, 2))[:, None, None, None]).astype(io["out_sample"][1])
        cuda.mem[addresses["out_sample"]][: out.nbytes] = out.tobytes()


class FakeEngine:
    def __init__(self, cuda, io, memory=1 << 20, max_shape=None):
        self.cuda = cuda
        self.io = io  # name -> (mode, numpy dtype)
        self.num_io_tensors = len(io)
        self.device_memory_size_v2 = memory
        self.max_shape = dict(max_shape or {})  # input name -> largest shape its profile accepts
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i):
        return list(self.io)[i]

    def get_tensor_mode(self, name):
        return _Enum("INPUT" if self.io[name][0] == "input" else "OUTPUT")

    def get_tensor_dtype(self, name):
        return _Enum({"float16": "HALF", "float32": "FLOAT", "int32": "INT32"}[str(self.io[name][1])])

    def create_execution_context(self, strategy=None):
        ctx = FakeContext(self, strategy)
        self.contexts.append(ctx)
        return ctx


UNET_IO = {"sample": ("input", np.dtype("float16")), "timestep": ("input", np.dtype("float32")),
           "encoder_hidden_states": ("input", np.dtype("float16")), "out_sample": ("output", np.dtype("float16"))}


def fake_plan(memory: int = 1 << 20) -> bytes:
    """A plan the fake runtime deserializes into an engine needing `memory` bytes of activations."""
    return b"PLAN" + str(int(memory)).encode()


class FakeRuntime:
    def __init__(self, cuda, io=UNET_IO, valid=True, max_shape=None):
        self.cuda, self.io, self.valid, self.max_shape = cuda, io, valid, max_shape
        self.deserialized = 0

    def deserialize_cuda_engine(self, data):
        self.deserialized += 1
        if not data.startswith(b"PLAN"):
            return None
        memory = int(data[4:]) if data[4:].isdigit() else 1 << 20
        return FakeEngine(self.cuda, self.io, memory, self.max_shape)

    def get_engine_validity(self, data):
        return (_Enum("VALID" if self.valid else "INVALID"), 0)


def fake_trt(version="10.8.0.43", strongly_typed=True, fp16_flag=True, user_managed=True, rtx=False):
    """A module-like object with TensorRT's names; flags remove what an older/other flavor lacks."""
    creation = ["STRONGLY_TYPED"] if strongly_typed else []
    builder = ["FP16", "TF32"] if fp16_flag else ["TF32"]
    m = types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=_enum(*creation),
        BuilderFlag=_enum(*builder),
        ExecutionContextAllocationStrategy=_enum("STATIC", "ON_PROFILE_CHANGE", *(["USER_MANAGED"] if user_managed else [])),
        ICudaEngine=types.SimpleNamespace(num_io_tensors=0, device_memory_size_v2=0),
        IExecutionContext=types.SimpleNamespace(execute_async_v3=None),
        IBuilderConfig=types.SimpleNamespace(create_timing_cache=None),
        Runtime=types.SimpleNamespace(**({"get_engine_validity": None} if rtx else {})),
        DataType=_enum("FLOAT", "HALF", "INT32", "INT64", "BOOL", "BF16"),
        MemoryPoolType=_enum("WORKSPACE"),
    )
    return m


# -- a fake CUDA -----------------------------------------------------------------------------------
class FakeCuda:
    """Device memory as bytearrays keyed by fake pointers; counts every allocation and copy."""

    def __init__(self):
        self.mem: dict[int, bytearray] = {}
        self.host: dict[int, np.ndarray] = {}
        self.next = 0x1000
        self.mallocs = 0
        self.frees = 0
        self.copies: list[tuple[str, int, int]] = []
        self.capturing = False
        self.captured: list = []
        self.graphs: dict[int, list] = {}
        self.launches = 0

    def _ptr(self, n):
        self.next += (n + 0xFFF) & ~0xFFF
        return self.next

    def malloc(self, n):
        self.mallocs += 1
        p = self._ptr(n)
        self.mem[p] = bytearray(n)
        return p

    def free(self, p):
        self.frees += 1
        del self.mem[p]

    def host_alloc(self, n):
        p = self._ptr(n)
        self.host[p] = np.zeros(n, np.uint8)
        return p, self.host[p]

    def host_free(self, p):
        del self.host[p]

    target = "Fake GPU (sm_89)"

    def set_device(self, device):
        pass

    def device_target(self, device=0):
        return self.target

    def stream_create(self):
        return 7

    def stream_destroy(self, s):
        pass

    def h2d(self, dst, src, n, stream):
        self.copies.append(("h2d", dst, n))
        self.mem[dst][:n] = self.host[src][:n].tobytes()

    def d2h(self, dst, src, n, stream):
        self.copies.append(("d2h", src, n))
        self.host[dst][:n] = np.frombuffer(bytes(self.mem[src][:n]), np.uint8)

    def sync(self, stream):
        pass

    def capture(self, stream, work):
        self.capturing, self.captured = True, []
        work()
        self.capturing = False
        handle = len(self.graphs) + 1
        self.graphs[handle] = list(self.captured)
        return handle

    def launch(self, graph, stream):
        self.launches += 1
        for body in self.graphs[graph]:
            body()

    def graph_destroy(self, graph):
        self.graphs.pop(graph, None)
