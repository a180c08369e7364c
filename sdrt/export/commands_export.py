"""`sdrt export --model SRC --out DIR`: a diffusers folder or a preset -> a checked ONNX model folder.

Imports nothing heavy at module level: `sdrt --help` must not load torch.
"""

from __future__ import annotations

import argparse

from sdrt import spec

DEFAULT_OPSET = 23  # trace.DEFAULT_OPSET, spelled here so argparse needs no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SRC",
                        help="a local diffusers folder (with model_index.json), a single-file checkpoint "
                             "(.safetensors: SD 1.x, 2.x, SDXL base or refiner, inpainting), a Hugging Face id "
                             "already in the local cache (org/name; nothing is downloaded) or a preset name "
                             "(e.g. shapes, tiny, sd15: sdrt preset --list)")
    parser.add_argument("--vae", default=None, metavar="FILE_OR_DIR",
                        help="export with this VAE instead of the model's (a .safetensors VAE file or a diffusers "
                             "VAE folder); with --components vae_decoder vae_encoder: a VAE to swap in at run time")
    parser.add_argument("--prediction-type", default=None, choices=("epsilon", "v_prediction", "sample"),
                        help="override what the UNet predicts (single files: read from the file's v_pred key, or "
                             "SD 2.x's test run; default epsilon)")
    parser.add_argument("--unsafe-pickle", action="store_true",
                        help="read a .ckpt (pickle) single file: it can run any code it holds; only for files you trust")
    parser.add_argument("--out", required=True, metavar="DIR", help="the ONNX model folder to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; dynamo 18-23, torchscript 14-20)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                        help="graph precision; with fp16 the VAE stays fp32 when its config says force_upcast")
    parser.add_argument("--components", nargs="+", metavar="NAME", choices=spec.component_names(),
                        help=f"export only these ({', '.join(spec.component_names())}); default all the model has")
    parser.add_argument("--hidden-states", action="store_true",
                        help="SD 1.x/2.x: also export the text encoder's layer stack, for clip_skip "
                             "(SDXL exports always have it)")
    parser.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                        help="torch's dynamo exporter (default) or the older TorchScript one (opset <= 20)")
    parser.add_argument("--stream", nargs="+", metavar="NAME", choices=spec.component_names(), default=[],
                        help="export these streamed: traced without weights, each weight copied from the folder in "
                             "its stored dtype (fp16: half the memory at run time); default: text encoders and VAEs "
                             "over 12 GiB in fp32 (T5-XXL)")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists (only once all passed)")


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch a model hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # import-time advice (torchvision, ...)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from sdrt.export.exporter import export_model

    def log(line: str) -> None:
        print(line, flush=True)

    export_model(args.model, args.out, opset=args.opset, precision=args.precision, components=args.components,
                 force=args.force, exporter=args.exporter, hidden_states=args.hidden_states, stream=args.stream,
                 log=log, vae=args.vae, unsafe_pickle=args.unsafe_pickle, prediction_type=args.prediction_type)
    return 0

