"""`sdrt build`: make the engines of an ONNX model folder ahead of time.

TensorRT and TensorRT-RTX engines take seconds to minutes to build, so they are built once, here, and
cached under DIR/engines/<backend>/. ONNX Runtime needs no build step (its sessions are created at
load), nor does OpenVINO (it compiles each component at its first load and caches the result).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sdrt import spec

BACKEND_CHOICES = ("tensorrt", "tensorrt_rtx", "ort-cpu", "ort-cuda")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="ONNX model folder (from `sdrt export`)")
    parser.add_argument("--backend", default=None, choices=BACKEND_CHOICES,
                        help="engine backend to build for (default: tensorrt; tensorrt_rtx builds without a GPU; "
                             "ort-cpu / ort-cuda need no build)")
    size = parser.add_argument_group("profile (static by default; any of --min-size/--max-size/--max-batch "
                                     "makes it dynamic, optimized at --height/--width/--batch)")
    size.add_argument("--batch", type=int, default=1, help="images per call: prompts x images per prompt (default: 1)")
    size.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    size.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    size.add_argument("--min-size", type=int, help="smallest image side in pixels (dynamic profile)")
    size.add_argument("--max-size", type=int, help="largest image side in pixels (dynamic profile)")
    size.add_argument("--max-batch", type=int, help="most images per call (dynamic batch)")
    size.add_argument("--max-tokens", type=int, default=None, metavar="N",
                      help="the most text tokens the UNet attends to (long prompts, A1111 syntax: 77 per chunk, e.g. "
                           "231 for three); default: one chunk, 77")
    size.add_argument("--max-sequence-length", type=int, default=None, metavar="TOKENS",
                      help="models with a T5 encoder (SD3, Flux): the T5 tokens a call uses, max_sequence_length "
                           "(default: the pipeline's, SD3's 256, Flux's 512; a call with another length needs its own "
                           "build)")
    size.add_argument("--true-cfg", action="store_true",
                      help="Flux: room for true classifier-free guidance (a negative prompt with --true-cfg-scale: "
                           "2 transformer rows per image; default: 1, as dev and schnell run)")
    size.add_argument("--no-guidance", action="store_true",
                      help="build for guidance_scale <= 1 (UNet batch not doubled for classifier-free guidance)")
    parser.add_argument("--components", nargs="+", choices=spec.component_names(), metavar="NAME",
                        help=f"components to build (default: all exported; {', '.join(spec.component_names())})")
    parser.add_argument("--opt-level", type=int, choices=range(6), metavar="0-5",
                        help="builder optimization level (TensorRT's default: 3)")
    parser.add_argument("--workspace-gb", type=float, help="cap on the builder's workspace memory, in GiB")
    parser.add_argument("--timing-cache", metavar="PATH",
                        help="persistent tactic timing cache (default: one per GPU and TensorRT under "
                             "DIR/engines/tensorrt/)")
    parser.add_argument("--device-id", type=int, default=0, help="GPU to build on (default: 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even when an up-to-date engine exists")
    parser.add_argument("--controlnet", action="store_true",
                        help="build the UNet that takes ControlNet residuals (what generate --controlnet loads; made "
                             "from the export, no re-export). A ControlNet folder itself builds like a model (pass "
                             "--height/--width: it has no default size)")
    parser.add_argument("--ip-adapter", metavar="DIR",
                        help="build the UNet that takes this exported IP-Adapter's keys and values (what generate "
                             "--ip-adapter DIR loads; made from the export, no re-export). An IP-Adapter folder itself "
                             "builds like a model (pass --height/--width)")
    parser.add_argument("--refit", action="store_true",
                        help="build refittable engines, so LoRAs (generate --lora) apply without rebuilding")


def _log(msg: str) -> None:
    print(f"sdrt build: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    chosen = args.backend is not None
    args.backend = args.backend or "tensorrt"
    if args.backend.startswith("ort"):
        _log(f"{args.backend}: ONNX Runtime needs no build step (its sessions are created when the "
             f"model is loaded); nothing to do")
        return 0
    from pathlib import Path

    from sdrt.engines import trt_api, trt_build, trt_profiles
    from sdrt.engines.tensorrt import open_toolkit, target_of
    from sdrt.errors import SdrtError
    from sdrt.manifest import Manifest

    manifest = Manifest.load(args.model)
    if getattr(args, "controlnet", False):
        from sdrt.residual_graph import residual_manifest

        manifest = residual_manifest(manifest)
    if getattr(args, "ip_adapter", None):
        from sdrt.ip_graph import ip_manifest
        from sdrt.manifest import IP_ADAPTER_KIND

        ip = Manifest.load(args.ip_adapter)
        if ip.kind != IP_ADAPTER_KIND:
            raise SdrtError(f"--ip-adapter {args.ip_adapter} is a {ip.kind} folder, not an exported IP-Adapter")
        if int(ip.ip_adapter_layout().cross_attention_dim) != int(manifest.pipeline["text_hidden_size"]):
            raise SdrtError(f"the IP-Adapter {args.ip_adapter} does not fit {manifest.folder} (another "
                            f"cross-attention width): use one made for this base")
        manifest = ip_manifest(manifest, ip.ip_adapter_layout())
    components = args.components or [c for c in manifest.spec.component_names if manifest.has(c)]
    from sdrt.engines import quantized

    quantized.check_backend(manifest.folder, {c: manifest.components[c] for c in components if manifest.has(c)},
                            args.backend)  # int8 (asymmetric) is for the CPUs: one line before any build
    for name in components:
        manifest.onnx_path(name)  # one-line error for a component the folder lacks
    if args.workspace_gb is not None and args.workspace_gb <= 0:
        raise SdrtError(f"--workspace-gb {args.workspace_gb} must be positive")
    request = trt_profiles.ProfileRequest(
        batch=args.batch, height=args.height, width=args.width, min_size=args.min_size,
        max_size=args.max_size, max_batch=args.max_batch, guidance=guidance(manifest, args),
        tokens=text_tokens(manifest, args.max_sequence_length), max_tokens=getattr(args, "max_tokens", None))
    for name in components:  # every profile checked before the first (long) build starts
        trt_profiles.dim_range(manifest.spec.component(name), request, manifest.sizes,
                               trt_profiles.default_size(request, manifest))

    probe = trt_api.flavor(args.backend)
    try:
        trt, features, cuda = open_toolkit(probe.name, need_gpu=probe.name == "tensorrt", device=args.device_id)
    except SdrtError as e:
        if chosen:
            raise
        raise SdrtError(f"{e} (sdrt build defaults to --backend tensorrt: on a machine without an NVIDIA GPU pass "
                        f"--backend tensorrt_rtx, which builds without one, or skip the build: ort-cpu needs none)") from None
    if cuda is not None:
        cuda.set_device(args.device_id)
    target = target_of(features, cuda, args.device_id)
    if args.timing_cache and not features.timing_cache:
        _log(f"{probe.label} ignores the timing cache (its engines are compiled for the GPU at load); "
             f"--timing-cache not used")
    options = trt_build.BuildOptions(opt_level=args.opt_level, workspace_gb=args.workspace_gb,
                                     timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                                     force=args.force, refit=getattr(args, "refit", False))
    _log(f"{probe.label} {features.version} for {target}; {len(components)} component(s): "
         f"{', '.join(components)}")
    start = time.perf_counter()
    for i, name in enumerate(components, 1):
        _log(f"[{i}/{len(components)}] {name}")
        trt_build.build_component(manifest, name, args.backend, request, options, trt=trt, features=features,
                                  target=target, log=_log)
    _log(f"done in {time.perf_counter() - start:.1f} s; engines under {manifest.engines_dir(args.backend)}")
    return 0


def text_tokens(manifest: Any, max_sequence_length: int | None) -> int:
    """The text tokens (L) an engine takes: --max-sequence-length (a model with a T5 encoder: at most what
    its export allows), else the model's default call's (SD3: its pipeline's 256 as recorded at export,
    Flux: 512; the UNet families: one CLIP chunk, 77)."""
    from sdrt.errors import SdrtError

    limit = manifest.pipeline.get("max_sequence_length")
    if max_sequence_length is None:  # as the model's default call (sdrt.engines.tensorrt.default_request)
        return int(manifest.pipeline.get("default_max_sequence_length") or limit or spec.TOKEN_LENGTH)
    if limit is None:
        raise SdrtError(f"--max-sequence-length is for models with a T5 encoder (SD3, Flux); {manifest.folder} is a "
                        f"{manifest.family} model: leave it out")
    if not 1 <= max_sequence_length <= int(limit):
        raise SdrtError(f"--max-sequence-length {max_sequence_length} must be between 1 and {limit} (what this "
                        f"export allows)")
    return max_sequence_length


def guidance(manifest: Any, args: argparse.Namespace) -> bool:
    """Whether the profile has room for guidance rows: classifier-free guidance by default (the UNet
    families, --no-guidance turns it off); Flux's true CFG only with --true-cfg (it is opt-in per call)."""
    from sdrt.errors import SdrtError

    if manifest.family_spec.guidance == "cfg":
        if args.true_cfg:
            raise SdrtError(f"--true-cfg is for Flux models; {manifest.folder} is a {manifest.family} model, whose "
                            f"engines have room for guidance unless --no-guidance")
        return not args.no_guidance
    if args.no_guidance:
        raise SdrtError(f"--no-guidance is the UNet families'; a {manifest.family} model's engines have no guidance "
                        f"rows unless --true-cfg")
    return bool(args.true_cfg)
