"""TensorRT at run time: cuda-python memory and streams, and the engine that reuses its buffers.

Per loaded engine: one execution context, one device buffer per tensor sized for the profile's max
shape (allocated once, addresses set once), pinned host staging buffers, `set_input_shape` only
when the dims change (its result checked), `execute_async_v3` on the backend's one stream. Inputs
are copied host->device only when they were set since the last run (text embeddings stay bound for
the whole loop). With ``cuda_graph=True`` the enqueue is captured once per shape (after one warm-up
run) and replayed; the graph is dropped, and captured again, whenever memory it recorded moves: new
dims, another engine, or the shared activation block growing for a larger engine loaded later.

UNVERIFIED ON A GPU: this module was written against the documented TensorRT 10/11, TensorRT-RTX and
cuda-python APIs and tested only with fakes (tests/engines/test_trt_runtime.py) on a CPU machine.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sdrt import spec
from sdrt.engines import trt_api, trt_buffers
from sdrt.engines.base import Engine
from sdrt.engines.trt_cache import Entry
from sdrt.engines.trt_profiles import used_symbols
from sdrt.errors import BackendUnavailable, SdrtError


class Cuda:
    """The few cuda-python runtime calls sdrt needs, with errors turned into one-line SdrtErrors."""

    def __init__(self, cudart: Any):
        self.rt = cudart

    def _call(self, what: str, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        code = int(getattr(err, "value", err))
        if code != 0:
            name = getattr(err, "name", str(code))
            if name == "cudaErrorMemoryAllocation":
                raise SdrtError(f"out of GPU memory while {what}: use a smaller size or batch, or another backend")
            raise SdrtError(f"CUDA error {name} while {what}")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    # -- device ------------------------------------------------------------------------------------
    def require_gpu(self, label: str, device: int = 0) -> None:
        """Raise the 'no GPU' line when CUDA sees no device (or no driver)."""
        err, *rest = self.rt.cudaGetDeviceCount()
        count = rest[0] if rest and int(getattr(err, "value", err)) == 0 else 0
        if count <= device:
            why = getattr(err, "name", "no device") if count == 0 else f"only {count} device(s)"
            raise BackendUnavailable(f"{label} needs an NVIDIA GPU and CUDA sees none usable as device {device} "
                                     f"({why}): use --backend ort-cpu")

    def device_target(self, device: int = 0) -> str:
        """'NVIDIA H100 80GB HBM3 (sm_90)': the GPU part of a TensorRT engine's identity."""
        props = self._call("reading the GPU's properties", self.rt.cudaGetDeviceProperties(device))
        name = props.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, (bytes, bytearray)) else str(name)
        return f"{name.strip()} (sm_{props.major}{props.minor})"

    def set_device(self, device: int) -> None:
        self._call(f"selecting GPU {device}", self.rt.cudaSetDevice(device))

    # -- memory ------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self._call(f"allocating {nbytes} bytes of GPU memory", self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call("freeing GPU memory", self.rt.cudaFree(ptr))

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Pinned host memory and a uint8 numpy view of it (async copies need pinned pages)."""
        ptr = int(self._call(f"allocating {nbytes} bytes of pinned host memory", self.rt.cudaMallocHost(nbytes)))
        return ptr, np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def host_free(self, ptr: int) -> None:
        self._call("freeing pinned host memory", self.rt.cudaFreeHost(ptr))

    # -- streams, copies, graphs -----------------------------------------------------------------
    def stream_create(self) -> Any:
        return self._call("creating a CUDA stream", self.rt.cudaStreamCreate())

    def stream_destroy(self, stream: Any) -> None:
        self._call("destroying a CUDA stream", self.rt.cudaStreamDestroy(stream))

    def h2d(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("copying to the GPU", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def d2h(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("copying from the GPU", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def sync(self, stream: Any) -> None:
        self._call("waiting for the GPU", self.rt.cudaStreamSynchronize(stream))

    def capture(self, stream: Any, work: Callable[[], None]) -> Any:
        """Record `work` on the stream into an instantiated CUDA graph (nothing runs while recording)."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("starting CUDA graph capture", self.rt.cudaStreamBeginCapture(stream, mode))
        try:
            work()
        finally:
            graph = self._call("ending CUDA graph capture", self.rt.cudaStreamEndCapture(stream))
        graph_exec = self._call("instantiating the CUDA graph", self.rt.cudaGraphInstantiate(graph, 0))
        self._call("releasing the captured graph", self.rt.cudaGraphDestroy(graph))
        return graph_exec

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("replaying the CUDA graph", self.rt.cudaGraphLaunch(graph_exec, stream))

    def graph_destroy(self, graph_exec: Any) -> None:
        self._call("releasing the CUDA graph", self.rt.cudaGraphExecDestroy(graph_exec))


