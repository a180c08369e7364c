"""`sdrt quantize`: quantized model folders (int8, int8-weights, fp8 Q/DQ graphs) that pass a quality gate.

- `calibration`: the prompts, and a recorder on the runtime's engines that collects each component's
  real inputs while sdrt generates;
- `graphs`: one component's ONNX graph -> its Q/DQ graph (ONNX Runtime's quantizer; weights-only
  rewrite), and what stays float;
- `gate`: the quantized folder scored against the float one (PSNR, SSIM; the shapes detector);
- `folder`: the new folder (links to the float files) and its manifest entries;
- `quantizer`: the steps in order, all or nothing;
- `commands_quantize`: the command line.

Imports the runtime, the engines and onnx/onnxruntime's quantization tools; nothing below it (runtime,
engines, core) imports it. No torch (import-linter contract).
"""

from sdrt.quantize.quantizer import Request, quantize_model

__all__ = ["Request", "quantize_model"]
