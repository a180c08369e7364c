"""sdrt: a Stable Diffusion inference runtime (ONNX export, engines, a torch-free pipeline)."""

__version__ = "0.1.0"

from sdrt.errors import SdrtError  # noqa: E402

__all__ = ["SdrtError", "__version__"]