@dataclass
class Session:
    """What all engines of one backend share: TensorRT module, runtime, one stream, one scratch block."""

    trt: Any
    features: trt_api.Features
    runtime: Any
    cuda: Any
    stream: Any
    shared: trt_buffers.SharedActivations | None
    log: Callable[[str], None] = field(default=lambda msg: None)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
        self.cuda.stream_destroy(self.stream)


@dataclass
class DeviceBuffer:
    """One tensor's device memory (fixed for the engine's life) and its pinned host twin."""

    name: str
    ptr: int
    nbytes: int
    host_ptr: int
    host: np.ndarray  # uint8 view of the pinned memory


class TensorRTEngine(Engine):
    """One component on one TensorRT engine; buffers bound once, reused across timesteps."""

    def __init__(self, component: str, model_values: Mapping[str, int], precision: str, *,
                 session: Session, find: Callable[[Mapping[str, int]], Entry], cuda_graph: bool = False,
                 entry: Entry | None = None, component_spec: spec.ComponentSpec | None = None):
        """``entry``: the engine to deserialize now (fail at load); else the first `prepare` finds one."""
        super().__init__(component, model_values, precision, component_spec)
        self.session = session
        self.find = find
        self.cuda_graph = cuda_graph
        self.entry: Entry | None = None
        self._engine = None
        self._context = None
        self._buffers: dict[str, DeviceBuffer] = {}
        self._views: dict[str, np.ndarray] = {}
        self._dirty: set[str] = set()
        self._outputs: tuple[str, ...] = ()
        self._graph = None
        self._warm = False
        self.graph_captures = 0
        self.weights: dict[str, np.ndarray] = {}  # LoRA-merged initializers, refitted on load (trt_refit)
        if entry is not None:
            self._load(entry)

    # -- loading -----------------------------------------------------------------------------------
    def _rebuild_hint(self, entry: Entry) -> str:
        return (f"{entry.engine_file} is corrupt or was built by another TensorRT version or for another "
                f"GPU: rebuild it with `sdrt build --force`")

    def _load(self, entry: Entry) -> None:
        s = self.session
        data = entry.engine_file.read_bytes()
        if not trt_api.engine_is_valid(s.runtime, data, s.features):
            raise SdrtError(self._rebuild_hint(entry))
        engine = s.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise SdrtError(self._rebuild_hint(entry))
        if self.weights:
            from sdrt.engines.trt_refit import refit

            refit(s.trt, engine, self.weights, entry.path.name)
        io = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(name).name == "INPUT" else "output"
            io[name] = (mode, trt_buffers.numpy_dtype(engine.get_tensor_dtype(name)))
        expected = {t.name: ("input" if t in self.spec.inputs else "output", self.dtype(t.name))
                    for t in self.spec.tensors}
        optional = tuple(t.name for t in self.spec.tensors if t.optional)
        trt_buffers.check_io(self.component, io, expected, optional)
        self._release()
        shared = s.shared is not None and trt_api.shares_memory(engine, s.features)
        context = trt_api.create_context(s.trt, engine, s.features, shared)
        if shared:
            s.shared.attach(context, trt_api.device_memory_size(engine, s.features), on_move=self._drop_graph)
        max_shapes = {k: v for k, v in spec.shapes(self.spec, {**self.model_values, **self.full_dims(entry.profile.max)},
                                                   include_optional=True).items() if k in io}
        sizes = trt_buffers.plan(max_shapes, {k: io[k][1] for k in max_shapes})
        for name, nbytes in sizes.items():
            host_ptr, host = s.cuda.host_alloc(nbytes)
            self._buffers[name] = DeviceBuffer(name, s.cuda.malloc(nbytes), nbytes, host_ptr, host)
            context.set_tensor_address(name, self._buffers[name].ptr)
        self._engine, self._context, self.entry = engine, context, entry
        self._outputs = tuple(n for n in io if io[n][0] == "output")
        s.log(f"loaded {self.component} engine {entry.path.name}")

    def prepare(self, dims: Mapping[str, int]) -> None:
        full = self.full_dims(dims)
        dims = {s: full[s] for s in used_symbols(self.spec)}
        if self.dims == dims:
            return
        if self.entry is None or not self.entry.profile.covers(dims):
            self._load(self.find(dims))
        shapes = spec.shapes(self.spec, {**self.model_values, **dims}, include_optional=True)
        for name in self.spec.input_names:
            if not self._context.set_input_shape(name, shapes[name]):
                raise SdrtError(f"TensorRT refused shape {shapes[name]} for the {self.component} input {name} "
                                f"(engine {self.entry.path.name}): rebuild it with `sdrt build --force` for a "
                                f"profile that covers these dims ({dims})")
        self._views = {}
        for name, buf in self._buffers.items():
            dtype = self.dtype(name)
            count = int(np.prod(shapes[name], dtype=np.int64))
            self._views[name] = buf.host[: count * dtype.itemsize].view(dtype).reshape(shapes[name])
        self._drop_graph()
        self._dirty = set()
        self.dims = dims

    # -- running -----------------------------------------------------------------------------------
    def set_input(self, name: str, array: np.ndarray) -> None:
        if self.dims is None:
            raise SdrtError(f"{self.component}: call prepare(dims) before set_input")
        if name not in self.spec.input_names:
            raise SdrtError(f"{self.component} has no input {name!r} (inputs: {', '.join(self.spec.input_names)})")
        view = self._views[name]
        array = np.asarray(array)
        if array.shape != view.shape:
            raise SdrtError(f"{self.component} input {name} has shape {array.shape}; the engine is prepared "
                            f"for {view.shape}: call prepare() with the new dims first")
        np.copyto(view, array, casting="same_kind")
        self._dirty.add(name)

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self.session.stream_handle):
            raise SdrtError(f"TensorRT failed to run the {self.component} engine (see its log above)")

    def execute(self) -> dict[str, np.ndarray]:
        if self.dims is None:
            raise SdrtError(f"{self.component}: call prepare(dims) before running")
        s = self.session
        for name in sorted(self._dirty):
            buf = self._buffers[name]
            s.cuda.h2d(buf.ptr, buf.host_ptr, self._views[name].nbytes, s.stream)
        self._dirty.clear()
        if not self.cuda_graph:
            self._enqueue()
        elif self._graph is not None:
            s.cuda.launch(self._graph, s.stream)
        elif not self._warm:
            self._enqueue()  # first run of a shape: TensorRT may allocate or compile; never capture it
            self._warm = True
        else:
            self._graph = s.cuda.capture(s.stream, self._enqueue)
            self.graph_captures += 1
            s.cuda.launch(self._graph, s.stream)
        for name in self._outputs:
            buf = self._buffers[name]
            s.cuda.d2h(buf.host_ptr, buf.ptr, self._views[name].nbytes, s.stream)
        s.cuda.sync(s.stream)
        return {name: self._views[name] for name in self._outputs}

    @property
    def buffers(self) -> Mapping[str, DeviceBuffer]:
        return dict(self._buffers)

    # -- teardown ----------------------------------------------------------------------------------
    def _drop_graph(self) -> None:
        if self._graph is not None:
            self.session.cuda.graph_destroy(self._graph)
        self._graph = None
        self._warm = False

    def _release(self) -> None:
        self._drop_graph()
        for buf in self._buffers.values():
            self.session.cuda.free(buf.ptr)
            self.session.cuda.host_free(buf.host_ptr)
        self._buffers, self._views = {}, {}
        if self._context is not None and self.session.shared is not None:
            self.session.shared.detach(self._context)
        self._context = self._engine = None
        self.entry = None
        self.dims = None

    def close(self) -> None:
        self._release()
