"""The two CUDA driver calls the ONNX Runtime CUDA backend needs, through ctypes (no CUDA Python package).

- how many GPUs the driver sees (0 without a driver), so `ort-cuda` can say "no GPU" in one line;
- a device-to-host copy into a host array we own: onnxruntime's `OrtValue.numpy()` would allocate a
  new array on every denoising step, and a CUDA graph needs the outputs bound in device memory, so
  the bound output is copied into the engine's preallocated host buffer instead.

onnxruntime's CUDA execution provider works in the device's primary context; the copy makes that
context current on the calling thread when no context is. UNVERIFIED ON A GPU (tested with a fake
driver on a CPU machine; the device check in benchmarks/gpu/ exercises it for real).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from sdrt.errors import SdrtError


def load_driver() -> Any | None:
    """libcuda, or None where there is no NVIDIA driver."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def device_count(driver: Any | None = None) -> int:
    """Number of CUDA devices the driver sees (0 without a driver or device)."""
    driver = driver if driver is not None else load_driver()
    if driver is None:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class DeviceToHost:
    """Copies device memory into preallocated, C-contiguous host arrays (no allocation per call)."""

    def __init__(self, device_id: int = 0, driver: Any | None = None):
        self.driver = driver if driver is not None else load_driver()
        if self.driver is None:
            raise SdrtError("ort-cuda needs the NVIDIA driver (libcuda.so.1 is not found): use --backend ort-cpu")
        self.device_id = int(device_id)
        self._context_ready = False

    def _check(self, what: str, code: int) -> None:
        if code != 0:
            raise SdrtError(f"CUDA driver error {code} while {what}")

    def _ensure_context(self) -> None:
        """Make the device's primary context (the one onnxruntime uses) current if none is."""
        if self._context_ready:
            return
        d = self.driver
        ctx = ctypes.c_void_p(0)
        self._check("reading the current CUDA context", d.cuCtxGetCurrent(ctypes.byref(ctx)))
        if not ctx.value:
            self._check("initialising CUDA", d.cuInit(0))
            dev = ctypes.c_int(0)
            self._check(f"opening CUDA device {self.device_id}", d.cuDeviceGet(ctypes.byref(dev), self.device_id))
            self._check("retaining the primary CUDA context", d.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
            self._check("making the CUDA context current", d.cuCtxSetCurrent(ctx))
        self._context_ready = True

    def copy(self, host: np.ndarray, device_ptr: int) -> None:
        """host[...] = the device bytes at device_ptr (host.nbytes of them); synchronous."""
        if not host.flags.c_contiguous:
            raise SdrtError("internal error: the host buffer of a device copy must be contiguous")
        self._ensure_context()
        self._check("copying an output from the GPU",
                    self.driver.cuMemcpyDtoH_v2(ctypes.c_void_p(host.ctypes.data), ctypes.c_uint64(int(device_ptr)),
                                                ctypes.c_size_t(host.nbytes)))
