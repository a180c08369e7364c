"""ort-cuda's logic on a fake onnxruntime and a fake CUDA driver (no GPU here).

Checked: outputs are copied into the engine's own preallocated host arrays (never through
`OrtValue.numpy()`, which allocates a new array per step), and the CUDA graph option reaches only
the UNet's session (a CPU-fallback node in the text encoder or the VAE breaks graph capture).
"""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

from sdrt.engines import cuda_driver, ort_engine
from sdrt.engines.ort import OrtCudaBackend, OrtEngine
from sdrt.errors import SdrtError
from sdrt.spec import model_spec
from tests.engines.trt_fakes import model_folder


class FakeDeviceValue:
    """An OrtValue on the 'GPU': its bytes live in FakeDevice.mem under a fake pointer."""

    def __init__(self, device, shape, dtype):
        self.device, self._shape, self.dtype = device, tuple(shape), np.dtype(dtype)
        self.ptr = device.alloc(int(np.prod(shape)) * self.dtype.itemsize)

    def shape(self):
        return list(self._shape)

    def data_ptr(self):
        return self.ptr

    def update_inplace(self, array):
        self.device.mem[self.ptr][:] = np.ascontiguousarray(array, self.dtype).tobytes()

    def read(self):
        return np.frombuffer(bytes(self.device.mem[self.ptr]), self.dtype).reshape(self._shape)

    def write(self, array):
        self.device.mem[self.ptr][:] = np.asarray(array, self.dtype).tobytes()

    def numpy(self):
        raise AssertionError("OrtValue.numpy() allocates a new host array on every step")


class FakeDevice:
    """Fake device memory plus the driver's cuMemcpyDtoH_v2 / context calls, through ctypes values."""

    def __init__(self):
        self.mem: dict[int, bytearray] = {}
        self.next = 0x10000
        self.copies = 0
        self.current = 0

    def alloc(self, n):
        self.next += 0x1000 + n
        self.mem[self.next] = bytearray(n)
        return self.next

    # the libcuda functions DeviceToHost calls
    def cuInit(self, flags):
        return 0

    def cuCtxGetCurrent(self, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_void_p))[0] = self.current
        return 0

    def cuDeviceGet(self, ref, ordinal):
        return 0

    def cuDevicePrimaryCtxRetain(self, ref, dev):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_void_p))[0] = 0xC0
        return 0

    def cuCtxSetCurrent(self, ctx):
        self.current = ctx.value
        return 0

    def cuMemcpyDtoH_v2(self, dst, src, nbytes):
        self.copies += 1
        data = self.mem[src.value][: nbytes.value]
        ctypes.memmove(dst.value, bytes(data), nbytes.value)
        return 0


class FakeSession:
    """A UNet-shaped session: out_sample = 2*sample + timestep + mean(encoder_hidden_states)."""

    def __init__(self, names=("out_sample",)):
        self._outputs = [types.SimpleNamespace(name=n) for n in names]
        self.bound: dict[str, FakeDeviceValue] = {}

    def get_outputs(self):
        return self._outputs

    def io_binding(self):
        bound = self.bound
        return types.SimpleNamespace(bind_ortvalue_input=bound.__setitem__, bind_ortvalue_output=bound.__setitem__)

    def run_with_iobinding(self, binding):
        b = self.bound
        sample, t, ehs = b["sample"].read(), b["timestep"].read(), b["encoder_hidden_states"].read()
        b["out_sample"].write(2 * sample + t[:, None, None, None] + ehs.mean(axis=(1, 2))[:, None, None, None])


@pytest.fixture
def device(monkeypatch):
    dev = FakeDevice()
    monkeypatch.setattr(cuda_driver, "load_driver", lambda: dev)
    fake_ort = types.SimpleNamespace(OrtValue=types.SimpleNamespace(
        ortvalue_from_shape_and_type=lambda shape, dtype, where, device_id: FakeDeviceValue(dev, shape, dtype)))
    monkeypatch.setattr(ort_engine, "import_ort", lambda: fake_ort)
    return dev


VALUES = {"C": 4, "Cin": 4, "S": 77, "D": 8, "f": 8}


def test_outputs_are_copied_into_the_same_host_array_every_step(device):
    engine = OrtEngine(FakeSession(), "unet", VALUES, "fp32", component_spec=model_spec("sd").component("unet"), device="cuda")
    engine.prepare({"B": 2, "h": 4, "w": 4})
    rng = np.random.default_rng(0)
    ehs = rng.standard_normal((2, 77, 8)).astype(np.float32)
    engine.set_input("encoder_hidden_states", ehs)
    first = None
    for step in range(3):
        sample = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
        t = np.full(2, float(step), np.float32)
        out = engine.run({"sample": sample, "timestep": t})["out_sample"]
        np.testing.assert_allclose(out, 2 * sample + step + ehs.mean(axis=(1, 2))[:, None, None, None], rtol=1e-6)
        first = out if first is None else first
        assert out is first  # the engine's own host buffer, not a new array
    assert device.copies == 3 and device.current == 0xC0  # the primary context was made current once


def test_a_failed_driver_copy_is_one_line(device):
    device.cuMemcpyDtoH_v2 = lambda dst, src, n: 700  # cudaErrorIllegalAddress
    engine = OrtEngine(FakeSession(), "unet", VALUES, "fp32", component_spec=model_spec("sd").component("unet"), device="cuda",
                       to_host=cuda_driver.DeviceToHost(0, driver=device))
    engine.prepare({"B": 1, "h": 2, "w": 2})
    with pytest.raises(SdrtError, match="CUDA driver error 700 while copying an output from the GPU"):
        engine.run({"sample": np.zeros((1, 4, 2, 2), np.float32), "timestep": np.zeros(1, np.float32),
                    "encoder_hidden_states": np.zeros((1, 77, 8), np.float32)})


def test_cuda_graph_reaches_only_the_unet_session(tmp_path, monkeypatch):
    components = ("text_encoder", "unet", "vae_decoder")
    manifest = model_folder(tmp_path, precision="fp32", components=components)
    seen = {}

    def session(path, sess_options=None, providers=None):
        component = path.split("/")[-2]
        seen[component] = providers
        inputs = [types.SimpleNamespace(name=n) for n in manifest.spec.component(component).input_names]
        return types.SimpleNamespace(get_inputs=lambda: inputs, get_outputs=lambda: [])

    real = ort_engine.import_ort()
    monkeypatch.setattr(ort_engine, "import_ort", lambda: types.SimpleNamespace(
        InferenceSession=session, SessionOptions=real.SessionOptions, GraphOptimizationLevel=real.GraphOptimizationLevel,
        ExecutionMode=real.ExecutionMode))
    monkeypatch.setattr(cuda_driver, "load_driver", FakeDevice)
    backend = OrtCudaBackend(cuda_graph=True)
    engines = {c: backend.load(manifest, c) for c in components}
    graphed = {c for c, providers in seen.items() if providers[0][1].get("enable_cuda_graph") == "1"}
    assert graphed == {"unet"}
    assert {c for c, e in engines.items() if e.cuda_graph} == {"unet"}
    assert all(providers[0][0] == "CUDAExecutionProvider" for providers in seen.values())
