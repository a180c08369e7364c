"""`sdrt` command line: preset / export / build / generate / bench / demo / info / serve / batch.

Each subcommand lives with its job: the table below names the module that adds its arguments
(``add_arguments(parser)``) and runs it (``run(args) -> int``). Modules are imported lazily, so
`sdrt generate` never imports torch. Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sdrt.errors import SdrtError, print_warnings_one_line

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "preset": ("sdrt.export.commands_preset",
               "write a built-in model as a diffusers folder (shapes: trained by sdrt; the others: seeded random "
               "weights; --list)"),
    "export": ("sdrt.export.commands_export", "export a diffusers folder or a preset to an ONNX model folder"),
    "quantize": ("sdrt.quantize.commands_quantize",
                 "write a quantized copy of an ONNX model folder (int8, int8-weights, fp8 Q/DQ graphs), scored "
                 "against the float one by a quality gate"),
    "build": ("sdrt.engines.commands_build",
              "build TensorRT / TensorRT-RTX engines for an ONNX model folder (ONNX Runtime and OpenVINO need "
              "no build step)"),
    "generate": ("sdrt.runtime.commands_generate",
                 "generate images (txt2img, img2img, inpainting) from an ONNX model folder, without torch"),
    "bench": ("sdrt.bench.commands_bench",
              "benchmark sdrt's backends against PyTorch (diffusers) on the same weights, stage by stage"),
    "demo": ("sdrt.demo", "export the trained shapes preset, generate with sdrt and with PyTorch, compare them, "
                          "and print the commands to try next"),
    "info": ("sdrt.info", "show versions, backends usable here, and an ONNX folder's manifest"),
    "serve": ("sdrt.serve.commands_serve", "serve images over HTTP (AUTOMATIC1111- and OpenAI-compatible APIs)"),
    "batch": ("sdrt.serve.commands_batch", "generate a JSONL file of requests offline, resumably (--ray: on Ray Data)"),
}


#: top-level module of an optional dependency -> the pip extra that installs it
EXTRA_FOR_MODULE: dict[str, str] = {
    "torch": "export", "diffusers": "export", "transformers": "export", "onnx": "export",
    "onnxscript": "export", "safetensors": "export", "psutil": "bench", "matplotlib": "bench",
    "tensorrt": "tensorrt", "polygraphy": "tensorrt", "cuda": "tensorrt", "tensorrt_rtx": "tensorrt-rtx",
    "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "starlette": "serve", "ray": "ray",
}


def build_parser() -> argparse.ArgumentParser:
    from sdrt import __version__

    parser = argparse.ArgumentParser(
        prog="sdrt", description="Stable Diffusion inference runtime: export diffusers pipelines to ONNX, then "
                                 "generate, serve and benchmark them without torch.",
        epilog="New here? `sdrt demo` exports a small model trained by sdrt, compares sdrt with PyTorch on it and "
               "prints the commands to try next. `sdrt COMMAND --help` explains each command.")
    parser.add_argument("--version", action="version", version=f"sdrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # a subcommand this install does not ship: left bare, says so when run
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    print_warnings_one_line()
    if not args.command:
        parser.print_help()
        return 2
    if not hasattr(args, "_module"):
        print(f"sdrt: error: '{args.command}' is not available in this install", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except SdrtError as e:
        print(f"sdrt: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        extra = EXTRA_FOR_MODULE.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"sdrt: error: sdrt {args.command} needs {e.name}, which is not installed here: "
              f"pip install 'sdrt[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdrt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("sdrt: error: out of memory: try a smaller size, batch or model", file=sys.stderr)
        return 2
    except OSError as e:
        # Disk full, permission denied, ...: the writers clean up their temporary files.
        print(f"sdrt: error: {e.strerror or e} ({e.filename or ''})".replace(" ()", ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
