"""One ONNX Runtime session as an engine: IO binding on buffers allocated once per shape set.

Why IO binding on the CPU too: `session.run(feeds)` copies every input and allocates every output on
each call; binding preallocated `OrtValue`s lets a denoising loop write the new latents into the same
memory and read `out_sample` from the same memory on every step. On the CPU the `OrtValue`s wrap our
own numpy arrays (no copy at all); on CUDA they live on the device, inputs are overwritten in place
(`update_inplace`), outputs are copied into preallocated host arrays (sdrt.engines.cuda_driver: no
`OrtValue.numpy()`, which allocates per call). The sessions themselves are built by
`sdrt.engines.ort_sessions`; the backends are in `sdrt.engines.ort`.

onnxruntime is imported lazily (`import_ort`), inside the functions that need it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sdrt import spec
from sdrt.engines import cuda_driver
from sdrt.engines.base import Engine
from sdrt.errors import BackendUnavailable, SdrtError


def import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime is not installed ({e}): pip install sdrt") from None
    return onnxruntime


def one_line(error: BaseException, limit: int = 200) -> str:
    """onnxruntime's message without its preamble and C++ source location."""
    text = " ".join(str(error).split()).split("failed:", 1)[-1].strip()
    if text.startswith("/") and ") " in text:
        text = text.rsplit(") ", 1)[1]
    return text if len(text) <= limit else text[: limit - 3] + "..."



class OrtEngine(Engine):
    """One component on one ONNX Runtime session, bound once per shape set."""

    def __init__(self, session, component: str, model_values: Mapping[str, int], precision: str,
                 *, device: str = "cpu", device_id: int = 0, cuda_graph: bool = False,
                 to_host: cuda_driver.DeviceToHost | None = None,
                 component_spec: spec.ComponentSpec):
        super().__init__(component, model_values, precision, component_spec)
        self.session = session
        self.device = device
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        if device != "cpu" and to_host is None:
            to_host = cuda_driver.DeviceToHost(device_id)
        self.to_host = to_host
        self._outputs = [o.name for o in session.get_outputs()]
        self._host: dict[str, np.ndarray] = {}
        self._values: dict[str, Any] = {}
        self._binding = None
        #: (OrtValues given to the session as initializers, their arrays): LoRA-merged weights
        self.weights: tuple[dict[str, Any], dict[str, np.ndarray]] = ({}, {})

    # -- buffers ---------------------------------------------------------------------------------
    def prepare(self, dims: Mapping[str, int]) -> None:
        dims = self.full_dims(dims)
        if self.dims == dims:
            return
        if self.cuda_graph and self.dims is not None:
            raise SdrtError(f"{self.component}: the CUDA graph was captured for {self.dims}; it cannot run "
                            f"{dims}: create the backend again, or turn cuda_graph off")
        ort = import_ort()
        shapes = spec.shapes(self.spec, {**self.model_values, **dims}, include_optional=True)
        names = list(self.spec.input_names) + [n for n in self.spec.output_names if n in self._outputs]
        self._host, self._values = {}, {}
        binding = self.session.io_binding()
        for name in names:
            host = np.zeros(shapes[name], dtype=self.dtype(name))
            if self.device == "cpu":
                value = ort.OrtValue.ortvalue_from_numpy(host, "cpu", 0)  # wraps `host`, no copy
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], host.dtype, "cuda", self.device_id)
            bind = binding.bind_ortvalue_input if name in self.spec.input_names else binding.bind_ortvalue_output
            bind(name, value)
            self._host[name], self._values[name] = host, value
        self._binding = binding
        self.dims = dims

    def set_input(self, name: str, array: np.ndarray) -> None:
        host = self._host[name]
        if np.shape(array) != host.shape:
            raise ValueError(f"{self.component}.{name}: got shape {np.shape(array)}, bound {host.shape}")
        np.copyto(host, array, casting="same_kind")
        if self.device != "cpu":
            self._values[name].update_inplace(host)

    def execute(self) -> dict[str, np.ndarray]:
        if self._binding is None:
            raise RuntimeError(f"{self.component}: prepare(dims) before execute()")
        self.session.run_with_iobinding(self._binding)
        outputs = {n: self._host[n] for n in self.spec.output_names if n in self._host}
        if self.device != "cpu":
            for name, host in outputs.items():  # into our host array: nothing allocated per call
                self.to_host.copy(host, self._values[name].data_ptr())
        return outputs

    @property
    def buffers(self) -> Mapping[str, Any]:
        """Bound `OrtValue`s by tensor name (the objects ONNX Runtime reads and writes)."""
        return dict(self._values)

    def close(self) -> None:
        self._binding, self._values, self._host, self.dims = None, {}, {}, None
