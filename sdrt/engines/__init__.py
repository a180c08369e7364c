"""Engine backends: ONNX Runtime (CPU, CUDA) and TensorRT, behind one small interface."""

from sdrt.engines.base import (  # noqa: F401
    AUTO_ORDER, BACKENDS, Backend, Engine, available_backends, backend_class, create_backend,
    resolve_backend,
)
